"""bench/time_to_accuracy.py --smoke end to end on the CPU: the reference MeZO (grid + seeds), ours through
python -m mezo_elastic.train with spsa, fzoo and gv, on the built-in classification and reward tasks; then a
re-invocation on the same OUT that skips every finished run and rebuilds the report from OUT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import env

REPO = Path(__file__).resolve().parents[1]


def bench(out: Path, *args: str) -> subprocess.CompletedProcess:
    # --smoke with 32 eval rows instead of its 64: every eval of every run costs half (what is checked is the
    # report's shape and the skip of finished runs, not the scores); both invocations ask the same
    r = subprocess.run([sys.executable, str(REPO / "bench" / "time_to_accuracy.py"), "--smoke", "--out", str(out),
                        "--eval-examples=32", *args], env=env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def test_time_to_accuracy_smoke(tmp_path):
    r = bench(tmp_path)
    assert "| cls | reference MeZO |" in r.stdout and "| reward | ours, fzoo |" in r.stdout, r.stdout
    out = json.loads((tmp_path / "tta.json").read_text())
    assert out["versions"]["torch"] and out["card"].startswith("CPU") and out["date"]
    for task in ("cls", "reward"):
        t = out["tasks"][task]
        assert t["target"] == t["zero_shot"] + 0.8 * (t["ref_final"] - t["zero_shot"])
        assert (tmp_path / t["picture"]).stat().st_size > 10_000  # the PNG
        ref = t["methods"]["reference"]
        assert sorted(ref["lrs_tried"]) == [1e-3, 3e-3]  # the grid ran on seed 0
        assert len(ref["runs"][0]["curve"]) == 1 + out["args"][f"steps_{task}"] // out["args"]["eval_every"]
        # |projected gradient| between evals, for every run (a divergence shows there before the metric falls)
        assert [g["step"] for g in ref["runs"][0]["grad_curve"]] == [p["step"] for p in ref["runs"][0]["curve"][1:]]
        assert ref["runs"][0]["ready_s"] > 0 and ref["from_launch"]["ready"] > 0
        for est, fwd in (("spsa", 2), ("fzoo", 5), ("gv", 4)):
            run = t["methods"][est]["runs"][0]
            c = run["curve"]
            assert c[0]["seconds"] == 0.0 and c[-1]["seconds"] > 0 and run["forwards_per_step"] == fwd
            assert c[-1]["forwards"] <= 3 * ref["runs"][0]["curve"][-1]["forwards"] + 20  # the 3x budget
            assert (tmp_path / "runs" / task / f"{est}-{run['lr']:g}-s0.json").is_file()
            info = json.loads((tmp_path / "work" / task / f"{est}-{run['lr']:g}-s0" / "run.json").read_text())
            assert info["trajectory"]["mezo.estimator"] == est
            assert [g["step"] for g in run["grad_curve"]] == [p["step"] for p in c[1:]]
            assert all(g["max_abs_g"] >= g["median_abs_g"] >= 0 for g in run["grad_curve"])
            assert any(g["max_abs_g"] > 0 for g in run["grad_curve"])
            assert run["ready_s"] > 1  # a trainer's launch: its imports, model and step-0 eval
    # the same OUT again: nothing reruns, the report is rebuilt from OUT's runs (as --report-only does)
    again = bench(tmp_path, "--methods", "reference,ours")
    assert "running" not in again.stdout and again.stdout.count("done already") == 12, again.stdout
    assert json.loads((tmp_path / "tta.json").read_text())["tasks"]["cls"]["target"] == out["tasks"]["cls"]["target"]
    assert "| cls | ours, spsa |" in again.stdout
