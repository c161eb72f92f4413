"""Data types and key derivation shared by the torch sweep (perturb) and the Triton kernel (kernels).

Nothing here imports either of them, so perturb -> kernels -> zgen.types has no cycle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

PHILOX_A, PHILOX_B = 0xD2511F53, 0xCD9E8D57
PHILOX_KA, PHILOX_KB = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
UINT_TO_FLOAT = 4.6566127342e-10  # 1 / 2**31, as Triton's uint_to_uniform_float
TWO_PI = 6.283185307179586
U1_MIN = 1.0e-7  # Box-Muller's u1 floor (log(0) guard)
DISTRIBUTIONS = ("gaussian", "rademacher", "rademacher32")
# Elements of z one Philox counter gives: 4 (a lane per word) or 128 (rademacher32: a sign per bit of the 4 words).
COUNTER_ELEMS = {"gaussian": 4, "rademacher": 4, "rademacher32": 128}

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
    shape: tuple[int, ...] | None = None  # the HF parameter's shape, where the segment is all of it (hf backend)

    def __post_init__(self) -> None:
        if self.tensor.dim() != 1 or not self.tensor.is_contiguous():
            raise ValueError(f"segment {self.name}: tensor must be a contiguous 1-D view")


@dataclass
class SweepPlan:
    """What one sweep does (see perturb's module docstring); `dist` is z's distribution."""

    pre: list[Term] = field(default_factory=list)
    post: list[Term] = field(default_factory=list)
    decay: float = 0.0
    show: list[Term] = field(default_factory=list)
    dist: str = "gaussian"
    # Master mode: weights <- cast(cast(new) + show) instead of cast(new + show). The shown point is then
    # c +- eps z rounded about c = cast(master), a point of the weights' grid, so +eps z and -eps z round to
    # the same distance either side of c (mezo.perturb_about=weights, docs/estimators.md).
    show_on_grid: bool = False

    def __post_init__(self) -> None:
        if self.dist not in DISTRIBUTIONS:
            raise ValueError(f"SweepPlan.dist={self.dist!r}: must be one of {', '.join(DISTRIBUTIONS)}")

    def seeds(self) -> list[int]:
        """Distinct seeds with a nonzero coefficient, sorted."""
        return sorted({s for s, c in self.pre + self.post + self.show if c != 0.0})


class SweepCounter:
    """Counts full sweeps over the trainable weights (a test checks sweeps per step)."""

    count = 0


def philox_key(seed: int, name: str) -> tuple[int, int]:
    """The 64-bit Philox key of (seed, parameter name), as (k0, k1)."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}|{name}".encode(), digest_size=8).digest(), "little")
    return h & MASK32, h >> 32


def step_seed(run_seed: int, step: int, slot: int = 0) -> int:
    """The perturbation seed of (run seed, step, slot): < 2**63, never derived from RANK."""
    h = hashlib.blake2b(f"mezo|{run_seed}|{step}|{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)
