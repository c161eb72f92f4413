"""bench/g_noise.py --smoke on the CPU: float32, float32 on bf16-rounded weights and bfloat16 forwards of the built-in
model give a table and every g; each g starts from exactly the clean weights (a second invocation asking one eps
alone gets the same g bit for bit, where the first had moved the weights through another eps and other forwards
before it)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from helpers import env

REPO = Path(__file__).resolve().parents[1]


def probe(out: Path, *args: str) -> tuple[str, dict]:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "g_noise.py"), "--smoke", "--out", str(out), *args],
                       env=env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout, json.loads((out / "g_noise.json").read_text())


def test_g_noise_smoke_table_and_exact_restore(tmp_path):
    text, both = probe(tmp_path / "a", "--eps", "1e-2,3e-2", "--seeds", "3")
    assert all(f"| hf:{d} | 0.01 |" in text for d in ("float32", "float32@bfloat16", "bfloat16")), text
    assert both["reference"] == "hf:float32"
    for forward in ("hf:float32", "hf:float32@bfloat16", "hf:bfloat16"):
        for eps in ("0.01", "0.03"):
            g = both["g"][forward][eps]
            assert len(g) == 3 and all(math.isfinite(x) for x in g) and any(x != 0 for x in g)
    row = next(r for r in both["rows"] if r["forward"] == "hf:bfloat16" and r["eps"] == 0.01)
    assert -1 <= row["corr"] <= 1 and row["noise"] >= 0 and 0 <= row["sign"] <= 1
    _, alone = probe(tmp_path / "b", "--eps", "3e-2", "--seeds", "3", "--forwards", "hf:float32")
    assert alone["g"]["hf:float32"]["0.03"] == both["g"]["hf:float32"]["0.03"]


def test_g_noise_suffixes_off_grid_theta_and_float32_logits(tmp_path):
    """/master leaves theta off the bf16 grid (a trained master's case) and +fp32head scores with float32 logits:
    each gives its own g, and the float32 head leaves a float32 forward's g as it was (nothing to round there)."""
    _, got = probe(tmp_path / "c", "--eps", "1e-2", "--seeds", "3", "--forwards",
                   "hf:float32,hf:float32+fp32head,hf:float32@bfloat16,hf:float32@bfloat16/master,hf:bfloat16+fp32head")
    g = {k: v["0.01"] for k, v in got["g"].items()}
    assert g["hf:float32+fp32head"] == g["hf:float32"]
    assert g["hf:float32@bfloat16/master"] != g["hf:float32@bfloat16"]
    assert all(math.isfinite(x) for x in g["hf:bfloat16+fp32head"])
    r = subprocess.run([sys.executable, str(REPO / "bench" / "g_noise.py"), "--smoke", "--out", str(tmp_path / "d"),
                        "--forwards", "hf:float32,hf:bfloat16/master"], env=env(), capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 2 and "either with /master" in r.stderr and "Traceback" not in r.stderr
