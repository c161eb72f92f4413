"""bench/loop_parity.py: ours' trainer (hf, float32) and MeZO's own loop on ours' z, seeds and batches give the same
g at every step, up to float32 rounding, and the same eval accuracy (the built-in model, CPU); the table names the
first step where two g sequences part."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from helpers import env

REPO = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("loop_parity", REPO / "bench" / "loop_parity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ours_is_mezos_loop_step_by_step_on_the_built_in_model(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "loop_parity.py"), "--smoke", "--out", str(tmp_path),
                        "--steps", "8", "--eval-every", "4", "--eval-examples", "32"],
                       env=env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "loop_parity.json").read_text())
    assert len(res["ours"]) == len(res["reference"]) == 8
    s = res["summary"]
    assert s["rms_g_ref"] > 0.1  # the steps moved the model: g is not trivially 0 on both sides
    assert s["max_rel"] < 1e-3 and s["first_step_over_1e-3"] is None and s["sign_agreement"] == 1.0, s
    for (_, lo), (_, lr) in zip(res["ours"], res["reference"]):
        assert abs(lo - lr) < 1e-5  # the same batches and loss, step after step
    assert "| 7 |" in (tmp_path / "loop_parity.md").read_text()
    steps = [t for t, _ in res["reference_curve"]]
    assert steps == [t for t, _ in res["ours_curve"]] == [0, 4, 8]
    assert all(abs(a - b) < 1e-9 for (_, a), (_, b) in zip(res["reference_curve"], res["ours_curve"]))


def test_the_table_names_the_step_where_two_loops_part():
    mod = _module()
    ref = [(1.0, 0.7), (-2.0, 0.6), (3.0, 0.5), (-1.0, 0.4)]
    ours = [(1.0, 0.7), (-2.0, 0.6), (2.5, 0.5), (1.0, 0.4)]  # parts at step 2, opposite sign at step 3
    text, s = mod.table(ours, ref, "hf:float32")
    assert s["first_step_over_1e-3"] == 2 and s["sign_agreement"] == 0.75 and s["max_rel"] > 0.9
    assert text.count("\n") == len(ref) + 1


def test_a_long_run_gets_forty_rows_and_a_window_table():
    mod = _module()
    ref = [((-1.0) ** t * (1 + t % 7), 0.7 - t / 1000) for t in range(400)]
    ours = [(g * (1.0 if t < 200 else -1.0), loss) for t, (g, loss) in enumerate(ref)]  # parts at step 200
    text, s = mod.table(ours, ref, "sglang:bfloat16")
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 40 + 1 + 10  # every 10th step, the last, and ten windows of 40 steps
    assert "| 0-39 | 1.000 |" in text and "| 200-239 | -1.000 |" in text and s["first_step_over_1e-3"] == 200
