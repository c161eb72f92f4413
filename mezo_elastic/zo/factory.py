"""The optimizer a run's estimator needs: MezoOptimizer, or ZO-Muon's subspace optimizer."""

from __future__ import annotations

from mezo_elastic.config import MezoConfig
from mezo_elastic.zo.lowrank import LowRankOptimizer
from mezo_elastic.zo.optimizer import MezoOptimizer
from mezo_elastic.zo.perturb import ParamSegment


def make_optimizer(segments: list[ParamSegment], cfg: MezoConfig, master_weights: bool, run_seed: int):
    """MezoOptimizer (seeded elementwise z, the fused sweep) for every estimator but zo_muon, which gets
    zo/lowrank.py's LowRankOptimizer (master weights always; P drawn from `run_seed`)."""
    if cfg.estimator == "zo_muon":
        return LowRankOptimizer(segments, cfg, run_seed)
    return MezoOptimizer(segments, cfg, master_weights)
