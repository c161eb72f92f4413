"""docs/troubleshooting.md quotes this package's own messages: produce each one for real and find it there.

Numbers (ranks, ports, sizes, timeouts, versions) may differ between the quote and the message produced
here; the words may not. A reworded message fails this test until the page is updated.
"""

from __future__ import annotations

import re
import socket

import pytest
import torch
import torch.distributed as dist
from helpers import REPO

DOC = (REPO / "docs" / "troubleshooting.md").read_text()


def normalise(text: str) -> str:
    """Numbers become N, and a list of numbers [N, N, N] becomes [N]."""
    text = re.sub(r"\d+(\.\d+)*(\+\w+)?", "N", text)
    text = text.replace("(pythonN)", "(python)")  # the process is python3 under make, python elsewhere
    return re.sub(r"\[N(, N)*\]", "[N]", text)


def assert_quoted(message: str) -> None:
    assert normalise(message) in normalise(DOC), f"docs/troubleshooting.md does not quote:\n  {message}"


def _error(fn, *args, **kw) -> str:
    with pytest.raises(Exception) as e:
        fn(*args, **kw)
    return str(e.value)


@pytest.mark.parametrize("env", [
    {"RANK": "5", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "29500"},
    {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"},
    {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_TASKS_PER_NODE": "4(x2"},
])
def test_rank_context_errors_are_quoted(env):
    from mezo_elastic.cluster.rank_context import detect

    assert_quoted(_error(detect, env))


def test_device_and_backend_errors_are_quoted():
    from mezo_elastic.cluster.distributed import backend_for, select_device
    from mezo_elastic.cluster.rank_context import detect
    from mezo_elastic.config import DistConfig

    assert_quoted(_error(backend_for, torch.device("cpu"), DistConfig(backend="nccl")))
    if not torch.cuda.is_available():  # on a GPU host this message cannot occur; the others still run
        assert_quoted(_error(select_device, detect({}), "cuda"))


def test_tp_layout_and_default_group_errors_are_quoted():
    from mezo_elastic.cluster.rank_context import detect
    from mezo_elastic.config import Config, ModelConfig
    from mezo_elastic.runners.sglang.dist import init_tp_world, layout

    world8 = {"RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "8",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert_quoted(_error(layout, detect(world8), 3))
    # A real default group of the wrong size (1 rank, in-memory store) where SGLang needs tp_size ranks.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        cfg = Config(model=ModelConfig(backend="sglang", tp_size=2))
        assert_quoted(_error(init_tp_world, detect(world8), cfg, torch.device("cpu"), []))
    finally:
        dist.destroy_process_group()


def test_missing_rank_and_port_errors_are_quoted():
    from mezo_elastic.cluster.distributed import agree_on_port, wait_for_world
    from mezo_elastic.cluster.rank_context import detect
    from mezo_elastic.config import DistConfig

    ctx = detect({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": "29500"})
    assert_quoted(_error(wait_for_world, dist.HashStore(), ctx, 0.2))
    with socket.socket() as held:  # a listener that is not a store: the one candidate is taken
        held.bind(("127.0.0.1", 0))
        held.listen()
        msg = _error(agree_on_port, ctx, DistConfig(port_attempts=1, port_timeout_s=1.0), first=held.getsockname()[1])
    head, _, tail = msg.partition(" after ")
    assert_quoted(head.replace("'env'", "'slurm-1.0'"))  # the page shows the srun case's run id
    assert_quoted(tail.split("); ")[-1])
    assert "held by pid" in msg


def test_doctor_master_port_held_fix_is_quoted():
    # The doctor's own wording for the most common port problem, as the page shows it.
    from mezo_elastic.cluster.rank_context import detect
    from mezo_elastic.doctor.checks import Section, _check_master

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        ctx = detect({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": str(held.getsockname()[1])})
        sec = Section("Ports")
        _check_master(sec, ctx, None, 5.0)
    (problem,) = sec.problems
    assert_quoted(problem.message)
    assert_quoted(problem.fix.split(", or stop")[0])


def test_gguf_and_architecture_messages_are_quoted(tmp_path, monkeypatch):
    import json
    import sys

    from mezo_elastic.config import Config
    from mezo_elastic.export import gguf_base
    from mezo_elastic.runners import gguf
    from mezo_elastic.runners.sglang.checks import check_architecture, check_context_length
    from mezo_elastic.training.resume import run_json_refusal

    two = tmp_path / "smol"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"GGUF")
    (two / "b.gguf").write_bytes(b"GGUF")
    assert_quoted(_error(gguf.find_gguf, two).replace(str(tmp_path), "/models"))
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed: find_spec answers None
    assert_quoted(_error(gguf.require_packages, "/models/model.Q4_K_M.gguf"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert_quoted(_error(check_architecture, tmp_path).replace(str(tmp_path), "/scratch/model"))
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    assert_quoted(_error(check_context_length, tmp_path, 128).replace(str(tmp_path), "/scratch/run/builtin/tiny-model"))
    sha = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert_quoted(_error(gguf_base, "runs/smol", {"path": "/models/gone.gguf", "sha256": sha}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"trajectory": {}, "gguf": {"path": "/m.gguf", "sha256": sha}}))
    refusal = run_json_refusal(run, Config(), "/m", None)
    assert refusal is not None
    assert_quoted(refusal.replace(str(run), "/scratch/run"))


def test_estimator_refusals_are_quoted():
    from mezo_elastic.config.schema import MezoConfig

    assert_quoted(_error(MezoConfig, estimator="fzoo", perturbations=1))
    assert_quoted(_error(MezoConfig, estimator="gv", perturbations=2, reward_shaping="zscore"))
    assert_quoted(_error(MezoConfig, estimator="gv", perturbations=2, gv_elite=1.0))
