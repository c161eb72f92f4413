"""bench/time_to_accuracy.py --smoke end to end on the CPU: the reference MeZO (grid + seeds), ours through
python -m mezo_elastic.train with spsa and fzoo, on the built-in classification and reward tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import env

REPO = Path(__file__).resolve().parents[1]


def test_time_to_accuracy_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "time_to_accuracy.py"), "--smoke", "--out",
                        str(tmp_path)], env=env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| cls | reference MeZO |" in r.stdout and "| reward | ours, fzoo |" in r.stdout, r.stdout
    out = json.loads((tmp_path / "tta.json").read_text())
    for task in ("cls", "reward"):
        t = out["tasks"][task]
        ref = t["reference"]
        assert ref["reached"] == 1 and ref["best_metric"] == t["target"]  # the reference reaches its own best
        assert len(ref["runs"][0]["curve"]) == 1 + out["args"]["steps"][task] // out["args"]["eval_every"]
        for est in ("spsa", "fzoo"):
            run = t["ours"][est]["runs"][0]
            assert run["curve"][0][:2] == [0, 0.0] and run["curve"][-1][1] > 0  # training seconds grow
            info = json.loads((tmp_path / Path(f"{task}-{est}" + ("-x2" if est == "fzoo" else "") + "-s0")
                               / "run.json").read_text())
            assert info["trajectory"]["mezo.estimator"] == est
