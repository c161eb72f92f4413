"""The real one-node SLURM cluster for `pytest -m slurm`, and helpers to submit the launch/slurm scripts.

`slurm_cluster` (session) calls .ci/slurm-up.sh, the one implementation (apt install if missing,
slurm.conf under /tmp/slurm with CPUs = nproc, munged + slurmctld + slurmd, wait for `idle`). If
the cluster was already up (.ci/run starts it first) the fixture uses it and leaves it running;
if the fixture started it, it stops it at the end with .ci/slurm-down.sh (by pid).
Under pytest-xdist (`make test` runs two workers) each worker has its own session: the check-and-start
holds a file lock, so one worker starts the cluster and the other finds it up; the worker that started it
leaves a marker instead of stopping it (the other may still submit jobs), and the controller stops it
when the whole run ends (tests/conftest.py, pytest_unconfigure).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import time

import pytest
from helpers import SLURM_DOWN as DOWN
from helpers import SLURM_LOCK as LOCK
from helpers import SLURM_STARTED_MARK as STARTED_MARK
from helpers import SLURM_UP as UP
from slurm_helpers import Cluster


@contextlib.contextmanager
def _start_lock():
    """An exclusive lock on LOCK for the check-and-start; none where LOCK cannot be opened (another user's
    file: such a user cannot start the cluster anyway, only use one that is up)."""
    try:
        f = open(LOCK, "a")
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    """A running one-node cluster; started (and later stopped) here unless it was up already."""
    with _start_lock():  # xdist workers: one starts the cluster, the other then finds it up
        up = subprocess.run([str(UP), "--status"], capture_output=True, text=True, timeout=60)
        started_here = up.returncode != 0
        if started_here:
            if os.geteuid() != 0:
                pytest.skip("starting SLURM needs root (apt, munged, slurmd); start it with .ci/slurm-up.sh")
            t0 = time.monotonic()
            r = subprocess.run([str(UP)], capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f".ci/slurm-up.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            print(f"slurm-up.sh: {time.monotonic() - t0:.1f}s", file=sys.stderr)
            if os.environ.get("PYTEST_XDIST_WORKER"):
                STARTED_MARK.touch()  # the controller stops it once every worker is done
    conf = os.environ.get("MEZO_SLURM_DIR", "/tmp/slurm") + "/slurm.conf"
    node = subprocess.run(["scontrol", "show", "node"], env={**os.environ, "SLURM_CONF": conf},
                          capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"CPUTot=(\d+)", node)
    assert m, node
    yield Cluster(conf=conf, cpus=int(m.group(1)))
    if started_here and not os.environ.get("PYTEST_XDIST_WORKER"):
        subprocess.run([str(DOWN)], capture_output=True, text=True, timeout=120)
