"""Rank-0 outputs: metrics.jsonl, an optional TensorBoard mirror, and the progress display."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from mezo_elastic.errors import ConfigError


def last_run_seconds(path: Path) -> float:
    """The `run_seconds` of the last line that has one (0.0 for a new run); a torn last line is skipped."""
    if not path.is_file():
        return 0.0
    for line in reversed(path.read_text().splitlines()):
        try:
            value = json.loads(line).get("run_seconds")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


# --step best picks by the first of these a run's eval lines carry: MeZO's dev set before the user's eval set
# (select on dev, report on eval), the task's metric before accuracy, reward, then loss.
BEST_KEYS = ("dev_f1", "dev_accuracy", "dev_reward", "dev_loss", "eval_f1", "eval_accuracy", "eval_reward", "eval_loss")


def eval_lines(run_dir: Path) -> dict[int, dict]:
    """The run's eval lines in metrics.jsonl by step (a resumed run repeats an eval on the same weights: the
    last line wins); {} where there is no file."""
    path = Path(run_dir) / "metrics.jsonl"
    evals: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a crash mid-write: the rest are whole
                continue
            if rec.get("type") == "eval":
                evals[rec["step"]] = rec
    return evals


def best_key(keys) -> str:
    """The first of BEST_KEYS among `keys` (an eval's metric names), or ""."""
    return next((k for k in BEST_KEYS if k in keys), "")


def evals_since_best(values: list[float], key: str) -> int:
    """How many evals in a row, at the end of `values` (one metric's evals in step order), have not beaten the
    best before them (higher is better; lower for a `*_loss` key). A tie or a nan does not beat it; the first
    eval sets the best. train.early_stop_evals ends a run once this reaches it."""
    sign = -1.0 if key.endswith("_loss") else 1.0
    best, since = None, 0
    for v in values:
        if math.isfinite(v) and (best is None or sign * v > sign * best):
            best, since = v, 0
        else:
            since += 1
    return since


def best_step(run_dir: Path, key: str = "") -> tuple[int, str, float]:
    """(step, key, value) of the run's best eval in metrics.jsonl: the highest value of `key` (the lowest for a
    `*_loss` key), the earliest step on ties; `key` empty = the first of BEST_KEYS the eval lines carry.

    A long MeZO run can pass its best and fall back (a too-large lr late in training); every step is logged,
    so the weights at the best eval can always be rebuilt.

    Raises:
        ConfigError: no eval line (with `key`) in the run's metrics.jsonl.
    """
    path = Path(run_dir) / "metrics.jsonl"
    evals = eval_lines(run_dir)
    keys = sorted({k for rec in evals.values() for k in rec if k.startswith(("eval_", "dev_"))})
    key = key or best_key(keys)
    scored = [(rec[key], step) for step, rec in sorted(evals.items()) if isinstance(rec.get(key), (int, float))]
    if not scored:
        found = f"its eval lines carry {', '.join(keys)}" if keys else "it has no eval lines (train.eval_every)"
        raise ConfigError(f"--step best: {path} has no eval with {key or 'a metric'}; {found}")
    sign = -1.0 if key.endswith("_loss") else 1.0
    value, step = max(scored, key=lambda vs: (sign * vs[0], -vs[1]))
    return step, key, value


class MetricsWriter:
    """Appends one JSON object a line to metrics.jsonl (and TensorBoard when asked). Rank 0 only.

    Every line carries `run_seconds`: seconds of training over all launches of the run so far (this
    launch's time since the writer was made, plus the last value the previous launches wrote).
    """

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: str) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._offset = last_run_seconds(self.path) if enabled else 0.0
        self._t0 = time.monotonic()
        self._f = None  # opened at the first line: a run refused before it writes no metrics.jsonl
        self._tb = None
        if enabled and tensorboard != "off":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard == "on":
                    raise ConfigError("train.tensorboard=on needs tensorboard: pip install 'mezo_elastic[tensorboard]'") from None
                return
            self._tb = SummaryWriter(str(Path(output_dir) / "tb"))

    def run_seconds(self) -> float:
        """Seconds of training over every launch of this run, up to now."""
        return self._offset + time.monotonic() - self._t0

    def write(self, kind: str, step: int, **values: float) -> None:
        """One line {"type": kind, "step": steps done, **values, "run_seconds": ..., "time": unix time}."""
        if not self.enabled:
            return
        values.setdefault("run_seconds", self.run_seconds())
        if self._f is None:
            self._f = open(self.path, "a")
        self._f.write(json.dumps({"type": kind, "step": step, **values, "time": time.time()}) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self._f:
            self._f.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A tqdm bar on a terminal; plain lines every `every` steps when output is a file or pipe."""

    def __init__(self, enabled: bool, start: int, total: int, every: int) -> None:
        self.enabled, self.every, self.total = enabled, every, total
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="mezo", dynamic_ncols=True, mininterval=0.5)

    def update(self, step: int, loss: float, steps_per_s: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss + 0.0:.4f}", steps_s=f"{steps_per_s:.2f}", tok_s=f"{tokens_per_s:.0f}", refresh=False)
            self.bar.update(1)
        elif (step + 1) % self.every == 0 or step + 1 == self.total:
            eta = (self.total - step - 1) / max(steps_per_s, 1e-9)
            print(f"step {step + 1}/{self.total} loss {loss + 0.0:.4f} {steps_per_s:.2f} steps/s "
                  f"{tokens_per_s:.0f} tok/s eta {eta:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
