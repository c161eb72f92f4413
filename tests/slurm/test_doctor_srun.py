"""`srun python -m mezo_elastic.doctor` on the real one-node SLURM cluster."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import REPO
from slurm_helpers import Cluster, job_env

pytestmark = pytest.mark.slurm


def test_doctor_under_srun_two_tasks_agree_on_a_port_and_summarise(slurm_cluster: Cluster):
    # srun without torchrun: rank/world from SLURM_PROCID/SLURM_NTASKS, the port picked by this package.
    cmd = ["srun", "--oversubscribe", "-N1", "-n2", "--ntasks-per-node=2", "-t", "3",
           sys.executable, "-m", "mezo_elastic.doctor", "--timeout", "30"]
    r = subprocess.run(cmd, env=job_env(slurm_cluster), capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "mezo_elastic doctor: 2 rank(s) reporting" in out
    assert re.search(r"candidate ports (\d+)\.\.(\d+) \(picked by this package\)", out)
    assert "gloo group of 2 formed and every report gathered" in out
    job = re.search(r"run_id=slurm-(\d+)\.", out)
    assert job and re.search(rf"rank 1: ok .*launcher=slurm rank=1/2 .*run_id=slurm-{job.group(1)}\.", out)
    assert re.search(r"\[doctor rank 1\] launcher=slurm rank=1/2", out)
    assert out.count("RESULT: OK") == 1  # only rank 0 summarises
