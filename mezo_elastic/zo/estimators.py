"""Estimators (`mezo.estimator`): which points a step scores, and how their losses become the update.

Every estimator ends in the step log's one update form, over the step's n seeds z_k:
    theta <- (1 - lr wd) theta - lr / n * sum_k g_k z_k
so replay, resume and export read (seeds, grads, lr) and never need to know the estimator or the
rule that made the g_k: a step log replays exactly whatever code wrote it. What differs is g_k:

spsa (MeZO, the default): +eps z_k and -eps z_k for each of K seeds: 2K forwards.
    reward_shaping=none    g_k = (L+_k - L-_k) / (2 eps)               MeZO's projected gradient
    shaped, es (default)   g_k = (f+_k - f-_k) / 2                      ES at scale, see below
    shaped, per_eps        g_k = (f+_k - f-_k) / (2 eps)                the rule before issue 24
  ES at scale (Qiu et al. 2025) updates theta += alpha / N * sum_n R_n z_n over N members with
  normalised rewards R_n, sigma apart (the perturbation size never divides the step). Our antithetic
  pairs are N = 2K members with R = -f: -lr/K * sum_k (f+_k - f-_k)/2 z_k is exactly that with
  alpha = lr, so ES's published alpha, sigma (= eps) and N carry over. Dividing shaped values (of
  order 1) by 2 eps instead made the step ~1/eps larger than a MeZO step, and the runs collapsed.
fzoo (FZOO, arXiv 2506.09034): +eps z_1 .. +eps z_N, then theta itself: N + 1 forwards.
    g_n = (L_n - L_0) / std(L_1..L_N)          (population std; all g = 0 when the N losses are equal)
  as DKmiyan/FZOO's zo_step: projected_grad = (loss1s - loss) / (N * std), theta -= lr * sum g z.
es (ES at scale, one-sided): +eps z_1 .. +eps z_N: N forwards.
    g_n = f(L)_n                                f = mezo.reward_shaping (zscore or centered_rank)
gv (MeZO-GV, arXiv 2601.04710, stan-anony/MeZO-GV): two phases, M + 2 forwards.
    phase 1: +eps z_1 .. +eps z_M; the floor(a M) lowest losses are the elite (a = mezo.gv_elite)
    v = mean(elite z) - mean(other z) = sum_m c_m z_m
    phase 2: theta + eps v, theta - eps v;  g = (L+ - L-) / (2 eps);  theta -= lr g v
  In the step log's form: g_m = M g c_m (theta -= lr / M sum_m g_m z_m). With M = 2 and a = 0.5,
  v = z_best - z_worst, the direction of the authors' trainer.py.
zo_muon (ZO-Muon, arXiv 2602.17155): +eps P u_1 .. +eps P u_N (subspace points), then theta: N + 1 forwards.
    g_n = (L_n - L_0) / eps                     the step itself is zo/lowrank.py's (nonlinear in g)
mezo.grad_clip clips every g_k alike.
"""

from __future__ import annotations

import math
from typing import Sequence

from mezo_elastic.config import MezoConfig
from mezo_elastic.zo.shaping import shape, shaped_grads

ESTIMATORS = ("spsa", "fzoo", "es", "gv", "zo_muon")
# A point to score: (seed, sign, slot). seed None = theta itself; sign * eps is the perturbation size;
# slot = the loss's place in the vector the ranks reduce (kept as the code before estimators laid it out).
Point = tuple  # (int | None, float, int)


def forwards_per_step(cfg: MezoConfig) -> int:
    """Scoring passes over the batch a step makes (per data slot)."""
    k = cfg.perturbations
    return {"spsa": 2 * k, "fzoo": k + 1, "es": k, "gv": k + 2, "zo_muon": k + 1}[cfg.estimator]


def points(cfg: MezoConfig, seeds: Sequence[int]) -> list[Point]:
    """The points of one step in scoring order (gv: its first phase; guided_direction gives the second).
    The first is always (seeds[0], +1): the previous update can fold it in, so a step starts without a
    sweep."""
    if cfg.estimator == "spsa":
        k = len(seeds)
        return [p for i, s in enumerate(seeds) for p in ((s, 1.0, i), (s, -1.0, k + i))]
    pts = [(s, 1.0, i) for i, s in enumerate(seeds)]
    return pts + [(None, 0.0, len(seeds))] if cfg.estimator in ("fzoo", "zo_muon") else pts


def _clip(g: float, clip: float) -> float:
    return max(-clip, min(clip, g)) if clip > 0 and math.isfinite(g) else g


def guided_direction(cfg: MezoConfig, seeds: Sequence[int], losses: Sequence[float]) -> list[tuple[int, float]]:
    """gv's v = mean(elite z) - mean(other z) as (seed, c_m) from the first phase's M losses (reduced,
    so every rank gets the same v). Elite: the floor(gv_elite M) lowest losses, at least 1 and at most
    M - 1; ties keep the seed order (a stable sort), so v is a pure function of the losses."""
    m = len(seeds)
    n_top = min(m - 1, max(1, math.floor(cfg.gv_elite * m)))
    order = sorted(range(m), key=lambda i: losses[i])
    elite = set(order[:n_top])
    return [(s, 1.0 / n_top if i in elite else -1.0 / (m - n_top)) for i, s in enumerate(seeds)]


def coefficients(cfg: MezoConfig, rows: list[list[float]]) -> tuple[list[float], list[float], float]:
    """(g_k in the step log's seed order, every loss used, the step's train loss) from the reduced mean
    losses: one row in dp mode, one row per data slot in multi_seed mode (each in slot order)."""
    if cfg.estimator == "spsa":
        k = cfg.perturbations
        plus = [v for r in rows for v in r[:k]]
        minus = [v for r in rows for v in r[k : 2 * k]]
        grads = shaped_grads(plus, minus, cfg.reward_shaping, cfg.shaped_update, cfg.eps, cfg.grad_clip)
        return grads, plus + minus, (sum(plus) + sum(minus)) / (2 * len(plus))
    losses = list(rows[0])
    if cfg.estimator == "gv":  # losses = the M one-sided ones, then L(theta + eps v), L(theta - eps v)
        m = cfg.perturbations
        plus, minus = losses[m], losses[m + 1]
        g = _clip((plus - minus) / (2 * cfg.eps), cfg.grad_clip)
        direction = guided_direction(cfg, range(m), losses[:m])
        return [m * g * c for _, c in direction], losses, (plus + minus) / 2
    if cfg.estimator == "zo_muon":  # the authors' multiple_sample: (loss_perturbed - loss_baseline) / eps
        base = losses[-1]
        return [_clip((v - base) / cfg.eps, cfg.grad_clip) for v in losses[:-1]], losses, base
    if cfg.estimator == "fzoo":
        perturbed, base = losses[:-1], losses[-1]
        n = len(perturbed)
        mean = sum(perturbed) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in perturbed) / n)
        grads = [0.0 if std == 0 else _clip((v - base) / std, cfg.grad_clip) for v in perturbed]
        return grads, losses, base  # FZOO's reported loss: the unperturbed one
    grads = [_clip(f, cfg.grad_clip) for f in shape(losses, cfg.reward_shaping)]
    return grads, losses, sum(losses) / len(losses)
