"""Where one SGLang scoring forward spends its time: wall, GPU busy, and the top CPU/GPU ops.

    python bench/profile_forward.py --model /tmp/mezo_bench/scoring_1b           # needs a GPU + sglang

Three batches: 1 request of 8 tokens (the fixed cost of a forward), 96 requests of 8 tokens, and the
bench batch (16 x 256 tokens, 64 completion). For each: median wall ms over 10 calls, then one call
under torch.profiler with the summed CUDA kernel time (GPU busy) and the top 12 entries by self
CPU time. The difference between wall and GPU busy is time the GPU waits for the host.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "gpu")]

from sglang_models import random_requests, sglang_cfg, single_ctx  # noqa: E402

from mezo_elastic.runners.base import ScoreRequest  # noqa: E402
from mezo_elastic.runners.sglang import SGLangRunner  # noqa: E402


def wall_ms(fn, n: int = 10) -> float:
    """Median wall ms of fn() (synchronised), after 3 warm-up calls."""
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--attention", default="triton")
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
        ms = wall_ms(lambda reqs=reqs: sg.score(reqs))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            sg.score(reqs)
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        n_kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"\n== {name}: wall {ms:.2f} ms (median of 10), GPU busy {gpu_us / 1e3:.2f} ms in {n_kernels} kernels")
        print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    sg.close()


if __name__ == "__main__":
    main()
