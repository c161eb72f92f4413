"""zo_muon (zo/lowrank.py): ZO-Muon's points and step against the authors' LowDimTrainer (multiple_sample, muon),
replay giving the live step's weights bit for bit, the subspace's redraw, and the refusals."""

from __future__ import annotations

import pytest
import torch

from mezo_elastic.config import Config, MezoConfig, ModelConfig, PeftConfig
from mezo_elastic.errors import ConfigError
from mezo_elastic.zo import estimators
from mezo_elastic.zo.factory import make_optimizer
from mezo_elastic.zo.lowrank import LowRankOptimizer, newton_schulz5, orthonormal_p
from mezo_elastic.zo.optimizer import StepRecord
from mezo_elastic.zo.perturb import ParamSegment, z_range

CFG = MezoConfig(estimator="zo_muon", perturbations=3, lr=1e-2, eps=1e-3, zo_muon_rank=2, zo_muon_interval=2)
TARGET_W = torch.linspace(-1, 1, 48, dtype=torch.float64).view(8, 6)
TARGET_B = torch.linspace(0, 1, 6, dtype=torch.float64)


def _model():
    w, b = torch.zeros(8, 6), torch.zeros(6)
    segs = [ParamSegment(w.view(-1), "w", shape=(8, 6)), ParamSegment(b.view(-1), "b", decay=False, shape=(6,))]
    return w, b, segs


def _loss(w, b) -> float:
    return float(((w.double() - TARGET_W) ** 2).sum() + ((b.double() - TARGET_B) ** 2).sum())


def _live_step(opt, w, b, step, seeds):
    """What Trainer.step does with zo_muon's points: N subspace points, then theta; then the update."""
    opt.at_step(step)
    losses = []
    for seed, sign, _ in estimators.points(CFG, seeds):
        opt.clean() if seed is None else opt.perturb(seed, sign)
        losses.append(_loss(w, b))
    grads, _, _ = estimators.coefficients(CFG, [losses])
    rec = StepRecord(step=step, seeds=list(seeds), grads=grads, lr=CFG.lr, weight_decay=0.0)
    opt.update(rec)
    return rec, losses


def _authors_step(w0, b0, step, seeds, p_seed_of):
    """LowDimTrainer.lowdim_zo_step (multiple_sample) + lowdim_zo_update (muon) in float64, with our P and u."""
    p = orthonormal_p(p_seed_of(step), "w", 8, 2)
    us = [z_range(s, "w|u", 0, 12).double().view(2, 6) for s in seeds]
    zs = [z_range(s, "b", 0, 6).double() for s in seeds]
    base = _loss(w0, b0)
    g = [(_loss(w0 + CFG.eps * (p @ u), b0 + CFG.eps * z) - base) / CFG.eps for u, z in zip(us, zs)]
    rge = sum(gi * u for gi, u in zip(g, us)) / len(seeds)
    w1 = w0 - CFG.lr * (p @ newton_schulz5(rge))
    b1 = b0 - CFG.zo_muon_vector_lr * sum(gi * z for gi, z in zip(g, zs)) / len(seeds)
    return w1, b1


def test_zo_muon_step_is_the_authors_and_replays_bit_for_bit():
    from mezo_elastic.zo.lowrank import P_SLOT
    from mezo_elastic.zo.perturb import step_seed

    w, b, segs = _model()
    opt = make_optimizer(segs, CFG, True, run_seed=7)
    assert isinstance(opt, LowRankOptimizer) and estimators.forwards_per_step(CFG) == 4
    recs, w_ref, b_ref = [], w.double().clone(), b.double().clone()
    for step in range(5):
        seeds = [1000 * step + k for k in range(3)]
        rec, _ = _live_step(opt, w, b, step, seeds)
        recs.append(rec)
        w_ref, b_ref = _authors_step(w_ref, b_ref, step, seeds, lambda t: step_seed(7, t // 2, P_SLOT))
        assert torch.allclose(segs[0].master.double().view(8, 6), w_ref, atol=1e-6)
        assert torch.allclose(segs[1].master.double(), b_ref, atol=1e-9)
        assert torch.equal(w, segs[0].master.view(8, 6))  # the weights show theta after a step
    assert _loss(w, b) < _loss(torch.zeros(8, 6), torch.zeros(6))  # the quadratic went down
    # a replay of the log, without a forward, lands on the same bits
    w2, b2, segs2 = _model()
    again = make_optimizer(segs2, CFG, True, run_seed=7)
    for rec in recs:
        again.replay(rec)
    assert torch.equal(w2, w) and torch.equal(b2, b)


def test_the_subspace_is_orthonormal_redrawn_by_interval_and_rank_capped():
    p = orthonormal_p(3, "w", 8, 2)
    assert torch.allclose(p.T @ p, torch.eye(2, dtype=torch.float64), atol=1e-12)
    w, b, segs = _model()
    opt = LowRankOptimizer(segs, CFG, run_seed=1)
    opt.at_step(0)
    p0 = opt._p["w"][0].clone()
    opt.at_step(1)
    assert torch.equal(opt._p["w"][0], p0)  # interval 2: the same subspace
    opt.at_step(2)
    assert not torch.equal(opt._p["w"][0], p0)
    wide = LowRankOptimizer([ParamSegment(torch.zeros(12), "v", shape=(3, 4))],
                            MezoConfig(estimator="zo_muon", zo_muon_rank=64), run_seed=1)
    wide.at_step(0)
    assert wide._p["v"][0].shape == (3, 3)  # r capped at m


def test_newton_schulz_orthogonalises():
    g = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(newton_schulz5(g))
    assert float(s.min()) > 0.5 and float(s.max()) < 1.5  # Muon's NS5 lands the singular values near 1


@pytest.mark.parametrize("kw, why", [
    (dict(mezo=MezoConfig(estimator="zo_muon"), model=ModelConfig(backend="sglang")), "model.backend=hf without"),
    (dict(mezo=MezoConfig(estimator="zo_muon"), peft=PeftConfig(method="lora")), "without a LoRA adapter"),
])
def test_zo_muon_refuses_what_it_cannot_run_on(kw, why):
    with pytest.raises(ConfigError, match=why):
        Config(**kw)


def test_zo_muon_refuses_shaping_and_master_off():
    with pytest.raises(ConfigError, match="set mezo.reward_shaping=none and mezo.master_weights"):
        MezoConfig(estimator="zo_muon", master_weights="off")
    with pytest.raises(ConfigError, match="mezo.zo_muon_rank=0"):
        MezoConfig(estimator="zo_muon", zo_muon_rank=0)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher", "rademacher32"])
def test_one_generation_for_all_tensors_is_z_range_bit_for_bit(dist):
    from mezo_elastic.zo.cpu_sweep import z_many

    pieces = [(11, "a|u", 13), (11, "b", 1), (12, "c", 64), (11, "d|u", 7)]
    buf, got = z_many(pieces, dist, "cpu")
    assert all(g.data_ptr() == buf.data_ptr() + 4 * g.storage_offset() for g in got)  # views of the one buffer
    for native_ok in (None, False):  # the compiled Philox where it loads, and torch's ops: the same bits
        want = [z_range(s, n, 0, c, "cpu", dist, native_ok=native_ok) for s, n, c in pieces]
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    w, b, segs = _model()
    opt = LowRankOptimizer(segs, MezoConfig(estimator="zo_muon", zo_muon_rank=2, distribution=dist), run_seed=1)
    opt.at_step(0)
    _, drawn = opt._draw(5)
    assert torch.equal(drawn["w"], z_range(5, "w|u", 0, 12, "cpu", dist).view(2, 6))
    assert torch.equal(drawn["b"], z_range(5, "b", 0, 6, "cpu", dist))
