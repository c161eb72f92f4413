"""Run under torchrun: each replica's TP world is the default group, on a port agreed per replica (gloo)."""
import os
import sys

import torch
import torch.distributed as dist

from mezo_elastic.cluster import distributed
from mezo_elastic.cluster.rank_context import detect
from mezo_elastic.config import Config, ModelConfig
from mezo_elastic.runners.sglang.dist import init_tp_world

ctx = detect()
cfg = Config(model=ModelConfig(backend="sglang", dtype="bfloat16", tp_size=int(sys.argv[1]), sglang_port=int(sys.argv[2])))
keep: list = []
port = init_tp_world(ctx, cfg, torch.device("cpu"), keep, backend="gloo")
t = torch.tensor([float(ctx.rank)])
dist.all_reduce(t)  # sums over this replica's TP world only
os.write(1, f"rank {ctx.rank} port {port} world {dist.get_world_size()} sum {t.item()}\n".encode())  # one write: no interleaving
dist.destroy_process_group()
distributed.exit_process(0)  # like the package's entry points: no interpreter finalization after gloo
