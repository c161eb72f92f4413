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
