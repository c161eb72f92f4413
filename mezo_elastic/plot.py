"""`python -m mezo_elastic.plot OUTPUT_DIR [--out FILE.png]`: one PNG of a run's metrics.jsonl.

Panels, sharing the step axis: train loss (raw, faint, and smoothed) with eval loss; eval accuracy
(classification runs only); learning rate. Needs matplotlib: pip install 'mezo_elastic[plot]'.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mezo_elastic.errors import MezoError

INSTALL_HINT = "pip install 'mezo_elastic[plot]'  (or: pip install 'matplotlib>=3.7')"


@dataclass
class Series:
    """Metrics of one run, by step (a resumed run's repeated steps keep their last value)."""

    train: dict[int, dict[str, Any]] = field(default_factory=dict)
    eval: dict[int, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None


def load_metrics(path: Path) -> Series:
    """Read metrics.jsonl into a Series.

    Raises:
        MezoError: the file is missing, a line is not a JSON object, or it has no train/eval line.
    """
    if not path.is_file():
        raise MezoError(f"{path}: no such file; pass the run's train.output_dir (it holds metrics.jsonl)")
    s = Series()
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            # A run killed mid-write leaves a torn last line; anything else is a corrupt file.
            if n == len(lines):
                continue
            raise MezoError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or "type" not in row:
            raise MezoError(f"{path}:{n}: expected an object with a 'type' key, got {line[:80]!r}")
        if row["type"] == "train":
            s.train[int(row["step"])] = row
        elif row["type"] == "eval":
            s.eval[int(row["step"])] = row
        elif row["type"] == "summary":
            s.summary = row
    if not s.train and not s.eval:
        raise MezoError(f"{path}: no train or eval lines yet (train.log_every sets how often train lines come)")
    return s


def ema(steps: list[int], values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average with `weight` per training step (TensorBoard's, step-aware).

    A point logged k steps after the previous one decays the average by weight**k, so the curve does
    not depend on train.log_every; dividing by the accumulated weight keeps early points unbiased.
    """
    out: list[float] = []
    acc = norm = 0.0
    prev = None
    for step, v in zip(steps, values):
        decay = weight ** (step - prev if prev is not None else 1)
        acc = decay * acc + (1 - decay) * v
        norm = decay * norm + (1 - decay)
        out.append(acc / norm if norm > 0 else v)
        prev = step
    return out


def _column(rows: dict[int, dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    # Skipped (non-finite) steps are left out so one inf does not flatten the axis.
    pts = [(step, float(r[key])) for step, r in sorted(rows.items())
           if r.get(key) is not None and math.isfinite(float(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _import_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MezoError(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    matplotlib.use("Agg")  # files only: no display needed on a cluster node
    import matplotlib.pyplot as plt

    return plt


def _marks(xs: list[int]) -> dict[str, Any]:
    # A line needs two points: a series of one (a run with one train line) is drawn as a marker.
    return {"marker": "o", "ms": 5} if len(xs) == 1 else {}


def plot_run(series: Series, out: Path, title: str, smoothing: float) -> Path:
    """Draw the panels into a PNG at `out` and return its path."""
    plt = _import_pyplot()
    fig = draw(series, title, smoothing)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Title": title})  # also in the PNG's text chunk, for scripts
    plt.close(fig)
    return out


def draw(series: Series, title: str, smoothing: float) -> Any:
    """The matplotlib Figure of the panels (plot_run saves it; tests look at its artists)."""
    plt = _import_pyplot()
    acc_steps, acc = _column(series.eval, "eval_accuracy")
    n_panels = 3 if acc else 2
    fig, axes = plt.subplots(n_panels, 1, figsize=(9, 2.6 + 2.4 * n_panels), sharex=True,
                             gridspec_kw={"height_ratios": [2.2] + [1] * (n_panels - 1)})
    ax_loss, ax_lr = axes[0], axes[-1]
    steps, loss = _column(series.train, "loss")
    if loss:
        ax_loss.plot(steps, loss, color="tab:blue", alpha=0.25, lw=1, label="train loss (raw)", **_marks(steps))
        ax_loss.plot(steps, ema(steps, loss, smoothing), color="tab:blue", lw=2,
                     label=f"train loss (EMA {smoothing:g} per step)", **_marks(steps))
    ev_steps, ev_loss = _column(series.eval, "eval_loss")
    if ev_loss:
        ax_loss.plot(ev_steps, ev_loss, color="tab:orange", marker="o", ms=4, lw=1.5, label="eval loss")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(title, fontsize=11)
    ax_loss.legend(loc="upper right", fontsize=9)
    if acc:
        ax_acc = axes[1]
        ax_acc.plot(acc_steps, [100 * a for a in acc], color="tab:green", marker="o", ms=4)
        ax_acc.set_ylabel("eval accuracy (%)")
        ax_acc.set_ylim(0, 100)
    lr_steps, lr = _column(series.train, "lr")
    ax_lr.plot(lr_steps, lr, color="tab:purple", lw=1.5, **_marks(lr_steps))
    ax_lr.set_ylabel("learning rate")
    if lr:  # from 0, so a constant lr reads as flat rather than as noise around an offset
        ax_lr.set_ylim(0, max(lr) * 1.1 or 1.0)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_lr.set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _title(run_dir: Path, s: Series) -> str:
    parts = [str(run_dir)]
    if s.summary:
        parts.append(f"{s.summary.get('steps', '?')} steps")
        if s.summary.get("final_eval_loss") is not None:
            parts.append(f"final eval loss {s.summary['final_eval_loss']:.3f}")
        # run_seconds spans every launch of a resumed run; seconds (older runs) only the last one.
        total, last = s.summary.get("run_seconds"), s.summary.get("seconds")
        if total is not None:
            resumed = s.summary.get("resumed_from") and last is not None
            parts.append(f"{total:.0f} s" + (f" over all launches (last {last:.0f} s)" if resumed else ""))
        elif last is not None:
            parts.append(f"{last:.0f} s")
    return ", ".join(parts)


def png_path(run_dir: Path, out: Path | None) -> Path:
    """Where the PNG goes: --out as given; a directory gets metrics.png in it, a name without a suffix
    gets .png (as matplotlib would write it: the printed path is then the file's)."""
    if out is None or out.is_dir():
        return (out or run_dir) / "metrics.png"
    return out if out.suffix else out.with_name(out.name + ".png")


def main(argv: list[str] | None = None) -> int:
    """CLI entry: read OUTPUT_DIR/metrics.jsonl, write the PNG, print its path."""
    parser = argparse.ArgumentParser(prog="python -m mezo_elastic.plot", description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", type=Path, help="a run's train.output_dir (holds metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path, or a directory for metrics.png (default: OUTPUT_DIR/metrics.png)")
    parser.add_argument("--smoothing", type=float, default=0.9, help="EMA weight per training step in [0, 1) for the smoothed train loss (0.9)")
    args = parser.parse_args(argv)
    if not 0 <= args.smoothing < 1:
        parser.error(f"--smoothing={args.smoothing} must be in [0, 1)")
    try:
        series = load_metrics(args.output_dir / "metrics.jsonl")
        out = plot_run(series, png_path(args.output_dir, args.out), _title(args.output_dir, series), args.smoothing)
    except MezoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
