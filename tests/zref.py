"""The torch sweep as it was before the batched/compiled path (frozen: the definition the tests hold
the new paths to, bit for bit). Copied from mezo_elastic/zo/perturb.py at commit aa55d0c, the Triton
dispatch removed; not used by the package."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

PHILOX_A, PHILOX_B = 0xD2511F53, 0xCD9E8D57
PHILOX_KA, PHILOX_KB = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
UINT_TO_FLOAT = 4.6566127342e-10  # 1 / 2**31, as Triton's uint_to_uniform_float
TWO_PI = 6.283185307179586

Term = tuple[int, float]  # (seed, coefficient): coefficient * z(seed)


@dataclass
class ParamSegment:
    """A contiguous 1-D view of trainable weights and where it sits in an HF parameter.

    `tensor` is a view into the live weights (any float dtype); its element j is element
    `offset + j` of the HF parameter `name`. Fused or sharded engine tensors give one segment per
    HF parameter slice they hold.
    """

    tensor: torch.Tensor
    name: str
    offset: int = 0
    decay: bool = True
    master: torch.Tensor | None = None  # fp32 copy when master weights are kept

    def __post_init__(self) -> None:
        if self.tensor.dim() != 1 or not self.tensor.is_contiguous():
            raise ValueError(f"segment {self.name}: tensor must be a contiguous 1-D view")


@dataclass
class SweepPlan:
    """What one sweep does (see the module docstring)."""

    pre: list[Term] = field(default_factory=list)
    post: list[Term] = field(default_factory=list)
    decay: float = 0.0
    show: list[Term] = field(default_factory=list)


class SweepCounter:
    """Counts full sweeps over the trainable weights (a test checks sweeps per step)."""

    count = 0


def philox_key(seed: int, name: str) -> tuple[int, int]:
    """The 64-bit Philox key of (seed, parameter name), as (k0, k1)."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}|{name}".encode(), digest_size=8).digest(), "little")
    return h & MASK32, h >> 32


def _mulhilo(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # a (32-bit) * x (32-bit in int64) without int64 overflow: split x into 16-bit halves.
    p_lo = (x & 0xFFFF) * a  # < 2**48
    p_hi = (x >> 16) * a  # < 2**48
    t = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    return (p_hi >> 16) + (t >> 32), t & MASK32


def philox4x32(counter: torch.Tensor, k0: int, k1: int, rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32 of counters (int64, >= 0) with c2 = c3 = 0: four int64 tensors of 32-bit values."""
    c0, c1 = counter & MASK32, counter >> 32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(rounds):
        hi_a, lo_a = _mulhilo(PHILOX_A, c0)
        hi_b, lo_b = _mulhilo(PHILOX_B, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + PHILOX_KA) & MASK32, (k1 + PHILOX_KB) & MASK32
    return c0, c1, c2, c3


def _uniform(x: torch.Tensor) -> torch.Tensor:
    signed = torch.where(x >= 2**31, x - 2**32, x)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(UINT_TO_FLOAT, dtype=torch.float32)


def _box_muller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u1 = torch.clamp(_uniform(a), min=1.0e-7)
    th = _uniform(b) * torch.tensor(TWO_PI, dtype=torch.float32)
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(th), r * torch.sin(th)


def z_range(seed: int, name: str, start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """z for elements [start, start + count) of parameter `name` under `seed` (float32)."""
    k0, k1 = philox_key(seed, name)
    first, last = start // 4, (start + count + 3) // 4
    counters = torch.arange(first, last, dtype=torch.int64, device=device)
    x0, x1, x2, x3 = philox4x32(counters, k0, k1)
    z0, z1 = _box_muller(x0, x1)
    z2, z3 = _box_muller(x2, x3)
    z = torch.stack((z0, z1, z2, z3), dim=1).reshape(-1)
    lo = start - first * 4
    return z[lo : lo + count]


def _combine(seed_z: dict[int, torch.Tensor], terms: list[Term]) -> torch.Tensor | None:
    acc = None
    for seed, coeff in terms:
        if coeff == 0.0:
            continue
        term = seed_z[seed] * coeff
        acc = term if acc is None else acc + term
    return acc


def _sweep_chunk(w: torch.Tensor, m: torch.Tensor | None, plan: SweepPlan, decay: float,
                 seed_z: dict[int, torch.Tensor]) -> None:
    src = m if m is not None else w
    # fp32 arithmetic for fp32/bf16/fp16 weights; fp64 weights keep fp64 (z itself is fp32)
    base = src.to(torch.promote_types(src.dtype, torch.float32))
    pre, post = _combine(seed_z, plan.pre), _combine(seed_z, plan.post)
    new = base if pre is None else base + pre
    if decay:
        new = new * (1.0 - decay)
    if post is not None:
        new = new + post
    if m is not None:
        m.copy_(new)
        show = _combine(seed_z, plan.show)
        w.copy_(new if show is None else new + show)
    else:
        w.copy_(new)


def sweep(segments: list[ParamSegment], plan: SweepPlan, chunk_elems: int = 1 << 20) -> None:
    """Apply one sweep to every segment in place, z generated chunk by chunk (bounded scratch).

    The same float32 arithmetic runs on every rank, so identical inputs give identical weights.
    """
    seeds = sorted({s for s, c in plan.pre + plan.post + plan.show if c != 0.0})
    with torch.no_grad():
        for seg in segments:
            decay = plan.decay if seg.decay else 0.0
            n = seg.tensor.numel()
            for lo in range(0, n, chunk_elems):
                cnt = min(chunk_elems, n - lo)
                seed_z = {s: z_range(s, seg.name, seg.offset + lo, cnt, seg.tensor.device) for s in seeds}
                m = seg.master[lo : lo + cnt] if seg.master is not None else None
                _sweep_chunk(seg.tensor[lo : lo + cnt], m, plan, decay, seed_z)


def step_seed(run_seed: int, step: int, slot: int = 0) -> int:
    """The perturbation seed of (run seed, step, slot): < 2**63, never derived from RANK."""
    h = hashlib.blake2b(f"mezo|{run_seed}|{step}|{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)

