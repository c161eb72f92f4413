"""The time-to-accuracy rule on eval curves: pure functions, no model (tests/test_tta_rule.py).

A curve is a list of eval points {"step", "seconds", "forwards", "metric"}, step 0 (zero-shot) first,
evals spaced equally in forward passes across methods.

    smoothed[i]   mean of the last min(W, i + 1) raw evals up to i (step 0 included);
                  a crossing counts only from i = W - 1 on, where the window is full
    zero_shot     median over the reference's seeds of its step-0 eval
    ref_final     median over the reference's seeds of the mean of its last W evals
    target        zero_shot + F * (ref_final - zero_shot)
    time to target: seconds (and forwards, steps) of the first eval i >= W - 1 whose smoothed
                  metric is at or past the target (>=; <= for a loss); never = not reached
    no verdict    where the reference's gain (ref_final - zero_shot, sign-aware) is below min_gain
    metric at the reference's wall-clock: the smoothed metric at the last eval at or before the
                  reference's median total training seconds
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

INF = float("inf")
TOL = 1e-12  # a metric equal to the target (up to float rounding) reaches it


@dataclass(frozen=True)
class Rule:
    """The target rule's knobs (bench flags --window, --fraction, --min-gain; higher from --metric)."""

    window: int = 3  # W: evals averaged by the smoothing
    fraction: float = 0.8  # F: how far from zero-shot to the reference's final smoothed metric
    min_gain: float = 0.10  # below this reference gain the task did not learn: no verdict
    higher: bool = True  # accuracy / reward: higher is better; loss: lower

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window={self.window}: it must be >= 1")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction={self.fraction}: it must be in (0, 1]")

    def at_or_past(self, value: float, target: float) -> bool:
        return value >= target - TOL if self.higher else value <= target + TOL


def metrics(curve: list[dict]) -> list[float]:
    return [p["metric"] for p in curve]


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing mean of the last min(window, i + 1) values at each i."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def final_smoothed(curve: list[dict], window: int) -> float:
    """Mean of the curve's last `window` evals (all of them where it has fewer)."""
    return smoothed(metrics(curve), window)[-1]


def target(ref_curves: list[list[dict]], rule: Rule) -> dict:
    """zero_shot, ref_final, gain (sign-aware: > 0 is learning), target and learned, from the reference's
    curves (one a seed)."""
    if not ref_curves:
        raise ValueError("no reference curves: the target needs at least one finished reference run")
    zero = statistics.median(c[0]["metric"] for c in ref_curves)
    final = statistics.median(final_smoothed(c, rule.window) for c in ref_curves)
    gain = (final - zero) if rule.higher else (zero - final)
    return {"zero_shot": zero, "ref_final": final, "gain": gain, "target": zero + rule.fraction * (final - zero),
            "learned": gain >= rule.min_gain - TOL}


def hit(curve: list[dict], tgt: float, rule: Rule) -> int | None:
    """Index of the first eval i >= W - 1 whose smoothed metric is at or past `tgt`; None if none is."""
    sm = smoothed(metrics(curve), rule.window)
    for i in range(rule.window - 1, len(curve)):
        if rule.at_or_past(sm[i], tgt):
            return i
    return None


def fell_back(curve: list[dict], tgt: float, rule: Rule, zero_shot: float) -> dict | None:
    """A run that reached the target and whose last smoothed metric is back short of it by more than a
    quarter of the way from zero-shot to the target (past its best it diverged, or the lr is too large for the
    steps it ran; a smaller dip is eval noise): {"best", "best_step", "last", "last_step"} of the smoothed
    curve; None for a run that did not reach the target or still holds it."""
    if hit(curve, tgt, rule) is None:
        return None
    sm = smoothed(metrics(curve), rule.window)
    if rule.at_or_past(sm[-1], tgt - (tgt - zero_shot) / 4):
        return None
    tail = range(rule.window - 1, len(curve))
    j = max(tail, key=lambda i: sm[i]) if rule.higher else min(tail, key=lambda i: sm[i])
    return {"best": sm[j], "best_step": curve[j]["step"], "last": sm[-1], "last_step": curve[-1]["step"]}


def time_to_target(curve: list[dict], tgt: float, rule: Rule) -> dict:
    """{"step", "seconds", "forwards"} at the first smoothed crossing; inf for each when never reached."""
    i = hit(curve, tgt, rule)
    if i is None:
        return {"step": INF, "seconds": INF, "forwards": INF}
    return {k: curve[i][k] for k in ("step", "seconds", "forwards")}


def metric_at_seconds(curve: list[dict], seconds: float, window: int) -> float:
    """Smoothed metric at the last eval at or before `seconds` of training (step 0's when none later is)."""
    sm = smoothed(metrics(curve), window)
    i = max(j for j, p in enumerate(curve) if p["seconds"] <= seconds + TOL or j == 0)
    return sm[i]


def should_stop(curve: list[dict], tgt: float, rule: Rule, ref_seconds: float) -> bool:
    """--stop-at-target: the run may end once its smoothed curve has reached the target and W more evals
    are in (the curve past the crossing is shown), and its training seconds have passed the reference's
    median total (so its metric at the reference's wall-clock is observed, not cut off)."""
    i = hit(curve, tgt, rule)
    return i is not None and len(curve) - 1 - i >= rule.window and curve[-1]["seconds"] >= ref_seconds


def stop_covers(stop_target: float | None, tgt: float, rule: Rule) -> bool:
    """Whether a run that --stop-at-target ended under `stop_target` (the target of the reference seeds done
    then) still shows its crossing of `tgt` (the target now): yes when tgt is no further than stop_target, since a
    smoothed curve passes a nearer bar no later than a further one; a run that never stopped covers any."""
    return stop_target is None or rule.at_or_past(stop_target, tgt)


def paired_speedups(ref: dict[int, float], other: dict[int, float]) -> list[float]:
    """Per seed that both ran, the reference's seconds to the target over the other's (seed -> seconds, inf
    = never reached): inf where only the reference never reached, 0 where only the other never did; a seed
    neither reached is left out. Each seed's pair from one machine compares even where seeds ran on several."""
    out = []
    for seed in sorted(ref.keys() & other.keys()):
        r, o = ref[seed], other[seed]
        if r == INF and o == INF:
            continue
        out.append(INF if r == INF else 0.0 if o == INF else r / o)
    return out


def spread(values: list[float]) -> dict:
    """Median, min and max (inf counts as larger than any number: a seed that never reached)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def eval_stderr(p: float, n: int) -> float | None:
    """Standard error of one eval's mean of n values in [0, 1] with mean p: sqrt(p (1 - p) / n), exact for
    0/1 values (accuracy, exact match), an upper bound for others; None outside [0, 1] or n = 0."""
    if n <= 0 or not -TOL <= p <= 1 + TOL:
        return None
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(p * (1 - p) / n)


def summarise(curves: list[list[dict]], tgt: dict, rule: Rule, ref_seconds: float) -> dict:
    """One method's seeds against the target: hits, seeds reaching, medians and spreads, metric at the
    reference's median wall-clock."""
    hits = [time_to_target(c, tgt["target"], rule) for c in curves]
    return {
        "reached": sum(h["seconds"] < INF for h in hits),
        "seeds": len(curves),
        "seconds": spread([h["seconds"] for h in hits]),
        "forwards": spread([h["forwards"] for h in hits]),
        "steps": spread([h["step"] for h in hits]),
        "final_smoothed": statistics.median(final_smoothed(c, rule.window) for c in curves),
        "metric_at_ref_seconds": statistics.median(metric_at_seconds(c, ref_seconds, rule.window) for c in curves),
        # Runs whose training ended before the reference's wall-clock (a --budget below the reference's seconds):
        # their "metric at the reference's wall-clock" is their last smoothed metric, a lower bound if it still rose.
        "ended_before_ref_seconds": sum(c[-1]["seconds"] < ref_seconds - TOL for c in curves),
        "hits": hits,
    }


def speedup(ref: float, ours: float) -> float | None:
    """ref / ours where both are finite and positive; None otherwise (either side never reached)."""
    return ref / ours if 0 < ref < INF and 0 < ours < INF else None


def peak_memory(curve: list[dict]) -> tuple[float, float] | None:
    """(the run's peak GiB, that peak over its forward-only memory) from a curve's memory keys (CUDA runs):
    forward-only = the step-0 eval's peak (the engine, its graphs and an eval's forwards, before any training
    step) less the fp32 master copy, which is training state; None where the curve has no memory keys."""
    if not curve or "gpu_peak_gib" not in curve[0]:
        return None
    peak = max(p.get("gpu_peak_gib", 0.0) for p in curve)
    forward_only = curve[0]["gpu_peak_gib"] - curve[0].get("master_gib", 0.0)
    return peak, peak / forward_only
