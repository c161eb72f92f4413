"""Philox4x32-10 and the z transforms in torch ops: the path without a compiler, and z on any device.

uint32 values live in int64 tensors. A 32 x 32-bit product is < 2**64 and int64 multiplication
wraps modulo 2**64, so its low 64 bits are exact: lo = p & MASK32, hi = (p >> 32) & MASK32 (the
arithmetic shift's sign bits are masked off). Keys may be ints or int64 tensors (one key per
counter: many segments in one call).
"""

from __future__ import annotations

import torch

from mezo_elastic.zo.zgen.types import (
    MASK32,
    PHILOX_A,
    PHILOX_B,
    PHILOX_KA,
    PHILOX_KB,
    TWO_PI,
    U1_MIN,
    UINT_TO_FLOAT,
)

Key = int | torch.Tensor


def philox4x32(counter: torch.Tensor, k0: Key, k1: Key, rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32 of counters (int64, >= 0) with c2 = c3 = 0: four int64 tensors of 32-bit values."""
    c0, c1 = counter & MASK32, counter >> 32
    c2 = c3 = torch.zeros_like(c0)
    for _ in range(rounds):
        pa, pb = c0 * PHILOX_A, c2 * PHILOX_B  # wrap mod 2**64: the exact 64-bit products' low bits
        c0, c1, c2, c3 = ((pb >> 32) & MASK32) ^ c1 ^ k0, pb & MASK32, ((pa >> 32) & MASK32) ^ c3 ^ k1, pa & MASK32
        k0, k1 = (k0 + PHILOX_KA) & MASK32, (k1 + PHILOX_KB) & MASK32
    return c0, c1, c2, c3


def uniform(x: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float of 32-bit words in int64: int32 view, negatives folded, * 2**-31."""
    folded = torch.where(x >= 2**31, 2**32 - 1 - x, x)  # x - 2**32 < 0 -> -(x - 2**32) - 1
    return folded.to(torch.float32) * torch.tensor(UINT_TO_FLOAT, dtype=torch.float32)


def box_muller_inputs(words: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(u1, theta) per Box-Muller pair, pairs (x0, x1) and (x2, x3) of each counter interleaved."""
    x0, x1, x2, x3 = words
    u1 = torch.clamp(uniform(torch.stack((x0, x2), 1)), min=U1_MIN).reshape(-1)
    th = (uniform(torch.stack((x1, x3), 1)) * torch.tensor(TWO_PI, dtype=torch.float32)).reshape(-1)
    return u1, th


def box_muller(u1: torch.Tensor, th: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """z = (r cos th, r sin th) per pair, r = sqrt(-2 ln u1): 2 * len(u1) floats, pair-major.

    The reference definition of gaussian z: both paths (compiled words or torch words) end here,
    and the op sequence (log, * -2, sqrt, cos, sin, r * .) is the one every step log was made with.
    u1 is overwritten with r.
    """
    r = torch.log(u1, out=u1)
    r.mul_(-2.0).sqrt_()
    z = out if out is not None else torch.empty(2 * len(u1), dtype=torch.float32, device=u1.device)
    pairs = z.view(-1, 2)
    torch.mul(torch.cos(th), r, out=pairs[:, 0])
    torch.mul(torch.sin(th), r, out=pairs[:, 1])
    return z


def rademacher(words: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """z = -1 where bit 31 of the lane's word is set, else +1: 4 floats a counter, lane-major."""
    signs = torch.stack(words, 1) >> 31  # 0 or 1
    return (1 - 2 * signs).to(torch.float32).reshape(-1)


def rademacher32(words: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Packed Rademacher z: element 32 w + b of a counter is -1 where bit b (0 = least significant) of
    word x_w is set, else +1: 128 floats a counter, word-major then bit."""
    bits = (torch.stack(words, 1)[:, :, None] >> torch.arange(32, device=words[0].device)) & 1  # [n, 4, 32]
    return (1 - 2 * bits).to(torch.float32).reshape(-1)
