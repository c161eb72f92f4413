"""The GPU suite in one pytest process (scripts/gpu_suite.sh tests): each test's outcome, written as it ends.

With $MEZO_GPU_OUTCOMES set, every test report appends one line `nodeid<TAB>phase<TAB>outcome<TAB>seconds` to
that file and flushes it, so that a process a CUDA error kills part-way still leaves which files finished
(pytest's own summary and junit XML are written only at its end); the suite script reruns the rest, a file a
process.
"""

from __future__ import annotations

import os


def pytest_runtest_logreport(report) -> None:
    """Append this report's line (setup, call or teardown) to $MEZO_GPU_OUTCOMES, if set."""
    path = os.environ.get("MEZO_GPU_OUTCOMES")
    if not path or (report.when != "call" and report.outcome == "passed"):
        return  # a passed setup or teardown says nothing the call's line does not
    with open(path, "a") as f:
        f.write(f"{report.nodeid}\t{report.when}\t{report.outcome}\t{report.duration:.2f}\n")
        f.flush()
