"""ZO-Muon (mezo.estimator=zo_muon): subspace perturbations and an orthogonalised subspace step.

Lang et al., "Powering Up Zeroth-Order Training via Subspace Gradient Orthogonalization", arXiv 2602.17155;
code OPTML-Group/ZO-Muon at commit 166a8f3, llm/LowDimTrainer.py (lowdim_zo_step with multiple_sample,
lowdim_zo_update with zo_optimizer=muon). For every trainable matrix W (m x n):
    P      m x r, orthonormal columns: the Q of a QR of a Gaussian (signs from R's diagonal), redrawn every
           mezo.zo_muon_interval steps
    u_i    r x n Gaussian, one per sample i = 1..N (N = mezo.perturbations)
    points W + eps P u_i (N forwards), then W itself
    g_i    (L_i - L_0) / eps
    step   W -= lr (P NS5(1/N sum_i g_i u_i) + wd W)         NS5: Newton-Schulz, 5 quintic iterations
Vectors (norm weights, biases) take MeZO's step with the same g_i and their own z_i at
mezo.zo_muon_vector_lr (the authors' code: a fixed 1e-7).

What differs from MeZO's machinery, and why this is a module of its own:
- a perturbation is a matrix product per weight, not an elementwise z(seed, name, index), so the fused
  sweep does not apply: every point is written as weights = cast(master + eps P u_i) in torch ops
  (the fp32 master copy is always kept: a point never moves the master, so there is no drift to undo);
- the step is nonlinear in the g_i (NS5), so the step log's (seeds, grads, lr) replays through this
  module (`replay`), not as a sum of seeded z. Devices agree to within rounding at each tensor's scale:
  u_i, z_i and P's Gaussian come from this package's Philox generator (perturb.z_range: the same bits on CPU
  and GPU), P's QR runs in float64 on the CPU, the subspace gradient is an elementwise float64 sum in the
  seeds' order (the same bits anywhere), NS5 and P NS5(.) run in float64 on the weights' device, and the new
  master is rounded once to float32. Two devices' float64 matmuls (and NS5's norm) sum in other orders: a GPU
  run's CPU export of 10 steps of the built-in model differed by at most 1.19e-7, one float32 ulp of a weight
  near 1.0 (H100, 2026-12-07, two runs), on about 10% of the elements (counted on the second), more than
  float64 reordering alone explains; which op differs is not established (tests/gpu/test_zo_muon_gpu.py
  prints the tensors). A replay takes no forwards, so such a difference does not grow; a resume on the device
  that made the run, and final/ and checkpoints, are bit-exact.
- only whole HF parameters with their 2-D shape (the hf backend without LoRA): the SGLang backend's
  fused and sharded tensors are refused in one line by the config.
Memory: P (m x r, float32 and float64 copies) per matrix on top of the master copy: m r 12 bytes a matrix
(SmolLM2-135M at r = 64: about 160 MB, 38 MB of it the 49152 x 576 embedding's).
Cost: the update regenerates every u_i (r x n a matrix; ~30 M values a step at 135M with r = 64 and N = 4)
and runs NS5 (~20 r^2 n flops a matrix, 12 GFLOP at 135M) and P NS5(.) in float64 on the weights' device:
milliseconds on a GPU's float64 units, seconds on a CPU. Not yet measured on a GPU.
"""

from __future__ import annotations

import contextlib

import torch

from mezo_elastic.config import MezoConfig
from mezo_elastic.zo import cpu_sweep
from mezo_elastic.zo.optimizer import StepRecord
from mezo_elastic.zo.perturb import ParamSegment, step_seed, z_range

P_SLOT = 1 << 40  # step_seed slot of P's seeds: far from any population's slots (< world x K)


def newton_schulz5(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The authors' zeropower_via_newtonschulz5 (Muon's quintic iteration), in g's dtype: an approximate
    U V^T of g = U S V^T."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.mT if g.size(-2) > g.size(-1) else g
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        m = x @ x.mT
        x = a * x + (b * m + c * m @ m) @ x
    return x.mT if g.size(-2) > g.size(-1) else x


def orthonormal_p(seed: int, name: str, m: int, r: int) -> torch.Tensor:
    """P (m x r, float64, CPU): Q of the QR of a Gaussian from (seed, name), columns' signs from R's diagonal
    (the authors' _sample_orthogonal_P, which makes Q Haar-distributed)."""
    a = z_range(seed, f"{name}|P", 0, m * r).double().view(m, r)
    q, rr = torch.linalg.qr(a, mode="reduced")
    signs = torch.sign(torch.diagonal(rr))
    signs[signs == 0] = 1.0
    return q * signs


class LowRankOptimizer:
    """ZO-Muon over the hf backend's whole-parameter segments; the same interface as MezoOptimizer
    (perturb, clean, clean_weights, update, replay, load_master, master_state)."""

    master = True
    folds_next = False  # a step starts from theta: update() never shows the next step's first point

    def __init__(self, segments: list[ParamSegment], cfg: MezoConfig, run_seed: int) -> None:
        self.segments, self.cfg, self.run_seed = segments, cfg, run_seed
        for seg in segments:
            if seg.shape is None:
                raise ValueError(f"segment {seg.name}: zo_muon needs whole parameters with their shape")
            seg.master = seg.tensor.detach().to(torch.float32, copy=True)
        self._p: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (P float64, P float32), on the device
        self._epoch: int | None = None
        self.offset: tuple[int, float] | None = None  # (seed, scale) shown, or None: theta

    # -- the subspace -------------------------------------------------------------------------------

    def _matrices(self):
        return [s for s in self.segments if len(s.shape) == 2]

    def _subspace(self, step: int) -> None:
        """P of every matrix for `step`'s epoch (step // zo_muon_interval), drawn once an epoch."""
        epoch = step // self.cfg.zo_muon_interval
        if epoch == self._epoch:
            return
        seed = step_seed(self.run_seed, epoch, P_SLOT)
        r = self.cfg.zo_muon_rank
        self._p = {}
        for seg in self._matrices():
            m, _ = seg.shape
            p64 = orthonormal_p(seed, seg.name, m, min(r, m)).to(seg.tensor.device)
            self._p[seg.name] = (p64, p64.float())
        self._epoch = epoch

    def _draw(self, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sample `seed`'s u (r x n float32) of every matrix and z (numel) of every vector, from the run's
        mezo.distribution (the authors' Gaussian by default; P's draw is always Gaussian), in one Philox
        generation for all segments (one set of kernels on a GPU, not one per tensor). Each is bit for bit
        z_range(seed, name, 0, count) with name "<param>|u" for a matrix, "<param>" for a vector.
        Returns (the one buffer, name -> its view)."""
        pieces = []  # (segment, key name, count, shape)
        for seg in self.segments:
            if len(seg.shape) == 2:
                r, n = self._p[seg.name][0].shape[1], seg.shape[1]
                pieces.append((seg, f"{seg.name}|u", r * n, (r, n)))
            else:
                pieces.append((seg, seg.name, seg.tensor.numel(), (seg.tensor.numel(),)))
        buf, zs = cpu_sweep.z_many([(seed, name, c) for _, name, c, _ in pieces], self.cfg.distribution,
                                   self.segments[0].tensor.device)
        return buf, {seg.name: z.view(shape) for (seg, _, _, shape), z in zip(pieces, zs)}

    # -- points ---------------------------------------------------------------------------------------

    def at_step(self, step: int) -> None:
        """The step whose points come next: its subspace (P is redrawn every zo_muon_interval steps)."""
        self._subspace(step)

    def perturb(self, seed: int, scale: float = 1.0) -> None:
        """Show theta + scale eps (P u(seed) for matrices, z(seed) for vectors) in the current subspace
        (at_step's)."""
        if self.offset == (seed, scale):
            return
        eps = scale * self.cfg.eps
        _, drawn = self._draw(seed)
        for seg in self.segments:
            u = drawn[seg.name]
            d = (self._p[seg.name][1] @ u).view(-1) if len(seg.shape) == 2 else u
            base = seg.master.to(seg.tensor.dtype).float() if self.cfg.perturb_about == "weights" else seg.master
            seg.tensor.copy_(base + eps * d)
        self.offset = (seed, scale)

    def clean(self) -> None:
        """Show theta (the master cast to the model dtype); nothing to do if shown already."""
        if self.offset is not None:
            self._show_theta()

    def _show_theta(self) -> None:
        for seg in self.segments:
            seg.tensor.copy_(seg.master)
        self.offset = None

    @contextlib.contextmanager
    def clean_weights(self):
        """Within the block the weights are theta (no perturbation is folded across steps here)."""
        self.clean()
        yield

    # -- the step -------------------------------------------------------------------------------------

    def update(self, rec: StepRecord, next_seed: int | None = None) -> None:
        """theta -= lr (P NS5(mean g u) + wd theta) for matrices, lr_vec (mean g z + wd theta) for
        vectors; then clean weights (`next_seed` is ignored: a ZO-Muon step starts from theta)."""
        if not rec.skipped:
            self._subspace(rec.step)
            n = len(rec.seeds)
            # mean g u in float64 over the samples' whole draws (one buffer each: a few ops, not a few per
            # tensor), elementwise in the seeds' order: the same bits on any device
            draws = [self._draw(s) for s in rec.seeds]
            flat = sum(gi * buf.double() for gi, (buf, _) in zip(rec.grads, draws)) / n
            mean = {name: flat[z.storage_offset():][: z.numel()].view(z.shape) for name, z in draws[0][1].items()}
            ortho = self._ns5_by_shape({s.name: mean[s.name] for s in self._matrices()})
            for seg in self.segments:
                if len(seg.shape) == 2:
                    step, lr = (self._p[seg.name][0] @ ortho[seg.name]).view(-1), rec.lr
                else:
                    step, lr = mean[seg.name], self.cfg.zo_muon_vector_lr
                if seg.decay and rec.weight_decay:
                    step = step + rec.weight_decay * seg.master.double()
                seg.master.copy_((seg.master.double() - lr * step).float())
        self._show_theta()  # the weights showed a point of the step (or the old theta)

    @staticmethod
    def _ns5_by_shape(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """NS5 of every matrix's subspace gradient, the ones of one shape stacked into one batched call
        (a few dozen kernels a step on a GPU instead of a few thousand); live and replay both come here."""
        groups: dict[tuple, list[str]] = {}
        for name, g in grads.items():
            groups.setdefault(tuple(g.shape), []).append(name)
        out = {}
        for names in groups.values():
            for name, x in zip(names, newton_schulz5(torch.stack([grads[k] for k in names]))):
                out[name] = x
        return out

    def replay(self, rec: StepRecord) -> None:
        """A logged step without forwards: the same update, bit for bit."""
        self.update(rec)

    def load_master(self, state: dict[str, torch.Tensor]) -> None:
        """Masters (and weights) from HF-named tensors (a checkpoint)."""
        for seg in self.segments:
            seg.master.copy_(state[seg.name].reshape(-1).to(torch.float32))
        self._show_theta()

    def master_state(self) -> list[tuple[ParamSegment, torch.Tensor]]:
        """(segment, exact fp32 theta) pairs."""
        return [(seg, seg.master) for seg in self.segments]
