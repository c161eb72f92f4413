"""The README's two opening commands, run as written (so they cannot rot)."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from helpers import REPO, env, excerpt

pytestmark = pytest.mark.integration


def readme_commands() -> list[str]:
    """The commands of the README's first code block (comments stripped)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_readme_opens_with_the_two_commands():
    assert readme_commands() == ["make run", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()  # CI runs the README's test command


def test_run_command_trains_the_default_and_learns(tmp_path):
    """`make run` from the README: set-up plus 2-process torchrun on the built-in default. Must learn:
    final eval loss at least 10% below step 0's, in under 5 minutes on 2 CPU cores."""
    cmd = readme_commands()[0]
    t0 = time.monotonic()
    # RUN_ARGS is the Makefile's hook for extra training flags: only the output goes elsewhere
    res = subprocess.run(cmd, shell=True, cwd=REPO, env=env(RUN_ARGS=f"--train.output_dir={tmp_path}"),
                         capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    assert res.returncode == 0, excerpt(res.stderr)
    summary = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["type"] == "summary"
    print(f"make run: {took:.0f}s, eval loss {summary['first_eval_loss']:.3f} -> {summary['final_eval_loss']:.3f}")
    assert summary["final_eval_loss"] <= 0.9 * summary["first_eval_loss"]
    assert took < 300
    assert "done:" in res.stderr


def test_test_command_runs_this_suite():
    dry = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and re.search(r"-m pytest", dry.stdout), dry.stdout
