"""Shared helpers for tests that start real processes (python, torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# The one-node SLURM cluster of tests/slurm (its conftest): start/stop scripts, the lock xdist workers take
# around check-and-start, and the marker a worker that started it leaves for the controller to stop it.
SLURM_UP, SLURM_DOWN = REPO / ".ci" / "slurm-up.sh", REPO / ".ci" / "slurm-down.sh"
SLURM_LOCK = Path("/tmp/mezo-slurm-up.lock")
SLURM_STARTED_MARK = Path("/tmp/mezo-slurm-started-by-pytest")
FAST = ["--train.batch_size=16", "--train.eval_every=0", "--train.progress=false", "--checkpoint.every=0"]


def env(**extra: str) -> dict[str, str]:
    """A clean child environment: no launcher variables leak in from the test runner."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "TORCHELASTIC_", "PET_")) and k not in
         ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"  # 2 cores: two ranks must not oversubscribe them
    e.update(extra)
    return e


def torchrun(*args: str, nproc: int = 2, extra: list[str] | None = None) -> list[str]:
    """argv for `torchrun --standalone --nproc_per_node=N ... -m mezo_elastic.train ARGS`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *(extra or []), "-m", "mezo_elastic.train", *args]


def train(out: Path, *args: str, nproc: int = 1, timeout: float = 300, check: bool = True,
          extra: list[str] | None = None, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a training job (single process when nproc == 1, torchrun otherwise) to completion."""
    argv = ([sys.executable, "-m", "mezo_elastic.train"] if nproc == 1 else torchrun(nproc=nproc, extra=extra))
    argv += [f"--train.output_dir={out}", *args]
    res = subprocess.run(argv, env=env(**(environ or {})), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} exited {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{excerpt(res.stderr)}")
    return res


def train_together(*jobs: tuple) -> list[subprocess.CompletedProcess]:
    """Independent training jobs at once, each `train`'s positional arguments (out, *args) as a tuple, a dict
    at its end for train's keywords (nproc=2): the suite runs on two cores and most of a tiny job is its
    interpreter's start, so two jobs that do not depend on each other need not wait for each other. Any
    job's failure raises as `train` would."""
    split = [(job[:-1], job[-1]) if isinstance(job[-1], dict) else (job, {}) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(train, *args, **kw) for args, kw in split]
        return [f.result() for f in futures]


def excerpt(out: str, n: int = 4000) -> str:
    """What a failure message should show of a job's output: a fatal error's own report (its thread
    stacks) when there is one, then the tail, without the interpreter's long extension-module list."""
    lines = [l for l in out.splitlines() if not l.lstrip().startswith("Extension modules:")]
    text = "\n".join(lines)
    i = text.find("Fatal Python error")
    head = text[i : i + n] + "\n[...]\n" if i >= 0 else ""
    return head + text[-n:]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out) / "final" / "model.safetensors"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)
