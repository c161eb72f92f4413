"""Reward shaping across a population: a map f of the step's 2K losses, and the step it makes.

For seeds k = 1..K with losses L+_k (at theta + eps z_k) and L-_k (at theta - eps z_k), the update is
theta <- theta - lr / K * sum_k g_k z_k with
    none                   g_k = (L+_k - L-_k) / (2 eps)          MeZO's projected gradient
    shaped, mezo.shaped_update=es (default)
                           g_k = (f+_k - f-_k) / 2                ES at scale's alpha/N sum R_n z_n, N = 2K
    shaped, per_eps        g_k = (f+_k - f-_k) / (2 eps)          the rule before issue 24 (old runs)
Shaped values are of order 1 whatever the reward's scale, so dividing them by 2 eps made a step about
1/eps larger than a MeZO step (lr 1e-5, eps 1e-3: the reward collapsed to 0 in 300 steps). ES at scale
(Qiu et al. 2025, VsonicV/es-fine-tuning-paper) keeps sigma out of the step: theta += alpha/N sum_n
R_n z_n with R_n z-scored over the N members; our antithetic pairs are N = 2K members with R = -f,
so lr = alpha, eps = sigma and K = N/2 take ES's published values as they are.
The maps f:
    none           f(L) = L (MeZO; K = 1 is today's step)
    zscore         f(L) = (L - mean(L)) / std(L) over all 2K values (std with 1/n); 0 when all are equal
    centered_rank  f(L) = rank(L) / (2K - 1) - 1/2, ties sharing their mean rank (OpenAI-ES's fitness shaping)
Shaping is invariant to any increasing transform of the reward (centered_rank) or to its scale and
offset (zscore), so one lr works across reward functions; it computes on values every rank holds
after the all-reduce, so every rank gets the same g_k. (ES's code divides by std + 1e-8; here a
population of equal values gives f = 0, the same step to within 1e-8.)
"""

from __future__ import annotations

import math
from typing import Sequence

METHODS = ("none", "zscore", "centered_rank")
SHAPED_UPDATES = ("es", "per_eps")


def _ranks(values: Sequence[float]) -> list[float]:
    """0-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def shape(values: Sequence[float], method: str) -> list[float]:
    """f(values) for one of METHODS (see the module docstring); non-finite inputs pass through as NaN."""
    vals = list(values)
    if method == "none" or not all(math.isfinite(v) for v in vals):
        return vals if method == "none" else [float("nan")] * len(vals)
    n = len(vals)
    if method == "zscore":
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / n)
        return [0.0] * n if std == 0 else [(v - mean) / std for v in vals]
    if method == "centered_rank":
        return [r / (n - 1) - 0.5 for r in _ranks(vals)] if n > 1 else [0.0]
    raise ValueError(f"unknown reward shaping {method!r}; choose one of {list(METHODS)}")


def shaped_pairs(plus: Sequence[float], minus: Sequence[float], method: str) -> tuple[list[float], list[float]]:
    """(f+_k, f-_k) of the population: f applied to the 2K values together."""
    f = shape(list(plus) + list(minus), method)
    return f[: len(plus)], f[len(plus):]


def shaped_grads(plus: Sequence[float], minus: Sequence[float], method: str, rule: str, eps: float,
                 clip: float) -> list[float]:
    """g_k of K antithetic pairs (see the module docstring), each clipped to [-clip, clip] when clip > 0.

    rule: 'es' or 'per_eps' (mezo.shaped_update); it only matters when `method` is not 'none'.
    """
    fp, fm = shaped_pairs(plus, minus, method)
    div = 2.0 if method != "none" and rule == "es" else 2.0 * eps
    grads = [(a - b) / div for a, b in zip(fp, fm)]
    return [max(-clip, min(clip, g)) if clip > 0 and math.isfinite(g) else g for g in grads]
