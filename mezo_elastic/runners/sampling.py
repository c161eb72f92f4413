"""Seeded sampling shared by the backends: Gumbel-max with noise keyed by (seed, position, token id).

argmax(logits / T + g), g = -log(-log(u)), u uniform from an integer hash of (request seed, generated
position, vocabulary index), is an exact sample of softmax(logits / T). Because the noise depends on
those three integers only, the +eps and -eps sides of a MeZO step see the same noise (common random
numbers: the difference of their rewards is the weights' doing, not the sampler's), and a step is
reproducible. The hash is integer arithmetic in int64 torch ops, so CPU and GPU draw the same u; the
float tail (log, division) may differ in the last bit between devices.
"""

from __future__ import annotations

from typing import Sequence

import torch

MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, a: int) -> torch.Tensor:
    # (x * a) mod 2**32 for x < 2**32 without int64 overflow: multiply 16-bit halves.
    lo = (x & 0xFFFF) * a
    hi = ((x >> 16) * a) & 0xFFFF
    return (lo + (hi << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (lowbias32: xor-shift-multiply); int64 tensors of values < 2**32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform(seeds: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """u in (0, 1), float64 [rows, vocab]: row r from (seeds[r] (int64, < 2**63), position, column)."""
    lo, hi = seeds & MASK32, (seeds >> 32) & MASK32
    row = mix32(lo ^ mix32(hi ^ mix32(torch.full_like(seeds, position & MASK32))))  # [rows]
    cols = torch.arange(vocab, dtype=torch.int64, device=seeds.device)
    h = mix32(row.unsqueeze(1) ^ mix32((cols + 0x9E3779B9) & MASK32).unsqueeze(0))
    return (h.to(torch.float64) + 0.5) * (1.0 / 2**32)


def gumbel_argmax(logits: torch.Tensor, temperature: float, seeds: torch.Tensor, position: int) -> torch.Tensor:
    """Sampled token ids [rows] (int64) of logits [rows, vocab] at `temperature` > 0.

    Args:
        logits: next-token logits of each row (any float dtype, any device).
        temperature: > 0 (greedy decoding never calls this).
        seeds: int64 [rows] on logits' device: each row's request seed.
        position: index of the token being generated (0 = the first new token).
    """
    g = -torch.log(-torch.log(uniform(seeds, position, logits.shape[-1])))
    return torch.argmax(logits.to(torch.float64) / temperature + g, dim=-1)


def cut_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> tuple[int, ...]:
    """The tokens before the first EOS (a finished row of a batch goes on past its EOS)."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tuple(tokens[:i])
    return tuple(tokens)
