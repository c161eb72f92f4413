# The Makefile mirrors CI: .ci/run calls `make test`.
#   make run    install (CPU torch pinned) and train the built-in tiny default on 2 CPU processes
#   make run-reward  the same for the built-in reward task (configs/reward_builtin.toml: generated text, exact_match)
#   make test   install dev extras and run the default suite (unit, torchrun integration, real SLURM;
#               GPU tests skip with their reason on a machine without CUDA)
#   make docs   regenerate docs/configuration.md from the config tree
#   make bench  GPU benchmarks (on a CUDA machine; see docs/benchmarks.md)
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# CPU machines: the CPU wheel, pinned (a bare `torch` may pull a multi-GB CUDA build). Where torch
# already imports (a GPU machine with its CUDA build) it is left alone.
TORCH_SPEC ?= torch==2.13.0
NPROC ?= 2
RUN_ARGS ?=
PYTEST_ARGS ?=
# The suite in two pytest-xdist workers, a test file each at a time (module fixtures stay shared within a
# file): most integration tests wait on processes, timeouts and SLURM, so two at once take 13.6 min where one
# took 17.6 on this project's 2-core machine (2026-12-06). TEST_JOBS=0 runs it in one process.
TEST_JOBS ?= 2

.PHONY: install run run-reward test test-unit docs bench gpu-suite

# pip's own output shows (a fresh install downloads about 1 GB over a few minutes); when pip refuses, one
# line says why it most likely did (Debian/Ubuntu's system Python is "externally managed": use a venv).
PIP_HINT = { echo "make install: pip failed (above). On Debian/Ubuntu's system Python (error: externally-managed-environment) make a virtual environment first: python3 -m venv .venv && . .venv/bin/activate, then run make again"; exit 1; }

install:
	@echo "make install: pip installs torch (CPU) and this package with its dev extras; the first time takes a few minutes"
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)" || $(PIP_HINT)
	@$(PIP) install -e ".[dev]" || $(PIP_HINT)

run: install
	OMP_NUM_THREADS=1 $(PYTHON) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC) -m mezo_elastic.train $(RUN_ARGS)

run-reward: install
	OMP_NUM_THREADS=1 $(PYTHON) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC) -m mezo_elastic.train --config configs/reward_builtin.toml $(RUN_ARGS)

test: install
	$(PYTHON) -m pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

test-unit: install
	$(PYTHON) -m pytest -m "not gpu and not integration and not slurm" $(PYTEST_ARGS)

docs:
	$(PYTHON) -m mezo_elastic.config.docs

bench:
	$(PYTHON) bench/bench_step.py

gpu-suite:
	bash scripts/gpu_suite.sh
