"""The sglang backend's data-parallel group, built from torchrun's agent store, under a real torchrun (CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, env, excerpt

pytestmark = pytest.mark.integration


def test_dp_group_over_torchrun_store_sums_and_gathers():
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(REPO / "tests" / "scripts" / "sglang_dp_group_probe.py")]
    res = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, excerpt(res.stderr)
    lines = sorted(l for l in res.stdout.splitlines() if l[:2] in ("0 ", "1 "))
    assert lines == ["0 [2.0, 1.0] [[0.0], [1.0]]", "1 [2.0, 1.0] [[0.0], [1.0]]"], res.stdout
