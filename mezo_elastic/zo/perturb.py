"""Seeded perturbation z and the parameter sweep: the definition of z, and the dispatch of a sweep.

z of one element is a pure function of (distribution, step seed, HF parameter name, element index):
    key     = blake2b(f"{seed}|{name}") -> 64 bits -> (k0 low 32, k1 high 32)
    counter = index // 4, lane = index % 4          (rademacher32: see below)
    (x0, x1, x2, x3) = Philox4x32-10(counter_lo, counter_hi, 0, 0; k0, k1)
gaussian (the default):
    u(x)    = (x as int32, negatives folded: x<0 -> -x-1) * 4.6566127342e-10   (Triton's uint->float)
    lanes 0,1 = Box-Muller(u(x0), u(x1)) as (r cos, r sin); lanes 2,3 = Box-Muller(u(x2), u(x3))
    with u1 = max(u, 1e-7), theta = u * 2 pi (float32), r = sqrt(-2 ln u1) in torch's float32 ops
rademacher (`--mezo.distribution=rademacher`, SPSA's Bernoulli +-1):
    z of lane l = -1 if bit 31 (the top bit) of x_l is set, else +1
rademacher32 (`--mezo.distribution=rademacher32`: +-1 from every bit, 32x fewer Philox calls):
    counter = index // 128, word w = (index % 128) // 32, bit b = index % 32
    z = -1 if bit b (bit 0 = least significant) of x_w is set, else +1
    the same distribution as rademacher but other values: a run cannot switch between them
It never depends on RANK, world size, device, sharding or chunking, so a fused GPU kernel (Triton
`mezo_elastic.zo.triton_sweep`) regenerates the same z in registers and a step log replays anywhere. The
Philox words come from compiled C (zgen/native.py) where a compiler exists, else from torch ops
(zgen/philox_torch.py); both give the same bits (tests/test_zgen.py), and gaussian z always ends in
the same torch Box-Muller ops.

A sweep is one pass over every trainable segment:
    new = (1 - decay_s) * (base + sum(pre)) + sum(post)        base = master copy if kept, else the weights
    master mode: master <- new; weights <- new + sum(show)
so restore + update + next perturbation fold into one pass (see mezo.py for the coefficients).
"""

from __future__ import annotations

import torch

from mezo_elastic.zo import cpu_sweep
from mezo_elastic.zo.zgen import native, philox_torch
from mezo_elastic.zo.zgen.types import (
    DISTRIBUTIONS,
    ParamSegment,
    SweepCounter,
    SweepPlan,
    Term,
    philox_key,
    step_seed,
)

philox4x32 = philox_torch.philox4x32
__all__ = ["DISTRIBUTIONS", "ParamSegment", "SweepCounter", "SweepPlan", "Term", "philox4x32", "philox_key",
           "step_seed", "sweep", "z_range"]


def z_range(seed: int, name: str, start: int, count: int, device: torch.device | str = "cpu",
            dist: str = "gaussian", native_ok: bool | None = None) -> torch.Tensor:
    """z for elements [start, start + count) of parameter `name` under `seed` (float32).

    native_ok: None = the compiled Philox on the CPU when it loads; False = torch ops only.
    """
    return cpu_sweep.z_values(seed, name, start, count, dist, device, native_ok)


def sweep(segments: list[ParamSegment], plan: SweepPlan, chunk_elems: int = 1 << 20,
          fused: bool | None = None) -> None:
    """Apply one sweep to every segment in place, z generated batch by batch (bounded scratch).

    The same float32 arithmetic runs on every rank, so identical inputs give identical weights.
    fused: None = the Triton kernel (mezo_elastic.zo.triton_sweep) when every segment is a CUDA tensor and
    triton imports, else the torch path (zgen.cpu_sweep); False = always the torch path; True = the
    kernel or an error.
    """
    SweepCounter.count += 1
    if fused is not False and segments and segments[0].tensor.is_cuda:
        from mezo_elastic.zo import (
            triton_sweep as kernels,  # lazy: CPU-only installs never import triton
        )

        if kernels.fused_sweep(segments, plan):
            return
        if fused:
            raise RuntimeError("fused sweep requested but not possible here (triton missing, mixed devices or "
                               f"dtypes, or more than {kernels.MAX_SEEDS} seeds in one plan)")
    cpu_sweep.sweep(segments, plan, chunk_elems)


def native_status() -> str:
    """'compiled' or why torch ops generate the Philox words (bench/bench_cpu_step.py prints it)."""
    why = native.why_not()
    return "compiled" if why is None else f"torch ops ({why})"
