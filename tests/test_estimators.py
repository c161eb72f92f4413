"""The estimators' coefficients (mezo.estimator) and the shaped update rule, against their sources' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from mezo_elastic.config import Config, MezoConfig
from mezo_elastic.errors import ConfigError
from mezo_elastic.training.resume import trajectory_diff
from mezo_elastic.zo import estimators
from mezo_elastic.zo.optimizer import MezoOptimizer, StepRecord, projected_grad
from mezo_elastic.zo.perturb import ParamSegment, z_range
from mezo_elastic.zo.shaping import shape, shaped_grads


def test_unshaped_spsa_is_mezo_bit_for_bit_and_shaped_steps_follow_es():
    plus, minus = [0.71, 0.2, 0.5], [0.7, 0.4, 0.1]
    for rule in ("es", "per_eps"):  # no shaping: the rule does not matter, MeZO's g exactly
        assert shaped_grads(plus, minus, "none", rule, 1e-3, 0.0) == [projected_grad(a, b, 1e-3, 0.0)
                                                                      for a, b in zip(plus, minus)]
    f = shape(plus + minus, "zscore")
    es = shaped_grads(plus, minus, "zscore", "es", 1e-3, 0.0)
    assert es == [(f[k] - f[3 + k]) / 2 for k in range(3)]
    assert shaped_grads(plus, minus, "zscore", "per_eps", 1e-3, 0.0) == pytest.approx([g / 1e-3 for g in es])
    # the step -lr/K sum_k g_k z_k is ES's alpha/N sum_n R_n z_n over the N = 2K members (R = -f, z_{-k} = -z_k)
    es_step = [-1e-3 / 3 * g for g in es]
    members = [(-f[k], 1.0) for k in range(3)], [(-f[3 + k], -1.0) for k in range(3)]
    want = [1e-3 / 6 * (members[0][k][0] * members[0][k][1] + members[1][k][0] * members[1][k][1]) for k in range(3)]
    assert es_step == pytest.approx(want, rel=1e-12)
    assert shaped_grads([1.0], [0.0], "none", "es", 0.5, 0.25) == [0.25]  # grad_clip


def test_fzoo_coefficients_are_dkmiyan_fzoo_zo_step():
    cfg = MezoConfig(estimator="fzoo", perturbations=4, distribution="rademacher")
    losses = [2.1, 1.9, 2.4, 2.0, 2.05]  # 4 perturbed, then theta's
    grads, used, loss = estimators.coefficients(cfg, [losses])
    loss1s = torch.tensor(losses[:4], dtype=torch.float64)
    ref = (loss1s - losses[4]) / (4 * torch.std(loss1s, unbiased=False))  # FZOO's projected_grad, with 1/N
    assert [-cfg.lr / 4 * g for g in grads] == pytest.approx((-cfg.lr * ref).tolist(), rel=1e-12)
    assert loss == 2.05 and used == losses and estimators.forwards_per_step(cfg) == 5
    assert estimators.coefficients(cfg, [[1.0] * 5])[0] == [0.0] * 4  # equal losses: no step
    pts = estimators.points(cfg, [11, 12, 13, 14])
    assert pts[0] == (11, 1.0, 0) and pts[-1] == (None, 0.0, 4) and len(pts) == 5


def test_one_sided_es_coefficients_and_spsa_points():
    cfg = MezoConfig(estimator="es", perturbations=3, reward_shaping="centered_rank")
    grads, _, loss = estimators.coefficients(cfg, [[0.3, 0.1, 0.2]])
    assert grads == [0.5, -0.5, 0.0] and loss == pytest.approx(0.2)
    spsa = MezoConfig(perturbations=2)
    assert estimators.points(spsa, [5, 6]) == [(5, 1.0, 0), (5, -1.0, 2), (6, 1.0, 1), (6, -1.0, 3)]
    assert estimators.forwards_per_step(spsa) == 4 and estimators.forwards_per_step(cfg) == 3


def _authors_gv_step(theta, loss, seeds, name, lr, eps):
    """stan-anony/MeZO-GV trainer.py's zo_step for M = 2 in float64, z from our generator: score the two
    candidates at theta + eps z, v = z_best - z_worst, then theta +- eps v, g = (L1 - L2) / (2 eps),
    theta -= lr g v."""
    z = [z_range(s, name, 0, theta.numel()).double() for s in seeds]
    fit = [loss(theta + eps * zi) for zi in z]
    best, worst = (0, 1) if fit[0] <= fit[1] else (1, 0)
    v = z[best] - z[worst]
    g = (loss(theta + eps * v) - loss(theta - eps * v)) / (2 * eps)
    return theta - lr * g * v


def test_gv_is_the_authors_step_and_ranks_its_candidates():
    cfg = MezoConfig(estimator="gv", perturbations=2, lr=1e-3, eps=1e-2)
    target = torch.linspace(-1, 1, 64, dtype=torch.float64)
    def loss(w):
        return float(((w.double() - target) ** 2).sum())
    theta0 = torch.zeros(64, dtype=torch.float64)
    seg = ParamSegment(torch.zeros(64), "w")
    opt = MezoOptimizer([seg], cfg, master_weights=True)
    seeds = [101, 202]
    # the trainer's step: phase 1 at +eps z_m, the guiding vector from its losses, phase 2 at +-eps v
    phase1 = []
    for s in seeds:
        opt.perturb(s, 1.0)
        phase1.append(loss(seg.tensor))
    v = estimators.guided_direction(cfg, seeds, phase1)
    phase2 = []
    for sign in (1.0, -1.0):
        opt.show(v, sign)
        phase2.append(loss(seg.tensor))
    grads, used, reported = estimators.coefficients(cfg, [phase1 + phase2])
    opt.update(StepRecord(step=0, seeds=seeds, grads=grads, lr=cfg.lr, weight_decay=0.0), None)
    want = _authors_gv_step(theta0, loss, seeds, "w", cfg.lr, cfg.eps)
    assert torch.allclose(seg.master.double(), want, atol=1e-6), (seg.master.double() - want).abs().max()
    assert loss(seg.tensor) < loss(theta0)  # the quadratic went down
    assert used == phase1 + phase2 and reported == pytest.approx(sum(phase2) / 2)
    assert estimators.forwards_per_step(cfg) == 4 and estimators.points(cfg, seeds) == [(101, 1.0, 0), (202, 1.0, 1)]
    # M = 5, elite 0.4: the 2 lowest losses get +1/2, the other 3 -1/3; ties keep the seed order
    five = MezoConfig(estimator="gv", perturbations=5, gv_elite=0.4)
    assert estimators.guided_direction(five, [1, 2, 3, 4, 5], [0.5, 0.1, 0.9, 0.1, 0.7]) == [
        (1, -1 / 3), (2, 0.5), (3, -1 / 3), (4, 0.5), (5, -1 / 3)]
    # the elite never takes every candidate, nor none
    assert [c > 0 for _, c in estimators.guided_direction(MezoConfig(estimator="gv", perturbations=2, gv_elite=0.9),
                                                          [1, 2], [0.2, 0.1])] == [False, True]


@pytest.mark.parametrize("kw, why", [
    (dict(estimator="fzoo", perturbations=1), r"needs mezo.perturbations >= 2 \(got 1\).*try FZOO's "
                                              r"--mezo.perturbations=8 --mezo.distribution=rademacher"),
    (dict(estimator="es", perturbations=4, reward_shaping="none"), "needs mezo.reward_shaping=zscore or centered_rank"),
    (dict(estimator="fzoo", perturbations=4, reward_shaping="zscore"), "set mezo.reward_shaping=none"),
    (dict(estimator="fzoo", perturbations=2, mode="multi_seed"), "needs mezo.mode=dp"),
    (dict(estimator="fzoo", mode="multi_seed"), "needs mezo.mode=dp"),
    (dict(estimator="adam"), "mezo.estimator='adam' is not allowed"),
    (dict(estimator="gv", perturbations=2, reward_shaping="zscore"), "set mezo.reward_shaping=none"),
    (dict(estimator="gv", perturbations=2, gv_elite=1.0), "mezo.gv_elite=1.0 must be in"),
    (dict(estimator="gv", perturbations=1), "needs mezo.perturbations >= 2.*try MeZO-GV's --mezo.perturbations=2"),
])
def test_bad_estimator_settings_are_refused_in_one_line(kw, why):
    with pytest.raises(ConfigError, match=why):
        MezoConfig(**kw)


def test_a_run_json_from_before_the_es_rule_keeps_its_rule():
    old = {"mezo.reward_shaping": "zscore", "mezo.perturbations": 2, "mezo.lr": 1e-6}  # no shaped_update nor estimator
    cfg = Config(mezo=MezoConfig(reward_shaping="zscore", perturbations=2))
    diff = trajectory_diff(old, cfg)
    # lr left out: ES's rule's default now (ES's alpha at N = 4), not the 1e-6 the run was made with; both named
    assert diff == [f"mezo.lr: 1e-06 -> {5e-4 * math.sqrt(4 / 30)!r} (the run was made with it: set --mezo.lr=1e-06 "
                    f"to continue it)",
                    "mezo.shaped_update: 'per_eps' -> 'es' (the run was made with it: set "
                    "--mezo.shaped_update=per_eps to continue it)"]
    # the old rule's lr left out is the old default: --mezo.shaped_update=per_eps alone continues it
    cont = Config(mezo=MezoConfig(reward_shaping="zscore", perturbations=2, shaped_update="per_eps"))
    assert trajectory_diff(old, cont) == []
    assert trajectory_diff({}, Config()) == []  # an unshaped old run: either rule is its rule
    assert math.isfinite(estimators.coefficients(MezoConfig(), [[1.0, 0.5]])[0][0])
