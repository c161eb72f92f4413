"""bench/bench_step.py's table from a saved run (the benchmark itself needs a GPU: scripts/gpu_suite.sh)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_step_benchmark_table_renders_a_saved_run():
    spec = importlib.util.spec_from_file_location("bench_step", REPO / "bench" / "bench_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = json.loads((REPO / "bench" / "results" / "2026-11-26-h100" / "bench_1b.json").read_text())
    text = mod.table(out)
    assert "| step, ours on SGLang | 41.66 ms (2.48x faster than the reference) |" in text
    assert "| ours on SGLang / ideal | 1.06 |" in text
    assert "NVIDIA H100" in text.splitlines()[0]
    partial = {k: v for k, v in out.items() if "sglang" not in k and k != "step_ideal_ms"}  # --skip-sglang
    assert "SGLang" not in mod.table(partial).split("\n", 1)[1]


def test_cpu_step_benchmark_runs_on_the_builtin_default(tmp_path):
    """bench/bench_cpu_step.py end to end on the tiny shape (1 repetition): every row, both z."""
    import subprocess
    import sys

    from helpers import env

    out = tmp_path / "cpu.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_cpu_step.py"), "--shapes", "default", "--threads",
                        "1", "--reps", "1", "--out", str(out)], env=env(), capture_output=True, text=True, timeout=300,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| step, ours, rademacher |" in r.stdout and "| sweep, reference (torch.normal per tensor) |" in r.stdout
    rows = json.loads(out.read_text())["shapes"]["default"]["1"]
    assert all(rows[f"step_ours_{d}_ms"] > 0 for d in ("gaussian", "rademacher", "rademacher32"))
