"""launch/torchrun_single_node.sh and launch/torchrun_multi_node.sh: real torchrun, gloo on CPU."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, env, excerpt, final_weights, max_abs_diff

pytestmark = pytest.mark.integration

SINGLE, MULTI = REPO / "launch" / "torchrun_single_node.sh", REPO / "launch" / "torchrun_multi_node.sh"
FAST = ["--train.batch_size=8", "--train.eval_every=0", "--train.progress=false"]


def launch(script: Path, out: Path, args: list[str], **vars: str) -> subprocess.Popen:
    e = env(**{"PYTHON": sys.executable, "DEVICE": "cpu", "OUTPUT_DIR": str(out), **vars})
    return subprocess.Popen(["bash", str(script), *args], env=e, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
        raise AssertionError(f"launch did not finish in {timeout}s:\n{excerpt(out)}") from None
    return p.returncode, out


def steps_logged(out: Path) -> int:
    p = out / "steps.jsonl"
    return sum(1 for _ in p.open()) if p.exists() else 0


def test_single_node_two_concurrent_launches_take_different_ports(tiny_inputs, tmp_path: Path):
    runs = [launch(SINGLE, tmp_path / f"r{i}", [*tiny_inputs, *FAST, "--train.steps=20"], NPROC_PER_NODE="2")
            for i in range(2)]
    results = [finish(p) for p in runs]
    ports = []
    for i, (rc, out) in enumerate(results):
        assert rc == 0, excerpt(out)
        m = re.search(r"rendezvous 127\.0\.0\.1:(\d+)", out)
        assert m, out[:2000]
        ports.append(m.group(1))
        assert "rank=0/2" in out and steps_logged(tmp_path / f"r{i}") == 20
        assert (tmp_path / f"r{i}" / "final" / "model.safetensors").is_file()
    assert ports[0] != ports[1] and "29400" not in ports


def test_single_node_stop_and_resume_matches_an_uninterrupted_run(tiny_inputs, tmp_path: Path):
    args = [*tiny_inputs, *FAST, "--train.steps=40", "--checkpoint.every=10"]
    ref = launch(SINGLE, tmp_path / "ref", args, NPROC_PER_NODE="2")
    run = launch(SINGLE, tmp_path / "run", args, NPROC_PER_NODE="2")
    deadline = time.monotonic() + 120
    while steps_logged(tmp_path / "run") < 12 and time.monotonic() < deadline:
        time.sleep(0.1)
    run.send_signal(signal.SIGUSR1)  # SLURM's usual preemption signal: the script passes it on as SIGTERM
    rc, out = finish(run)
    assert rc == 128 + signal.SIGUSR1, excerpt(out)
    assert "stopped by signal 10" in out and re.search(r"stopped by SIGTERM after \d+ steps", out), excerpt(out)
    assert steps_logged(tmp_path / "run") < 40
    rc, out = finish(launch(SINGLE, tmp_path / "run", args, NPROC_PER_NODE="2"))
    assert rc == 0 and "resumed after" in out, excerpt(out)
    rc, out = finish(ref)
    assert rc == 0, excerpt(out)
    assert max_abs_diff(final_weights(tmp_path / "run"), final_weights(tmp_path / "ref")) <= 1e-6


def test_multi_node_two_agents_meet_on_the_given_endpoint(tiny_inputs, tmp_path: Path):
    from mezo_elastic.cluster.distributed import free_port

    endpoint = f"127.0.0.1:{free_port()}"
    agents = [launch(MULTI, tmp_path / "out", [f"--rdzv-endpoint={endpoint}", "--nnodes", "2", "--nproc-per-node=1",
                                               *tiny_inputs, *FAST, "--train.steps=20"], RDZV_ID=f"test-{tmp_path.name}")
              for _ in range(2)]
    for rc, out in [finish(p) for p in agents]:
        assert rc == 0, excerpt(out)
        assert f"rendezvous {endpoint}" in out
    assert steps_logged(tmp_path / "out") == 20
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("script,vars,args,message", [
    (SINGLE, {"NPROC_PER_NODE": "999"}, [], "NPROC_PER_NODE=999 but this machine has"),
    (SINGLE, {"DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""}, [], "DEVICE=cuda but no GPU is visible"),
    (SINGLE, {"NPROC_PER_NODE": "two"}, [], "NPROC_PER_NODE=two is not a positive integer"),
    (MULTI, {}, ["--nnodes=2", "--rdzv-id=x"], "no rendezvous endpoint"),
    (MULTI, {"RDZV_ENDPOINT": "node1"}, ["--nnodes=2", "--rdzv-id=x"], "RDZV_ENDPOINT=node1 is not HOST:PORT"),
    (MULTI, {"RDZV_ENDPOINT": "node1:29555"}, ["--nnodes=2"], "no rendezvous id"),
    (MULTI, {"RDZV_ENDPOINT": "node1:29555", "RDZV_ID": "x", "NNODES": "4:2"}, [], "MIN is larger than MAX"),
    (MULTI, {"RDZV_ENDPOINT": "node1:29555", "RDZV_ID": "x"}, ["--nnodes"], "--nnodes needs a value"),
])
def test_bad_settings_fail_fast_with_a_clear_message(tmp_path: Path, script, vars, args, message):
    t0 = time.monotonic()
    rc, out = finish(launch(script, tmp_path / "out", args, **vars), timeout=30)
    assert rc == 2 and message in out, out
    assert time.monotonic() - t0 < 10 and not (tmp_path / "out").exists()
