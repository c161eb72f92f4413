"""Finished runs on disk: OUT/runs/<task>/<method>-<lr>-s<seed>.json, one file a run, written when it ends.

A re-invocation with the same OUT skips every finished run (so the bench splits into pieces of a few
minutes), and refuses a stored run whose settings differ from this invocation's (another model, budget,
eps, ...) instead of mixing it in: use another OUT for other settings.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
from pathlib import Path
from typing import Callable

from tta.curves import INF, Rule, final_smoothed, time_to_target


def run_path(out: Path, task: str, method: str, lr: float, seed: int) -> Path:
    return out / "runs" / task / f"{method}-{lr:g}-s{seed}.json"


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (a temp file renamed into place): a killed bench leaves no half run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(finite(obj), indent=1, allow_nan=False))
    os.replace(tmp, path)


def finite(obj):
    """`obj` with every inf / nan float as None (strict JSON: null = never reached)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def ensure(out: Path, task: str, method: str, lr: float, seed: int, want: dict, make: Callable[[], dict]) -> dict:
    """The finished run (task, method, lr, seed): read back when OUT has it, else made by `make()` and written.

    Raises:
        SystemExit: OUT holds this run made with other settings.
    """
    path = run_path(out, task, method, lr, seed)
    if path.is_file():
        rec = json.loads(path.read_text())
        if rec["settings"] != want:
            diff = {k: (rec["settings"].get(k), v) for k, v in want.items() if rec["settings"].get(k) != v}
            raise SystemExit(f"{path} was made with other settings (stored, now): {diff}; use another --out")
        print(f"  done already: {path.relative_to(out)}", flush=True)
        return rec
    print(f"  running {task} {method} lr {lr:g} seed {seed}", flush=True)
    rec = {"task": task, "method": method, "lr": lr, "seed": seed, "settings": want, **make(), "machine": machine()}
    write_json(path, rec)
    return rec


def machine() -> str:
    """Which machine a run's seconds come from: host name and this boot's id (a device machine started afresh
    is another machine even where its name repeats). Timings compare only within one machine: the report
    says when a task's runs come from several."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    return f"{socket.gethostname()} boot {boot}"


def load_runs(out: Path, task: str, method: str) -> list[dict]:
    """Every finished run of `method` on `task` in OUT."""
    folder = out / "runs" / task
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{method}-*-s*.json"))] if folder.is_dir() else []


def pick_lr(runs: list[dict], rule: Rule, target: float | None = None) -> float | None:
    """The lr of the best seed-0 run (every lr of the method in OUT competes): without a target, the best final smoothed metric (the reference's
    grid); with one, the soonest to the target in training seconds, ties and never-reached runs by the
    final smoothed metric. None when there are no runs; where seed 0 has none, the lowest seed's."""
    if not runs:
        return None
    low = min(r["seed"] for r in runs)
    first = [r for r in runs if r["seed"] == low]
    sign = 1 if rule.higher else -1

    def key(r: dict) -> tuple:
        secs = time_to_target(r["curve"], target, rule)["seconds"] if target is not None else INF
        return secs, -sign * final_smoothed(r["curve"], rule.window)

    return min(first, key=key)["lr"]


def at_lr(runs: list[dict], lr: float | None) -> list[dict]:
    """The runs at `lr`, by seed."""
    return sorted((r for r in runs if r["lr"] == lr), key=lambda r: r["seed"])


def total_seconds(runs: list[dict]) -> float:
    """Median over runs of the training seconds at the last eval."""
    return statistics.median(r["curve"][-1]["seconds"] for r in runs)
