"""Run under torchrun: the sglang backend's DP group (gloo over torchrun's store) sums and gathers."""
import os

import torch

from mezo_elastic.cluster import distributed
from mezo_elastic.cluster.rank_context import detect
from mezo_elastic.config import Config, ModelConfig
from mezo_elastic.runners.sglang.dist import MezoDist, _dp_group, layout

ctx = detect()
cfg = Config(model=ModelConfig(backend="sglang", dtype="bfloat16", tp_size=1))
tp_rank, tp, dp_rank, dp = layout(ctx, 1)
keep = []
g = _dp_group(ctx, cfg, tp_rank, dp_rank, dp, keep)
md = MezoDist(torch.device("cpu"), tp_rank, tp, dp_rank, dp, 0, g, keep)
line = f"{ctx.rank} {md.all_reduce_sum([1.0, float(ctx.rank)])} {md.all_gather_floats([float(ctx.rank)])}"
os.write(1, (line + "\n").encode())  # one write: lines of several ranks never interleave
md.barrier()
md.close()
distributed.exit_process(0)  # like the package's entry points: no interpreter finalization after gloo
