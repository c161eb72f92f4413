"""The estimators' coefficients (mezo.estimator) and the shaped update rule, against their sources' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from mezo_elastic.config import Config, MezoConfig
from mezo_elastic.errors import ConfigError
from mezo_elastic.training.resume import trajectory_diff
from mezo_elastic.zo import estimators
from mezo_elastic.zo.optimizer import projected_grad
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


@pytest.mark.parametrize("kw, why", [
    (dict(estimator="fzoo"), "needs mezo.perturbations >= 2"),
    (dict(estimator="es", perturbations=4), "needs mezo.reward_shaping=zscore or centered_rank"),
    (dict(estimator="fzoo", perturbations=4, reward_shaping="zscore"), "set mezo.reward_shaping=none"),
    (dict(estimator="fzoo", perturbations=2, mode="multi_seed"), "needs mezo.mode=dp"),
    (dict(estimator="adam"), "mezo.estimator='adam' is not allowed"),
])
def test_bad_estimator_settings_are_refused_in_one_line(kw, why):
    with pytest.raises(ConfigError, match=why):
        MezoConfig(**kw)


def test_a_run_json_from_before_the_es_rule_keeps_its_rule():
    old = {"mezo.reward_shaping": "zscore", "mezo.perturbations": 2}  # no shaped_update, no estimator
    cfg = Config(mezo=MezoConfig(reward_shaping="zscore", perturbations=2))
    diff = trajectory_diff(old, cfg)
    assert diff == ["mezo.shaped_update: 'per_eps' -> 'es' (the run was made with it: set "
                    "--mezo.shaped_update=per_eps to continue it)"]
    cont = Config(mezo=MezoConfig(reward_shaping="zscore", perturbations=2, shaped_update="per_eps"))
    assert trajectory_diff(old, cont) == []
    assert trajectory_diff({}, Config()) == []  # an unshaped old run: either rule is its rule
    assert math.isfinite(estimators.coefficients(MezoConfig(), [[1.0, 0.5]])[0][0])
