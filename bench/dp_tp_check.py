"""MeZO steps on the sglang backend under torchrun in DP x TP; rank 0 writes losses, grads, timing.

    torchrun --standalone --nproc_per_node=2 bench/dp_tp_check.py --model /tmp/m --tp 1 --out dp2.json
    torchrun --standalone --nproc_per_node=2 bench/dp_tp_check.py --model /tmp/m --tp 2 --out tp2.json
    python bench/dp_tp_check.py --model /tmp/m --tp 1 --out one.json          # the 1-GPU reference

The global batch of step t is the same whatever the layout; replica r scores examples r::replicas,
and the 3 scalars of a step are summed over replicas through init_mezo_distributed's DP group.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "gpu")]

from sglang_models import random_requests, sglang_cfg  # noqa: E402

from mezo_elastic.cluster.distributed import teardown  # noqa: E402
from mezo_elastic.cluster.rank_context import detect  # noqa: E402
from mezo_elastic.config import MezoConfig  # noqa: E402
from mezo_elastic.runners.sglang.runner import SGLangRunner, init_mezo_distributed  # noqa: E402
from mezo_elastic.zo.optimizer import MezoOptimizer, StepRecord  # noqa: E402
from mezo_elastic.zo.perturb import step_seed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16, help="global batch per step")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    ctx = detect()
    cfg = sglang_cfg(args.model, tp_size=args.tp, mem_fraction_static=0.5)
    cfg.data.max_length, cfg.data.micro_batch = args.seq + 1, args.batch
    md = init_mezo_distributed(ctx, cfg)
    runner = SGLangRunner(ctx, cfg, md.device, args.model)
    mcfg = MezoConfig(lr=1e-6, eps=1e-3)
    opt = MezoOptimizer(runner.segments(), mcfg, master_weights=False)
    rec = {"world": ctx.world_size, "tp": md.tp_size, "dp": md.dp_size, "losses": [], "grads": [], "step_ms": []}

    def mean_loss(reqs) -> float:
        lp, n = runner.score(reqs)
        s, cnt = md.all_reduce_sum([float(-lp.sum()), float(n.sum())])
        return s / cnt

    for t in range(args.steps):
        batch = random_requests(args.batch, 32000, seed=1000 + t, prompt=(args.seq - 64, args.seq - 64),
                                completion=(64, 64))
        mine = batch[md.dp_rank::md.dp_size]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        s = step_seed(0, t)
        opt.perturb(s, 1.0)
        lp = mean_loss(mine)
        opt.perturb(s, -1.0)
        lm = mean_loss(mine)
        g = (lp - lm) / (2 * mcfg.eps)
        opt.update(StepRecord(step=t, seeds=[s], grads=[g], lr=mcfg.lr, weight_decay=0.0), step_seed(0, t + 1))
        torch.cuda.synchronize()
        rec["step_ms"].append((time.perf_counter() - t0) * 1e3)
        rec["losses"].append([lp, lm])
        rec["grads"].append(g)
    md.barrier()
    if ctx.rank == 0:
        ms = sorted(rec["step_ms"][2:])
        rec["median_step_ms"] = ms[len(ms) // 2]
        rec["examples_per_s"] = args.batch / (rec["median_step_ms"] / 1e3)
        print(json.dumps({k: v for k, v in rec.items() if k != "step_ms"}))
        if args.out:
            Path(args.out).write_text(json.dumps(rec))
    runner.close()
    md.close()
    teardown()  # the replica's TP world: init_mezo_distributed made it, the runner leaves it to its maker


if __name__ == "__main__":
    main()
