"""The real one-node SLURM cluster for `pytest -m slurm`, and helpers to submit the launch/slurm scripts.

`slurm_cluster` (session) calls .ci/slurm-up.sh, the one implementation (apt install if missing,
slurm.conf under /tmp/slurm with CPUs = nproc, munged + slurmctld + slurmd, wait for `idle`). If
the cluster was already up (.ci/run starts it first) the fixture uses it and leaves it running;
if the fixture started it, it stops it at the end with .ci/slurm-down.sh (by pid).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from helpers import REPO
from slurm_helpers import Cluster

UP, DOWN = REPO / ".ci" / "slurm-up.sh", REPO / ".ci" / "slurm-down.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    """A running one-node cluster; started (and later stopped) here unless it was up already."""
    up = subprocess.run([str(UP), "--status"], capture_output=True, text=True, timeout=60)
    started_here = up.returncode != 0
    if started_here:
        if os.geteuid() != 0:
            pytest.skip("starting SLURM needs root (apt, munged, slurmd); start it with .ci/slurm-up.sh")
        t0 = time.monotonic()
        r = subprocess.run([str(UP)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f".ci/slurm-up.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        print(f"slurm-up.sh: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    conf = os.environ.get("MEZO_SLURM_DIR", "/tmp/slurm") + "/slurm.conf"
    node = subprocess.run(["scontrol", "show", "node"], env={**os.environ, "SLURM_CONF": conf},
                          capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"CPUTot=(\d+)", node)
    assert m, node
    yield Cluster(conf=conf, cpus=int(m.group(1)))
    if started_here:
        subprocess.run([str(DOWN)], capture_output=True, text=True, timeout=120)
