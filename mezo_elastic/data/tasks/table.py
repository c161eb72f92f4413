"""The paper's table from run directories: `python -m mezo_elastic.tasks table RUNS... [--csv FILE]`.

A run directory is any folder with run.json and metrics.jsonl (train.output_dir of a data.task run);
the arguments may be such folders or folders above them. A row is one (model, mezo.lr) setting, the
columns are MeZO's tasks in the paper's order (Table 1: classification, multiple choice, generation),
a cell is the eval metric x 100 (accuracy; F1 for SQuAD and DROP) of the eval MeZO reports: the one of
lowest dev loss after step 0 (MeZO's --load_best_model_at_end over its evals), else the last; the mean
where several runs (e.g. seeds) share a cell. A row "MODEL lr by dev" takes, per task, the lr of the
best dev metric (the paper's grid search on dev).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mezo_elastic.data.tasks.templates import TASKS
from mezo_elastic.errors import MezoError

PAPER_NAMES = {"SST2": "SST-2", "Copa": "COPA"}  # the paper's column heads, where they differ


def column(task: str) -> str:
    return PAPER_NAMES.get(task, task)


def find_runs(paths: list[str]) -> list[Path]:
    """Every run directory (holding run.json) at or below the given paths, sorted."""
    found = set()
    for p in map(Path, paths):
        if not p.exists():
            raise MezoError(f"{p}: no such directory")
        found.update(r.parent for r in ([p / "run.json"] if (p / "run.json").is_file() else p.rglob("run.json")))
    return sorted(found)


@dataclass(frozen=True)
class RunResult:
    """One run's cell: its setting, task, the reported eval metric (x 100) and the dev metric beside it."""

    model: str
    lr: str
    task: str
    value: float
    dev: float | None
    step: int


def _pick(evals: list[dict], metric: str) -> dict:
    """The eval MeZO reports: of the evals after step 0, the one of lowest dev loss (its
    --load_best_model_at_end; the first of equals), or the last eval when there is no dev set."""
    with_dev = [e for e in evals if e["step"] > 0 and "dev_loss" in e and f"dev_{metric}" in e]
    return min(with_dev, key=lambda e: e["dev_loss"]) if with_dev else evals[-1]


def read_run(run: Path) -> RunResult | None:
    """The cell of one run; None for a run without data.task or without an eval of its metric yet."""
    cfg = json.loads((run / "run.json").read_text()).get("config", {})
    task = cfg.get("data", {}).get("task", "")
    if task not in TASKS:
        return None
    metric = TASKS[task].metric
    mfile = run / "metrics.jsonl"
    rows = [json.loads(line) for line in (mfile.read_text().splitlines() if mfile.is_file() else []) if line.strip()]
    evals = [r for r in rows if r.get("type") == "eval" and f"eval_{metric}" in r]
    if not evals:
        return None
    best = _pick(evals, metric)
    dev = best.get(f"dev_{metric}")
    return RunResult(Path(cfg.get("model", {}).get("path") or "builtin-tiny").name, str(cfg.get("mezo", {}).get("lr")),
                     task, 100.0 * float(best[f"eval_{metric}"]), None if dev is None else 100.0 * float(dev),
                     int(best["step"]))


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def build(runs: list[Path]) -> tuple[list[str], dict[str, dict[str, list[float]]], list[str]]:
    """(row labels, cells {label: {task: [values]}}, notes on the runs left out).

    A row per (model, lr); and per model with dev metrics, a row "MODEL lr by dev" whose cell is the
    (model, lr) cell of the best mean dev metric for that task: the grid search on dev.
    """
    results, notes = [], []
    for run in runs:
        got = read_run(run)
        if got is None:
            notes.append(f"{run}: no data.task or no eval line with its metric yet; left out")
        else:
            results.append(got)
    cells: dict[str, dict[str, list[float]]] = {}
    devs: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in results:
        cells.setdefault(f"{r.model} lr={r.lr}", {}).setdefault(r.task, []).append(r.value)
        if r.dev is not None:
            devs.setdefault((r.model, r.task), {}).setdefault(r.lr, []).append(r.dev)
    for (model, task), by_lr in devs.items():
        lr = max(by_lr, key=lambda k: _mean(by_lr[k]))
        cells.setdefault(f"{model} lr by dev", {})[task] = cells[f"{model} lr={lr}"][task]
    return sorted(cells), cells, notes


def to_csv(labels: list[str], cells: dict[str, dict[str, list[float]]]) -> str:
    """The table as CSV: a header row (setting, then each task and its metric), a row per setting."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["setting"] + [f"{column(t)} ({s.metric})" for t, s in TASKS.items()])
    for label in labels:
        vals = [cells[label].get(t) for t in TASKS]
        w.writerow([label] + ["" if v is None else f"{sum(v) / len(v):.1f}" for v in vals])
    return buf.getvalue()


def to_text(labels: list[str], cells: dict[str, dict[str, list[float]]]) -> str:
    """The table aligned for a terminal, '-' for a task without a run."""
    rows = list(csv.reader(io.StringIO(to_csv(labels, cells))))
    heads = [rows[0][0]] + [column(t) for t in TASKS]
    units = [""] + [s.metric for s in TASKS.values()]
    body = [[c or "-" for c in r] for r in rows[1:]]
    widths = [max(len(r[i]) for r in [heads, units] + body) for i in range(len(heads))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join(fmt(r) for r in [heads, units] + body) + "\n"


def main(paths: list[str], csv_path: str = "", fmt: str = "text") -> int:
    """Print the table of the runs under `paths` (text or csv) and write the CSV to csv_path if given."""
    from mezo_elastic.state.checkpoint import atomic_write_text

    labels, cells, notes = build(find_runs(paths))
    for n in notes:
        print(n, file=sys.stderr)
    if not labels:
        raise MezoError(f"no data.task run with an eval under {paths}")
    sys.stdout.write(to_csv(labels, cells) if fmt == "csv" else to_text(labels, cells))
    if csv_path:
        atomic_write_text(Path(csv_path), to_csv(labels, cells))
    return 0
