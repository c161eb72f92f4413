""".ci/slurm-up.sh --status: which node states count as up.

CI once failed on the check after the second-cluster test: a bare "slurm not up" from the old strict
idle|mixed|allocated rule, while the other worker's jobs ran on the node (a job ending leaves it `completing`,
a queued one `planned`). Here the daemons are this test's own live process and `sinfo` is a stand-in on
PATH that prints the state under test, so every state is tried without a cluster.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import SLURM_UP


def _status(tmp_path: Path, state: str, slurmd_pid: str | None = None) -> subprocess.CompletedProcess[str]:
    d, bin_ = tmp_path / "slurm", tmp_path / "bin"
    d.mkdir(exist_ok=True)
    bin_.mkdir(exist_ok=True)
    (d / "slurm.conf").write_text("# stand-in\n")
    (d / "slurmctld.pid").write_text(str(os.getpid()))  # a live, non-zombie process
    (d / "slurmd.pid").write_text(str(os.getpid()) if slurmd_pid is None else slurmd_pid)
    sinfo = bin_ / "sinfo"
    sinfo.write_text(f"#!/bin/sh\nprintf '%s\\n' '{state}'\n" if state else "#!/bin/sh\nexit 1\n")
    sinfo.chmod(0o755)
    env = {**os.environ, "MEZO_SLURM_DIR": str(d), "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(SLURM_UP), "--status"], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("state", ["idle", "mixed", "allocated", "allocated+", "mixed-", "completing", "planned"])
def test_states_that_take_or_run_jobs_are_up(tmp_path: Path, state: str):
    st = _status(tmp_path, state)
    assert st.returncode == 0, st.stdout + st.stderr
    assert st.stdout.strip().endswith(state)


@pytest.mark.parametrize("state", ["idle*", "down*", "drained", "draining", "fail", ""])
def test_states_that_do_not_are_not_up_and_say_what_was_seen(tmp_path: Path, state: str):
    st = _status(tmp_path, state)
    assert st.returncode == 1, st.stdout + st.stderr
    assert st.stdout.strip() == f"slurm not up ({state or 'sinfo did not answer'})"


def test_dead_daemons_are_not_up(tmp_path: Path):
    st = _status(tmp_path, "idle", slurmd_pid="")  # no pid: slurmd never wrote one
    assert (st.returncode, st.stdout.strip()) == (1, "slurm not up (daemons not running)")
