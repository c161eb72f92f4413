"""Exact resume with real torchrun processes: SIGKILL, resize, corrupt checkpoint, SIGTERM, export.

Tolerance for "same final weights": 1e-6 max abs (fp32). A resumed run replays the log onto the
last checkpoint, which rounds differently from the live restore+update sweep (a few ulps), and
later steps carry that difference; the exact numbers are printed (pytest -s) for the notes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO, env, final_weights, max_abs_diff, torchrun, train

from mezo_elastic.state.checkpoint import StepLog

pytestmark = pytest.mark.integration
STEPS = 60
# init_timeout_s: should a group's connect ever hang after a restart, it fails in 30 s, not 300.
ARGS = [f"--train.steps={STEPS}", "--train.batch_size=16", "--train.eval_every=0", "--train.progress=false",
        "--checkpoint.every=20", "--checkpoint.keep=3", "--dist.init_timeout_s=30"]
TOL = 1e-6


def args_for(steps: int) -> list[str]:
    """ARGS with another train.steps (the lr schedule is constant, so the trajectory is the same)."""
    return [f"--train.steps={steps}" if a.startswith("--train.steps") else a for a in ARGS]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An undisturbed run with the same seed, 2 ranks."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(out, *ARGS, nproc=2)
    return out


def _logged(out: Path) -> int:
    return len(StepLog(out / "steps.jsonl").read())


def _wait_for_steps(proc: subprocess.Popen, out: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _logged(out) < n:
        assert proc.poll() is None, f"job ended early: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "job made no progress"
        time.sleep(0.05)


def _workers(agent: subprocess.Popen) -> list[psutil.Process]:
    kids = psutil.Process(agent.pid).children(recursive=True)
    return [k for k in kids if "mezo_elastic.train" in " ".join(k.cmdline())]


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    """Wait for a job; on timeout kill its whole tree and fail with the end of its output."""
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.kill()
        _, err = proc.communicate()
        raise AssertionError(f"job did not finish in {timeout}s; its stderr ends:\n{err[-6000:]}") from None


def _launch(out: Path, *extra_torchrun: str, args=ARGS) -> subprocess.Popen:
    argv = torchrun(f"--train.output_dir={out}", *args, nproc=2, extra=list(extra_torchrun))
    return subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def test_sigkill_worker_restarts_and_ends_on_the_same_weights(tmp_path, reference):
    out = tmp_path / "killed"
    agent = _launch(out, "--max-restarts=2")
    _wait_for_steps(agent, out, 30)  # past the step-20 checkpoint: resume = checkpoint + replay
    victim = _workers(agent)[1]
    victim.send_signal(signal.SIGKILL)
    rc, err = _finish(agent)
    assert rc == 0, err[-3000:]
    assert "resumed after" in err
    diff = max_abs_diff(final_weights(out), final_weights(reference))
    print(f"SIGKILL + restart: max abs diff vs undisturbed = {diff:.3g}")
    assert diff <= TOL


def test_resize_two_agents_to_one(tmp_path, reference):
    """Two torchrun agents (--nnodes=1:2, c10d) on this machine; the second is killed mid-run and the
    first continues alone at world size 1. Same global batches, so it ends on the same weights."""
    from mezo_elastic.cluster.distributed import free_port

    out, port = tmp_path / "resize", free_port()
    rdzv = ["--nnodes=1:2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=resize-test", "--max-restarts=3", "--rdzv-conf=join_timeout=60,last_call_timeout=3"]

    def agent() -> subprocess.Popen:
        argv = [sys.executable, "-m", "torch.distributed.run", *rdzv, "-m", "mezo_elastic.train",
                f"--train.output_dir={out}", *ARGS]
        return subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)

    a, b = agent(), agent()  # together, so the first rendezvous round has both (last_call_timeout)
    deadline = time.monotonic() + 120
    while not _logged(out) >= 25:
        assert a.poll() is None and b.poll() is None, "an agent ended early"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # the agent that bound the rendezvous port hosts the c10d store: the other one is the node to lose
    listening = {c.laddr.port for c in psutil.Process(a.pid).net_connections() if c.status == psutil.CONN_LISTEN}
    host, other = (a, b) if port in listening else (b, a)
    for p in [*psutil.Process(other.pid).children(recursive=True), psutil.Process(other.pid)]:
        p.send_signal(signal.SIGKILL)
    other.communicate()
    rc, err = _finish(host)
    assert rc == 0, err[-4000:]
    # it ran at world size 2, then alone: the checkpoints say which world wrote them
    worlds = {n: json.loads((out / "checkpoints" / f"step-{n}" / "meta.json").read_text())["world_size"]
              for n in (20, 60)}
    assert worlds == {20: 2, 60: 1}, worlds
    diff = max_abs_diff(final_weights(out), final_weights(reference))
    print(f"resize 2 -> 1: max abs diff vs undisturbed = {diff:.3g}")
    assert diff <= TOL


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, reference):
    out = tmp_path / "trunc"
    train(out, *args_for(40), nproc=2)
    newest = out / "checkpoints" / "step-40" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    res = train(out, *ARGS, nproc=2)  # resume to 60: step-40 is corrupt, so step-20 + 20 replayed steps
    assert "sha256 does not match" in res.stderr and "resumed after 40 steps" in res.stderr
    diff = max_abs_diff(final_weights(out), final_weights(reference))
    print(f"corrupt checkpoint fallback: max abs diff = {diff:.3g}")
    assert diff <= TOL


def test_sigterm_to_agent_workers_exit_fast_log_complete_and_relaunch_finishes(tmp_path, reference):
    out = tmp_path / "term"
    agent = _launch(out)
    _wait_for_steps(agent, out, 25)
    workers = _workers(agent)
    t0 = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    agent.communicate(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=max(0.1, 10 - (time.monotonic() - t0)))
    elapsed = time.monotonic() - t0
    assert not alive and elapsed < 10, f"workers still alive after {elapsed:.1f}s"
    recs = StepLog(out / "steps.jsonl").read()
    assert [r.step for r in recs] == list(range(len(recs))) and len(recs) >= 25  # every completed step
    print(f"SIGTERM: workers gone in {elapsed:.2f}s with {len(recs)} steps logged")
    train(out, *ARGS, nproc=2)
    diff = max_abs_diff(final_weights(out), final_weights(reference))
    print(f"SIGTERM + relaunch: max abs diff = {diff:.3g}")
    assert diff <= TOL


def test_export_at_step_n_equals_live_weights_at_step_n(tmp_path, reference):
    from safetensors.torch import load_file

    from mezo_elastic.export import main as export_main

    live = tmp_path / "live45"
    train(live, *args_for(45), nproc=1)
    assert export_main(["--run", str(reference), "--step", "45", "--out", str(tmp_path / "e45")]) == 0
    diff = max_abs_diff(load_file(str(tmp_path / "e45" / "model.safetensors")), final_weights(live))
    print(f"export step 45 (checkpoint 40 + 5 replayed) vs live: {diff:.3g}")
    assert diff <= TOL
    # from the base model alone (no checkpoint before step 15): a run is base model + log
    live15 = tmp_path / "live15"
    train(live15, *args_for(15), nproc=1)
    assert export_main(["--run", str(reference), "--step", "15", "--out", str(tmp_path / "e15")]) == 0
    assert max_abs_diff(load_file(str(tmp_path / "e15" / "model.safetensors")), final_weights(live15)) <= TOL
