"""Progress per step, gaussian against rademacher z, on the built-in tasks (several run seeds).

    python bench/progress_dist.py                        # lm + classification, seeds 0-3, 600 steps
    python bench/progress_dist.py --seeds 0,1 --steps 200 --out progress.json

Each run is `python -m mezo_elastic.train` on the built-in tiny default (single process, 1 thread),
its defaults except --seed, --data.objective and --mezo.distribution; the final eval loss (and
accuracy for classification) come from the run's summary line. Prints one Markdown table: per task
and distribution the mean +- standard deviation over seeds and the per-seed values; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DISTS = ("gaussian", "rademacher")
TASKS = ("lm", "classification")


def run(out: Path, task: str, dist: str, seed: int, steps: int) -> dict:
    """One training run to completion; its summary line."""
    argv = [sys.executable, "-m", "mezo_elastic.train", f"--train.output_dir={out}", f"--train.steps={steps}",
            f"--seed={seed}", f"--data.objective={task}", f"--mezo.distribution={dist}", "--train.progress=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO)
    if res.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{res.stderr[-3000:]}")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(line for line in reversed(lines) if line["type"] == "summary")


def fmt(vals: list[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.4f} +- {sd:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {"steps": args.steps, "seeds": seeds, "date": time.strftime("%Y-%m-%d"), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for dist in DISTS:
                for seed in seeds:
                    t0 = time.perf_counter()
                    s = run(Path(tmp) / f"{task}-{dist}-{seed}", task, dist, seed, args.steps)
                    s["wall_s"] = time.perf_counter() - t0
                    results["runs"][f"{task}/{dist}/{seed}"] = s
                    print(f"{task} {dist} seed {seed}: final eval loss {s['final_eval_loss']:.4f} "
                          f"({s['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    print(f"\n{args.steps} steps, built-in defaults, seeds {args.seeds}; {results['date']}\n")
    print("| task | z | first eval loss | final eval loss (mean +- sd) | per seed | final eval accuracy |")
    print("|---|---|---:|---:|---|---:|")
    for task in args.tasks.split(","):
        for dist in DISTS:
            runs = [results["runs"][f"{task}/{dist}/{s}"] for s in seeds]
            final = [r["final_eval_loss"] for r in runs]
            acc = [r["final_eval_accuracy"] for r in runs if "final_eval_accuracy" in r]
            print(f"| {task} | {dist} | {fmt([r['first_eval_loss'] for r in runs])} | {fmt(final)} | "
                  f"{', '.join(f'{v:.4f}' for v in final)} | {fmt(acc) if acc else '-'} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
