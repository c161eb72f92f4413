"""Real processes: torchrun workers and SLURM-style tasks bring up RankContext and all-reduce."""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
import time

import pytest
import torch.distributed as dist
from helpers import REPO, env, excerpt, torchrun

pytestmark = pytest.mark.integration
PROBE = str(REPO / "tests" / "scripts" / "dist_probe.py")


def _free_port_pair() -> int:
    """A port p in SLURM's job-derived range with p and p+1 free (p = 20000 + job id)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("", 0))
            p = s.getsockname()[1]
        if 20000 <= p < 39990:
            with socket.socket() as a, socket.socket() as b:
                try:
                    a.bind(("", p + 1)), b.bind(("", p + 2))
                    return p
                except OSError:
                    continue
    pytest.skip("no free port pair in 20000..40000 on this machine")


def _slurm_tasks(port: int, world: int = 2, procid=None, extra_env=None):
    """Start `world` probe processes with srun-like variables (no torchrun); return Popen objects."""
    procs = []
    for r in range(world):
        slurm = dict(SLURM_PROCID=str(r if procid is None else procid(r)), SLURM_LOCALID=str(r),
                     SLURM_NTASKS=str(world), SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost",
                     SLURM_JOB_ID=str(port - 20000), SLURM_TASKS_PER_NODE=str(world), SLURM_STEP_ID="0")
        e = env(**{**slurm, **(extra_env or {})})
        procs.append(subprocess.Popen([sys.executable, PROBE, "4"], env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=REPO))
    return procs


def _collect(procs, timeout=60):
    return [p.communicate(timeout=timeout) + (p.returncode,) for p in procs]


def test_torchrun_two_workers_allreduce():
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", PROBE]
    res = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, excerpt(res.stderr)
    for r in (0, 1):
        assert f"OK launcher=torchrun rank={r} world=2 sum=3" in res.stdout


def test_slurm_style_tasks_agree_on_the_job_port():
    out = _collect(_slurm_tasks(_free_port_pair()))
    for r, (so, se, rc) in enumerate(out):
        assert rc == 0, se[-2000:]
        assert f"OK launcher=slurm rank={r} world=2 sum=3" in so


def test_held_port_moves_every_rank_to_the_next_candidate():
    port = _free_port_pair()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("", port))
    blocker.listen(8)  # an unrelated listener that never speaks the store protocol
    try:
        start = time.monotonic()
        out = _collect(_slurm_tasks(port))
        for r, (so, se, rc) in enumerate(out):
            assert rc == 0, se[-2000:]
            assert f"rank={r} world=2 sum=3" in so
        assert time.monotonic() - start < 45
    finally:
        blocker.close()


def test_foreign_store_on_the_port_is_not_joined():
    port = _free_port_pair()
    foreign = dist.TCPStore("127.0.0.1", port, world_size=1, is_master=True, wait_for_workers=False,
                            timeout=datetime.timedelta(seconds=30))
    foreign.set("mezo_elastic/run_id", "slurm-another-job.0")  # another job of this package
    keys_before = foreign.num_keys()
    out = _collect(_slurm_tasks(port))
    for r, (so, se, rc) in enumerate(out):
        assert rc == 0, se[-2000:]
        assert f"rank={r} world=2 sum=3" in so
    assert foreign.num_keys() == keys_before  # nobody wrote into the other job's store


def test_all_candidates_held_fails_with_the_ports_and_holders():
    port = _free_port_pair()
    socks = []
    for p in range(port, port + 4):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", p))
        except OSError:
            continue
        s.listen(1)
        socks.append(s)
    try:
        so, se, rc = _collect(_slurm_tasks(port))[0]
        assert rc == 2
        assert "no port agreed" in so and str(port) in so and "held by" in so
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("bad, words", [
    ({"SLURM_NTASKS": "x"}, ["SLURM_NTASKS='x'", "not an integer"]),
    ({"SLURM_NTASKS": "0"}, ["SLURM_NTASKS=0 is not allowed", ">= 1"]),
])
def test_bad_env_fails_fast_on_every_rank(bad, words):
    start = time.monotonic()
    out = _collect(_slurm_tasks(_free_port_pair(), extra_env=bad), timeout=30)
    assert time.monotonic() - start < 20
    for so, _se, rc in out:
        assert rc == 2
        for w in words:
            assert w in so


def test_rank_out_of_range_on_one_task_leaves_no_rank_waiting():
    # task 1 claims SLURM_PROCID=2 of 2: it fails at once; rank 0 must not wait out the collective timeout
    start = time.monotonic()
    out = _collect(_slurm_tasks(_free_port_pair(), procid=lambda r: 2 * r), timeout=60)
    assert time.monotonic() - start < 30
    (so0, se0, rc0), (so1, se1, rc1) = out
    assert rc1 == 2 and "SLURM_PROCID=2 is outside [0, 2)" in so1
    assert rc0 == 2 and "only 1 of 2 ranks arrived" in so0 and "missing ranks: [1]" in so0


@pytest.mark.parametrize("flag, words", [
    ("--model.device=cuda", ["CUDA is not available", "--model.device=cpu"]),
    ("--mezo.mode=sgd", ["mezo.mode", "multi_seed"]),
])
def test_bad_input_under_torchrun_every_rank_reports_and_the_job_ends(tmp_path, flag, words):
    start = time.monotonic()
    res = subprocess.run(torchrun(f"--train.output_dir={tmp_path}", flag, nproc=2), env=env(),
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode != 0
    assert time.monotonic() - start < 60
    for w in words:
        assert res.stderr.count(w) >= 2, res.stderr[-3000:]  # both ranks said it
