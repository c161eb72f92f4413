"""Bring up RankContext + process group the package's way, all-reduce the rank, print one line."""

import os
import sys

from mezo_elastic.cluster import distributed
from mezo_elastic.cluster.rank_context import detect
from mezo_elastic.config import DistConfig
from mezo_elastic.errors import MezoError


def main() -> int:
    try:
        ctx = detect()
        cfg = DistConfig(port_attempts=int(sys.argv[1]) if len(sys.argv) > 1 else 8, port_timeout_s=3.0, init_timeout_s=8.0)
        state = distributed.init_distributed(ctx, cfg, "cpu")
    except MezoError as e:
        os.write(1, f"ERROR {e}\n".encode())  # one write: no interleaving
        return 2
    try:
        total = state.comm(ctx).all_reduce_sum([float(ctx.rank + 1)])[0]
        os.write(1, f"OK launcher={ctx.launcher} rank={ctx.rank} world={ctx.world_size} sum={total:g}\n".encode())
    finally:
        distributed.teardown()
    return 0

if __name__ == "__main__":
    distributed.exit_process(main())  # like the package's entry points: no interpreter finalization after gloo
