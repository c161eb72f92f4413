""".ci/slurm-up.sh / slurm-down.sh themselves, on a second one-node cluster beside the session's.

CI once failed at start-up: the machine it ran on kept /tmp from a run whose daemons had vanished
(not stopped) while a job ran, so slurmctld's state directory still held that job as running. The
next start recovered it, the node stayed `allocated` and slurm-up.sh gave up. This reproduces it:
SIGKILL both daemons and the job mid-run, then start the cluster again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import REPO
from slurm_helpers import Cluster

pytestmark = pytest.mark.slurm

UP, DOWN = REPO / ".ci" / "slurm-up.sh", REPO / ".ci" / "slurm-down.sh"
PORT = "6837"  # the session's cluster is on 6817/6818


def _script(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(path)], env=env, capture_output=True, text=True, timeout=300)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _processes_of(d: Path) -> list[int]:
    """Pids of every process of the cluster in `d`: its daemons, their slurmstepds and the job's
    tasks carry MEZO_SLURM_DIR=d in their environment (slurm-up.sh's and sbatch's), nothing else does."""
    mark = f"MEZO_SLURM_DIR={d}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and int(p.name) != os.getpid() and mark in (p / "environ").read_bytes().split(b"\0"):
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _sbatch(env: dict[str, str], cwd: Path, wrap: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbatch", "--oversubscribe", "-n1", "-D", str(cwd), "-o", "out-%j.txt", *extra,
                           "--wrap", wrap], env=env, capture_output=True, text=True, timeout=120)


def test_start_after_daemons_vanished_mid_job_gives_an_idle_node(slurm_cluster: Cluster, tmp_path: Path):
    d, work = tmp_path / "slurm", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "MEZO_SLURM_DIR": str(d), "MEZO_SLURM_PORT": PORT, "MEZO_SLURM_WAIT": "20",
           "SLURM_CONF": str(d / "slurm.conf")}
    session = Path(slurm_cluster.conf).parent
    session_daemons = {f: int((session / f).read_text()) for f in ("slurmd.pid", "slurmctld.pid")}
    up = _script(UP, env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        # A job with a step, as the training jobs are: the batch script srun's the task.
        job = _sbatch(env, work, "srun -n1 bash -c 'echo $$ > task.pid; exec sleep 300'")
        assert job.returncode == 0, job.stdout + job.stderr
        deadline = time.monotonic() + 60
        while not (work / "task.pid").exists():
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        time.sleep(6)  # slurmctld saves its state every few seconds; let it record the job and its steps
        # Everything vanishes at once, as when the machine a run was on is stopped or copied.
        victims = _processes_of(d)
        assert {int((d / f).read_text()) for f in ("slurmd.pid", "slurmctld.pid")} <= set(victims)
        assert int((work / "task.pid").read_text()) in victims
        for pid in victims:
            _kill(pid)
        assert list((d / "state").glob("hash.*/job.*")), "precondition: the state directory holds the job"

        t0 = time.monotonic()
        up = _script(UP, env)
        assert up.returncode == 0, up.stdout + up.stderr  # the node reached `idle`
        # Not fooled by the killed daemons' pid files (their zombies answer kill -0 where PID 1 never
        # reaps): no 10 s sinfo timeouts against a dead controller before starting anew.
        assert time.monotonic() - t0 < 15, f"slurm-up.sh took {time.monotonic() - t0:.0f} s"
        job = _sbatch(env, work, "echo after", "--wait")
        assert job.returncode == 0, job.stdout + job.stderr
        assert [p.read_text().strip() for p in work.glob("out-*.txt")].count("after") == 1
    finally:
        _script(DOWN, env)
        for pid in _processes_of(d):
            _kill(pid)
    # The session's cluster was not touched: the same daemons run, and it still counts as up (whatever
    # state the other worker's jobs give its node meanwhile).
    assert {f: int((session / f).read_text()) for f in session_daemons} == session_daemons
    for pid in session_daemons.values():
        os.kill(pid, 0)
    st = subprocess.run([str(UP), "--status"], capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stdout + st.stderr
