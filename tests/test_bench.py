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
