"""Where one SGLang scoring forward spends its time: wall, GPU busy, and the top CPU/GPU ops.

    python bench/profile_forward.py --model /tmp/mezo_bench/scoring_1b           # needs a GPU + sglang

Three batches: 1 request of 8 tokens (the fixed cost of a forward), 96 requests of 8 tokens, and the
bench batch (16 x 256 tokens, 64 completion). For each: median wall ms over 10 calls, then one call
under torch.profiler with the summed CUDA kernel time (GPU busy) and the top 12 entries by self
CPU time. The difference between wall and GPU busy is time the GPU waits for the host.
Then --steps MeZO steps (2 forwards + 2 sweeps each, as bench_step's "ours on SGLang") under the
profiler: wall, GPU busy, and the largest gaps between GPU kernels with the host calls during them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "gpu"), str(REPO / "bench")]

from bench_step import timed  # noqa: E402  (median wall ms, synchronised)
from sglang_models import random_requests, sglang_cfg, single_ctx  # noqa: E402

from mezo_elastic.runners.base import ScoreRequest  # noqa: E402
from mezo_elastic.runners.sglang.runner import SGLangRunner  # noqa: E402


def phases(eng, reqs: list[ScoreRequest], n: int = 10) -> dict[str, float]:
    """Median ms of each host phase of Engine.logprob_sums (synchronised after each)."""
    mr = eng.model_runner
    seqs = [list(r.prompt_ids) + list(r.completion_ids) for r in reqs]
    starts = [len(r.prompt_ids) - 1 for r in reqs]
    out: dict[str, list[float]] = {}

    def tick(name, t):
        torch.cuda.synchronize()
        now = time.perf_counter()
        out.setdefault(name, []).append((now - t) * 1e3)
        return now

    for _ in range(n + 3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        rq = [eng._req(i, ids, st) for i, (ids, st) in enumerate(zip(seqs, starts))]
        t = tick("make Req objects", t)
        batch = eng._schedule(rq)
        t = tick("ScheduleBatch + prepare_for_extend", t)
        fb = eng._forward_batch(batch)
        t = tick("ForwardBatch.init_new", t)
        lo = mr.forward(fb).logits_output
        t = tick("ModelRunner.forward", t)
        eng._row_sums(lo.input_token_logprobs, [len(x) - st for x, st in zip(seqs, starts)])
        t = tick("row sums + copy to CPU", t)
        eng.clear()
        tick("clear pools", t)
    return {k: statistics.median(v[3:]) for k, v in out.items()}


def step_gaps(sg, reqs: list[ScoreRequest], steps: int) -> None:
    """Profile `steps` MeZO steps; print GPU busy vs wall and the 12 largest idle gaps of the GPU."""
    from torch.profiler import ProfilerActivity, profile

    from mezo_elastic.config import MezoConfig
    from mezo_elastic.zo.optimizer import MezoOptimizer, StepRecord
    from mezo_elastic.zo.perturb import step_seed

    mcfg = MezoConfig(lr=1e-7, eps=1e-3)
    opt = MezoOptimizer(sg.segments(), mcfg, master_weights=False)

    def step(t: int) -> None:
        s, nxt = step_seed(0, t), step_seed(0, t + 1)
        opt.perturb(s, 1.0)
        lp = -float(sg.score(reqs)[0].sum())
        opt.perturb(s, -1.0)
        lm = -float(sg.score(reqs)[0].sum())
        g = (lp - lm) / (2 * mcfg.eps)
        opt.update(StepRecord(step=t, seeds=[s], grads=[g], lr=mcfg.lr, weight_decay=0.0), nxt)

    for t in range(3):
        step(t)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for t in range(3, 3 + steps):
            step(t)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    gpu = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                 key=lambda e: e.time_range.start)
    cpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    busy, gaps, end, prev = 0.0, [], None, None
    for e in gpu:
        a, b = e.time_range.start, e.time_range.end
        if end is not None and a > end:
            gaps.append((a - end, end, a, prev, e.name))
        if end is None or a > end:
            busy += b - a
        elif b > end:
            busy += b - end
        end = b if end is None else max(end, b)
        prev = e.name
    print(f"\n== {steps} MeZO steps (16 x 256 tokens, kept batch): wall {wall:.1f} ms, GPU busy {busy / 1e3:.1f} ms, "
          f"idle {sum(g[0] for g in gaps) / 1e3:.1f} ms in {len(gaps)} gaps")
    for gap, a, b, before, after in sorted(gaps, reverse=True)[:12]:
        during = sorted({c.name for c in cpu if c.time_range.start < b and c.time_range.end > a
                         and c.time_range.end - c.time_range.start < 5 * gap + 1000})
        print(f"  {gap / 1e3:6.3f} ms after {before[:50]!r} before {after[:50]!r}; host: {', '.join(during)[:400]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--attention", default="triton")
    ap.add_argument("--steps", type=int, default=3, help="MeZO steps to profile for GPU idle gaps (0 = none)")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    cfg = sglang_cfg(args.model, attention_backend=args.attention)
    cfg.data.micro_batch = 128
    sg = SGLangRunner(single_ctx(), cfg, torch.device("cuda", 0), args.model)
    batches = {
        "1 x 8 tokens": [ScoreRequest(tuple(range(5, 12)), (20,))],
        "96 x 8 tokens": [ScoreRequest(tuple(range(5, 12)), (20,))] * 96,
        "16 x 256 tokens": random_requests(16, 32000, seed=0, prompt=(192, 192), completion=(64, 64)),
    }
    for name, reqs in batches.items():
        ms = timed(lambda reqs=reqs: sg.score(reqs), 10, warmup=3)
        print(f"\n== {name}: host phases (ms, synchronised after each): "
              + ", ".join(f"{k} {v:.2f}" for k, v in phases(sg.engine, reqs).items()))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sg.score(reqs)
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        n_kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"\n== {name}: wall {ms:.2f} ms (median of 10), GPU busy {gpu_us / 1e3:.2f} ms in {n_kernels} kernels")
        print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    if args.steps:
        step_gaps(sg, batches["16 x 256 tokens"], args.steps)
    sg.close()


if __name__ == "__main__":
    main()
