"""The MeZO optimizer: seeded in-place perturbation, projected gradient, update. No engine imports.

Sweeps a step (one sweep = one pass over the trainable weights, see perturb.sweep):
  start   weights = theta + eps z_t       (folded into the previous step's last sweep)
  score   l+
  sweep   -2 eps z_t                      -> weights = theta - eps z_t
  score   l-
  reduce  g = (L+ - L-) / (2 eps)
  sweep   restore + update (+ next perturbation eps z_{t+1})
So 2 sweeps a step; 3 when the next step starts from clean weights (after eval or checkpoint).
With master weights the fp32 master is updated exactly as a replay of the step log does it,
and the model only ever shows master + offset, so perturbation leaves no drift at all.
Without, a replay re-runs the step's sweeps (no forwards), so resume is still bit-exact.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from mezo_elastic.config import MezoConfig
from mezo_elastic.zo.perturb import ParamSegment, SweepPlan, Term, step_seed, sweep


@dataclass
class StepRecord:
    """What the update of one step needs, and all a replay needs (one line of the step log)."""

    step: int
    seeds: list[int]
    grads: list[float]
    lr: float
    weight_decay: float
    skipped: bool = False
    loss: float = float("nan")
    next_seed: int | None = None  # the next step's perturbation folded into this update (None: clean after)
    extra: dict = field(default_factory=dict)

    def update_terms(self) -> list[Term]:
        """The update -lr/n * sum_r g_r z_r as (seed, coefficient) terms (n-SPSA average)."""
        if self.skipped:
            return []
        n = len(self.seeds)
        return [(s, -self.lr * g / n) for s, g in zip(self.seeds, self.grads)]

    @property
    def decay(self) -> float:
        return 0.0 if self.skipped else self.lr * self.weight_decay


def lr_at(cfg: MezoConfig, step: int, total: int) -> float:
    """Learning rate of `step`: linear warmup, then constant / linear / cosine to lr * min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (cfg.lr - floor) * (1.0 - frac)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def use_master_weights(cfg: MezoConfig, dtype: str, adapter: bool = False) -> bool:
    """Whether to keep an fp32 master copy: asked for, or auto with a 16-bit dtype, or multi_seed
    (each rank shows its own perturbation, so only a master keeps the ranks' weights bit-identical),
    or a population (replaying K seeds' perturb sweeps in place would be K times the work).
    auto is on for a LoRA adapter (`adapter`) in any dtype: its copy is small, and with it the
    trajectory does not depend on where a run was stopped (a stop ends on a restore, not a fold: one
    rounding apart, which later steps amplify; docs/lora.md has the numbers)."""
    if cfg.mode == "multi_seed" or cfg.master_weights == "on" or cfg.perturbations > 1:
        return True
    return cfg.master_weights == "auto" and (adapter or dtype in ("bfloat16", "float16"))


def seeds_for_step(run_seed: int, step: int, mode: str, world: int, perturbations: int = 1) -> list[int]:
    """Perturbation seeds of a step: K in dp mode (slots 0..K-1), K per data slot in multi_seed mode
    (slot r*K + k for slot r's k-th seed); K = 1 gives MeZO's one seed (dp) or one per slot (n-SPSA)."""
    n = perturbations if mode == "dp" else world * perturbations
    return [step_seed(run_seed, step, slot) for slot in range(n)]


# Seeds one sweep regenerates (kernels.MAX_SEEDS: the fused kernel's limit). A population update
# with more terms is applied as consecutive sweeps on the master, the same split live and in replay.
SEEDS_PER_SWEEP = 4


class MezoOptimizer:
    """Holds the weights' current offset from theta and applies sweeps that move it.

    With master weights every sweep writes weights = cast(master + shown offset), so clean weights
    are already the master cast to the model dtype: saving or exporting needs no extra copy.
    """

    def __init__(self, segments: list[ParamSegment], cfg: MezoConfig, master_weights: bool) -> None:
        self.segments, self.cfg = segments, cfg
        self.master = master_weights
        self.folds_next = True  # update() can show the next step's first point in the same sweep
        if master_weights:
            for seg in segments:
                seg.master = seg.tensor.detach().to(torch.float32, copy=True)
        self.offset: list[Term] = []  # weights = theta + sum(offset)

    def _sweep(self, plan: SweepPlan) -> None:
        plan.dist = self.cfg.distribution  # every sweep of a run draws z from the run's distribution
        plan.show_on_grid = self.cfg.perturb_about == "weights"
        sweep(self.segments, plan, self.cfg.chunk_elems)

    def _move(self, new_offset: list[Term]) -> None:
        """Change the shown offset from self.offset to new_offset in one sweep."""
        if self.master:
            self._sweep(SweepPlan(show=new_offset))
        else:
            delta = [(s, -c) for s, c in self.offset] + list(new_offset)
            self._sweep(SweepPlan(post=delta))
        self.offset = list(new_offset)

    def at_step(self, step: int) -> None:
        """The step whose points come next: nothing to do here (z depends on its seed alone); the
        zo_muon optimizer (zo/lowrank.py) draws its subspace by the step."""

    def perturb(self, seed: int, scale: float = 1.0) -> None:
        """Show theta + scale * eps * z(seed) (one sweep; none if already there)."""
        target = [(seed, scale * self.cfg.eps)]
        if self.offset != target:
            self._move(target)

    def show(self, direction: list[Term], scale: float = 1.0) -> None:
        """Show theta + scale * eps * sum_m c_m z(seed_m) for direction [(seed_m, c_m)] (one sweep;
        none if already there): gv's points along its guiding vector."""
        target = [(s, scale * self.cfg.eps * c) for s, c in direction]
        if self.offset != target:
            self._move(target)

    def clean(self) -> None:
        """Show theta exactly as far as the precision allows (one sweep; none if already clean)."""
        if self.offset:
            self._move([])

    @contextlib.contextmanager
    def clean_weights(self):
        """Within the block the weights are theta; the previous offset comes back after it."""
        saved = list(self.offset)
        self.clean()
        try:
            yield
        finally:
            if saved:
                self._move(saved)

    def _master_update(self, terms: list[Term], decay: float, show: list[Term]) -> None:
        """master <- (1 - decay) master + sum(terms), weights <- master + show: one sweep, or one per
        SEEDS_PER_SWEEP seeds of a population (decay in the first, show in the last)."""
        n = SEEDS_PER_SWEEP
        if len(terms) + len(show) <= n:
            self._sweep(SweepPlan(post=terms, decay=decay, show=show))
            return
        groups = [terms[i : i + n] for i in range(0, len(terms), n)]
        for i, group in enumerate(groups):
            last = i == len(groups) - 1
            if last and len(group) + len(show) > n:
                self._sweep(SweepPlan(post=group, decay=decay if i == 0 else 0.0))
                self._sweep(SweepPlan(show=show))
                return
            self._sweep(SweepPlan(post=group, decay=decay if i == 0 else 0.0, show=show if last else []))

    def update(self, rec: StepRecord, next_seed: int | None) -> None:
        """Restore, apply the step's update and (if next_seed) perturb for the next step: one sweep
        (more for a population of over SEEDS_PER_SWEEP seeds, see _master_update)."""
        show = [(next_seed, self.cfg.eps)] if next_seed is not None else []
        if self.master:
            self._master_update(rec.update_terms(), rec.decay, show)
        else:
            restore = [(s, -c) for s, c in self.offset]
            self._sweep(SweepPlan(pre=restore, post=rec.update_terms() + show, decay=rec.decay))
        self.offset = show

    def replay(self, rec: StepRecord) -> None:
        """Apply a logged step without any forward, bit-exactly as the live run did.

        With master weights: one sweep on the master (the shown offset never touches it).
        Without: the step's own sweeps (flip to -eps z, restore + update + fold), because in place
        the rounding of those sweeps is part of the trajectory; two sweeps, still no forward.
        """
        if self.master:
            if not rec.skipped:
                self._master_update(rec.update_terms(), rec.decay, [])
            return
        if len(rec.seeds) != 1:
            raise ValueError(f"step {rec.step}: {len(rec.seeds)} seeds need master weights to replay")
        self.perturb(rec.seeds[0], +1.0)  # no sweep when the previous step folded it in
        self.perturb(rec.seeds[0], -1.0)
        self.update(rec, rec.next_seed)

    def load_master(self, state: dict[str, torch.Tensor]) -> None:
        """Set the fp32 masters from HF-named tensors (a checkpoint); no-op without master weights."""
        for seg, master in self.master_state():
            master.copy_(state[seg.name].reshape(-1)[seg.offset : seg.offset + master.numel()].to(torch.float32))

    def master_state(self) -> list[tuple[ParamSegment, torch.Tensor]]:
        """(segment, exact fp32 theta) pairs when master weights are kept, else []."""
        return [(seg, seg.master) for seg in self.segments if seg.master is not None]


def projected_grad(loss_plus: float, loss_minus: float, eps: float, clip: float) -> float:
    """SPSA projected gradient (L+ - L-) / (2 eps), clipped to [-clip, clip] when clip > 0."""
    g = (loss_plus - loss_minus) / (2.0 * eps)
    if clip > 0 and math.isfinite(g):
        g = max(-clip, min(clip, g))
    return g
