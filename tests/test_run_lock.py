"""The output-directory lock's verdicts (the entry-point behaviour is in tests/integration/test_first_hour.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from mezo_elastic.state.lock import Holder, _process_started, judge

NOW = 1_000_000.0


def _me(**kw) -> Holder:
    base = dict(host="a", pid=os.getpid(), pid_started=_process_started(os.getpid()), run_id="slurm-7.0",
                heartbeat=NOW, started=NOW)
    return Holder(**{**base, **kw})


def test_same_run_id_is_a_restart_unless_anonymous():
    assert judge(_me(pid=1, host="b", heartbeat=NOW), _me(), 300, NOW)[0] == "same"
    # torchrun without --rdzv-id says "none" for every job: only pid / heartbeat decide
    assert judge(_me(run_id="none", host="b"), _me(run_id="none"), 300, NOW)[0] == "held"


def test_same_host_dead_or_reused_pid_is_stale_live_pid_holds():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert judge(_me(pid=dead.pid, run_id="x"), _me(), 300, NOW)[0] == "stale"
    assert judge(_me(run_id="x", pid_started=1.0), _me(), 300, NOW)[0] == "stale"  # pid reused by a newer process
    live = _me(run_id="x", pid=os.getppid(), pid_started=_process_started(os.getppid()))
    assert judge(live, _me(), 300, NOW)[0] == "held"


def test_other_host_stale_only_after_its_heartbeat_timeout():
    other = _me(host="b", run_id="x", pid=1)
    assert judge(other, _me(), 300, NOW + 299)[0] == "held"
    assert judge(other, _me(), 300, NOW + 301)[0] == "stale"
