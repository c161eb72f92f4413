"""bench/first_order_top.py --smoke on the CPU: backprop on the built-in classification task lifts its eval accuracy
from chance, and the saved model is what bench/g_noise.py reads (an HF directory with its tokenizer)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from helpers import env

REPO = Path(__file__).resolve().parents[1]


def test_first_order_top_learns_and_g_noise_reads_it(tmp_path):
    out = tmp_path / "top"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "first_order_top.py"), "--smoke", "--out", str(out),
                        "--lr", "1e-3", "--max-steps", "20", "--eval-every", "10", "--eval-examples", "32",
                        "--until", "0.99"], env=env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    got = json.loads((out / "first_order.json").read_text())
    assert got["curve"][0]["step"] == 0 and got["curve"][-1]["step"] > 0
    assert got["final_accuracy"] > got["curve"][0]["accuracy"] + 0.1, got
    train = out / "builtin" / "task-classification" / "train.jsonl"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "g_noise.py"), "--model", str(out / "top-model"),
                        "--train", str(train), "--out", str(tmp_path / "gn"), "--forwards", "hf:float32,hf:bfloat16",
                        "--eps", "1e-2", "--seeds", "2"], env=env(), capture_output=True, text=True, timeout=300,
                       cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    g = json.loads((tmp_path / "gn" / "g_noise.json").read_text())["g"]
    assert all(math.isfinite(x) for x in g["hf:bfloat16"]["0.01"]) and any(x != 0 for x in g["hf:float32"]["0.01"])
