"""The sglang backend's per-replica TP worlds under a real torchrun (CPU, gloo): ports agreed per replica,
a held port skipped, each default group the size SGLang expects."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from helpers import REPO, env, excerpt

from mezo_elastic.cluster.distributed import free_port

pytestmark = pytest.mark.integration


def _run(tp: int, first: int, nproc: int = 4) -> list[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(REPO / "tests" / "scripts" / "sglang_tp_world_probe.py"), str(tp), str(first)]
    res = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=180, cwd=REPO)
    assert res.returncode == 0, excerpt(res.stderr)
    return sorted(l for l in res.stdout.splitlines() if l.startswith("rank "))


def test_two_replicas_of_tp2_get_their_own_ports_and_worlds():
    first = free_port()
    with socket.socket() as held:  # a stranger on replica 0's first candidate port
        held.bind(("127.0.0.1", first))
        held.listen()
        lines = _run(tp=2, first=first)
    ports = {int(l.split()[3]) for l in lines}
    assert len(lines) == 4 and all(" world 2 " in l for l in lines), lines
    assert first not in ports and len(ports) == 2, lines  # held port skipped; one port per replica
    sums = sorted(float(l.split()[-1]) for l in lines)
    assert sums == [1.0, 1.0, 5.0, 5.0], lines  # ranks {0,1} and {2,3}: each replica reduces alone


def test_tp1_needs_no_port():
    lines = _run(tp=1, first=free_port(), nproc=2)
    assert all(" port 0 world 1 " in l for l in lines), lines
