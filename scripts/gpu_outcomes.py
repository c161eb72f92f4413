"""Per-file lines of a GPU suite run in one pytest process, and which files to run again alone.

    python3 scripts/gpu_outcomes.py OUTCOMES LOG RC FILE...

OUTCOMES: the lines tests/gpu/conftest.py wrote (nodeid, phase, outcome, seconds), LOG: the process's output,
RC: its exit code (124 when `timeout` ended it), FILE...: the test files it was given, in order. Prints one
summary line a file ("name: 3 passed, 1 failed in 41.2 s (one process)") and, last, a line
"rerun: FILE ..." naming the files to run again in a process of their own: those with a failure or an error
(a failure only in the shared process is then a test-isolation finding, not a broken feature), a collection
error, and, when the process did not end by itself (a crash, a CUDA abort, the time limit), the file it was in
and every file it never reached.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path


def summarise(outcomes: str, log: str, rc: int, files: list[str]) -> tuple[list[str], list[str]]:
    """(one summary line a file, the files to rerun alone) from one process's outcome lines, log and rc."""
    counts: dict[str, Counter] = defaultdict(Counter)
    seconds: Counter = Counter()
    last_file = None
    for line in outcomes.splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        nodeid, when, outcome, secs = parts
        f = nodeid.split("::")[0]
        last_file = f
        seconds[f] += float(secs)
        if when == "call":
            counts[f][outcome] += 1
        elif outcome == "skipped":  # a skip in setup (a fixture's pytest.skip): the test was skipped
            counts[f]["skipped"] += 1
        else:  # a failed setup or teardown: pytest's "error"
            counts[f]["error"] += 1
    ended_by_itself = rc in (0, 1, 5)
    broken = set(re.findall(r"ERROR collecting (\S+\.py)", log))
    lines, rerun = [], []
    for f in files:
        name = Path(f).stem
        c = counts.get(f)
        if f in broken:
            lines.append(f"{name}: collection error (one process)")
            rerun.append(f)
        elif c:
            text = ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
            lines.append(f"{name}: {text} in {seconds[f]:.1f} s (one process)")
            if c["failed"] or c["error"] or (not ended_by_itself and f == last_file):
                rerun.append(f)
        elif ended_by_itself:
            lines.append(f"{name}: no test ran (skipped or deselected at collection; see the log)")
        else:
            lines.append(f"{name}: not reached (the process ended with rc {rc})")
            rerun.append(f)
    return lines, rerun


def main(argv: list[str]) -> int:
    outcomes_path, log_path, rc, *files = argv
    read = lambda p: Path(p).read_text(errors="replace") if Path(p).is_file() else ""  # noqa: E731
    lines, rerun = summarise(read(outcomes_path), read(log_path), int(rc), files)
    print("\n".join(lines))
    print("rerun:", " ".join(rerun))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
