"""Where the fused sweep's time goes: the kernel against copy bandwidth, with parts switched off.

    python bench/bench_sweep.py                    # Llama-3.2-1B shape, bf16, on GPU 0
    python bench/bench_sweep.py --shape 8b
    ncu --kernel-name regex:_sweep_kernel --launch-skip 4 --launch-count 4 \\
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats \\
        python bench/bench_sweep.py --once        # one launch per variant, for Nsight Compute

Weights are allocated with the model's parameter shapes (random bf16, no model built). Rows: every
(master weights or not) x (1 seed = perturb, 2 seeds = restore + update + next perturbation) x
variant. Variants: `default` is what training runs; `lanes` / `join` / `pick` are the load/store layouts (kernels.VEC 0 / 1 / 2: the
same bits), `aligned` the vector-load path for aligned segments (kernels.ALIGN); the profiling modes (kernels._z4 MODE, never used for training) replace parts of the RNG:
`no-rng` (z a cheap function of the counter: the memory + update floor), `philox only` (no
Box-Muller), `fast log` (approximate lg2 instead of libdevice's log). `rademacher` is the training
kernel with `--mezo.distribution=rademacher` (z = the sign bit of each lane's Philox word); `rademacher32` the packed
kernel of `--mezo.distribution=rademacher32` (a sign per bit: one Philox call per 128 elements), `unaligned`
with kernels.ALIGN off (every segment on its masked path). Bytes counted per element:
read + write of the weight (4 B for bf16), with master weights read + write of the fp32 master plus
the bf16 write (10 B). Prints a Markdown table; --out writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "gpu")]

from sglang_models import LLAMA_1B, LLAMA_8B, hf_config  # noqa: E402

from mezo_elastic.zo import triton_sweep as kernels  # noqa: E402
from mezo_elastic.zo.perturb import ParamSegment, SweepPlan  # noqa: E402

SHAPES = {"1b": LLAMA_1B, "8b": LLAMA_8B}
# (label, kernels.VEC, profiling MODE, kernels.ALIGN)
VARIANTS = [("default", None, 0, True), ("lanes", 0, 0, False), ("lanes aligned", 0, 0, True), ("join aligned", 1, 0, True),
            ("pick", 2, 0, False), ("pick aligned", 2, 0, True),
            ("lanes no-rng", 0, 1, False), ("join aligned no-rng", 1, 1, True), ("pick aligned no-rng", 2, 1, True),
            ("pick aligned philox only", 2, 2, True), ("pick aligned fast log", 2, 3, True),
            ("rademacher", None, 0, True), ("rademacher lanes", 0, 0, False),  # --mezo.distribution=rademacher
            ("rademacher32", None, 0, True), ("rademacher32 unaligned", None, 0, False)]  # =rademacher32
PLANS = {1: SweepPlan(post=[(1, 1e-3)]), 2: SweepPlan(pre=[(1, -1e-3)], post=[(1, -1e-6), (2, 1e-3)])}
PLANS_MASTER = {1: SweepPlan(post=[(1, 1e-3)]),
                2: SweepPlan(pre=[(1, -1e-3)], post=[(1, -1e-6)], show=[(2, 1e-3)])}


def param_shapes(spec: dict) -> dict[str, torch.Size]:
    """name -> shape of the model's parameters (built on the meta device: no memory, no init)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(spec))
    return {n: p.shape for n, p in model.named_parameters()}


def timed(fn, reps: int) -> float:
    """Median ms of fn() over reps, each bracketed by CUDA events."""
    fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return float(np.median(ts))


def copy_bandwidth() -> float:
    """TB/s of a 2 GiB device copy (read + write counted)."""
    src = torch.empty(2**30, dtype=torch.int16, device="cuda")
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), 10)
    return 2 * 2**31 / (ms * 1e-3) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--once", action="store_true", help="one launch per variant (for ncu), no table")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    shapes = param_shapes(SHAPES[args.shape])
    n = sum(s.numel() for s in shapes.values())
    g = torch.Generator(device="cuda").manual_seed(0)
    weights = {k: (torch.randn(s.numel(), device="cuda", generator=g) * 0.02).to(torch.bfloat16)
               for k, s in shapes.items()}
    copy = copy_bandwidth()
    rows = []
    for master in (False, True):
        masters = {k: w.float() for k, w in weights.items()} if master else {}
        segs = [ParamSegment(w, k, 0, shapes[k].__len__() >= 2, masters.get(k)) for k, w in weights.items()]
        bytes_per = 10 if master else 4
        for seeds in (1, 2):
            plan = (PLANS_MASTER if master else PLANS)[seeds]
            for label, vec, mode, align in VARIANTS:
                kernels.VEC, kernels.ALIGN = vec, align
                p = dataclasses.replace(plan, dist=label.split()[0] if label.startswith("rademacher") else "gaussian")
                run = lambda: kernels.fused_sweep(segs, p, _mode=mode)  # noqa: E731,B023
                if args.once:
                    run()
                    torch.cuda.synchronize()
                    continue
                ms = timed(run, args.reps)
                tbps = n * bytes_per / (ms * 1e-3) / 1e12
                rows.append(dict(master=master, seeds=seeds, variant=label, ms=ms, TBps=tbps, pct_copy=100 * tbps / copy))
        masters, segs = {}, []  # free before the next configuration allocates
        torch.cuda.empty_cache()
    if args.once:
        return
    dev = torch.cuda.get_device_name(0)
    import triton

    print(f"\nsweep kernel, {args.shape} shape ({n / 1e9:.2f} B params, bf16) on {dev}; copy {copy:.2f} TB/s; "
          f"torch {torch.__version__}, triton {triton.__version__}; BLOCK_C {kernels.BLOCK_C}, BLOCK_C32 {kernels.BLOCK_C32}, warps {kernels.NUM_WARPS}; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| master | seeds | variant | ms | TB/s | % of copy |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {'fp32' if r['master'] else 'none'} | {r['seeds']} | {r['variant']} | {r['ms']:.3f} | "
              f"{r['TBps']:.2f} | {r['pct_copy']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=dev, shape=args.shape, params=n, copy_TBps=copy, rows=rows),
                                             indent=1))


if __name__ == "__main__":
    main()
