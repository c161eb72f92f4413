"""The GPU suite's one-process mode (scripts/gpu_suite.sh tests, GPU_PROCESS=one) on the CPU: tests/gpu/conftest.py
writes a line a test as it ends, and scripts/gpu_outcomes.py turns them into a line a file and the files to run
again alone (a failure, an error, a collection error; after a crash, the file it was in and those never reached).
A real pytest process runs sample test files under a copy of that conftest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO, env

sys.path.insert(0, str(REPO / "scripts"))
from gpu_outcomes import summarise  # noqa: E402

SAMPLES = {
    "test_good.py": "def test_a():\n    pass\n\ndef test_b():\n    pass\n",
    "test_mixed.py": "import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2\n\n"
                     "@pytest.fixture\ndef broken():\n    raise RuntimeError('setup')\n\n"
                     "def test_err(broken):\n    pass\n\ndef test_skip():\n    pytest.skip('why')\n",
    "test_unimportable.py": "import no_such_module_here\n",
    "test_crash.py": "import os\n\ndef test_first():\n    pass\n\ndef test_dies():\n    os._exit(134)\n",
    "test_after.py": "def test_never():\n    pass\n",
}


def _run(tmp_path: Path, names: list[str]) -> tuple[str, str, int, list[str]]:
    d = tmp_path / "gpu"
    d.mkdir(exist_ok=True)
    shutil.copy(REPO / "tests" / "gpu" / "conftest.py", d / "conftest.py")
    for name in names:
        (d / name).write_text(SAMPLES[name])
    outcomes = tmp_path / "outcomes.txt"
    outcomes.write_text("")
    files = [f"gpu/{n}" for n in names]
    r = subprocess.run([sys.executable, "-m", "pytest", *files, "-p", "no:cacheprovider", "-q",
                        "--continue-on-collection-errors", "-c", "/dev/null", "--rootdir", str(tmp_path)],
                       cwd=tmp_path, env={**env(), "MEZO_GPU_OUTCOMES": str(outcomes)},
                       capture_output=True, text=True, timeout=120)
    return outcomes.read_text(), r.stdout + r.stderr, r.returncode, files


def test_a_finished_process_reruns_only_its_failures(tmp_path):
    outcomes, log, rc, files = _run(tmp_path, ["test_good.py", "test_mixed.py", "test_unimportable.py"])
    assert rc == 1 and "gpu/test_good.py::test_a\tcall\tpassed\t" in outcomes
    lines, rerun = summarise(outcomes, log, rc, files)
    assert lines[0].startswith("test_good: 2 passed in ") and lines[0].endswith(" s (one process)")
    assert lines[1].startswith("test_mixed: 1 error, 1 failed, 1 passed, 1 skipped in "), lines[1]
    assert lines[2] == "test_unimportable: collection error (one process)"
    assert rerun == ["gpu/test_mixed.py", "gpu/test_unimportable.py"]


def test_a_crashed_process_reruns_the_file_it_was_in_and_those_it_never_reached(tmp_path):
    outcomes, log, rc, files = _run(tmp_path, ["test_good.py", "test_crash.py", "test_after.py"])
    assert rc == 134
    lines, rerun = summarise(outcomes, log, rc, files)
    assert lines[1].startswith("test_crash: 1 passed in ")
    assert lines[2] == "test_after: not reached (the process ended with rc 134)"
    assert rerun == ["gpu/test_crash.py", "gpu/test_after.py"]
    # the same lines, had the process ended by itself: a file with no line ran no test, and is not rerun
    assert summarise(outcomes, log, 0, files)[1] == []


def test_the_summary_script_prints_the_lines_and_the_rerun_list(tmp_path):
    outcomes, log, rc, files = _run(tmp_path, ["test_good.py", "test_mixed.py"])
    (tmp_path / "o.txt").write_text(outcomes)
    (tmp_path / "log.txt").write_text(log)
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_outcomes.py"), str(tmp_path / "o.txt"),
                        str(tmp_path / "log.txt"), str(rc), *files], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "rerun: gpu/test_mixed.py", r.stdout
