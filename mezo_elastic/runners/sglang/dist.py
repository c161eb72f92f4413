"""Process groups for the sglang backend: DP x TP under torchrun, SLURM or a single process.

SGLang builds its TP groups on torch.distributed's *default* group and refuses one whose size is
not tp_size x pp_size. So under WORLD_SIZE = replicas x tp:
  - the default group is this replica's TP world (tp ranks, consecutive global ranks, one node),
    created here from a TCPStore on a port agreed per replica (distributed.agree_on_port), or from
    an in-memory store when tp_size = 1 (no port at all);
  - MeZO's data-parallel traffic (a few scalars a step) goes over a separate gloo group of the
    ranks with the same tp rank, built from the launcher's store (torchrun's agent store).
Replica r holds global ranks [r*tp, (r+1)*tp); all TP ranks of a replica score the same examples,
so data is sliced by `dp_rank` / `dp_size`, never by RANK / WORLD_SIZE.
"""

from __future__ import annotations

import datetime
import logging
import pickle
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from mezo_elastic.cluster.distributed import (
    agree_on_port,
    joined_a_group,
    select_device,
)
from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config
from mezo_elastic.errors import BackendError
from mezo_elastic.runners.sglang.checks import layout, validate_mezo_config

log = logging.getLogger(__name__)
DEFAULT_PORT_OFFSET = 100  # sglang ports start at MASTER_PORT + this when model.sglang_port = 0


@dataclass
class MezoDist:
    """This rank's place in DP x TP and the data-parallel collectives (identity when dp_size = 1)."""

    device: torch.device
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    tp_port: int  # the port the replica's TP store was agreed on (0: none needed, tp_size = 1)
    dp_group: object | None = None  # gloo ProcessGroup over replicas, same tp rank
    _keep: list = field(default_factory=list)  # stores that must outlive the groups

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum float64 scalars over the replicas (every TP rank of a replica gets the same sums)."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.dp_group is not None:
            self.dp_group.allreduce([t]).wait()
        return t.tolist()

    def all_gather_floats(self, values: list[float]) -> list[list[float]]:
        """One float64 vector per replica, in replica order."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.dp_group is None:
            return [t.tolist()]
        out = [torch.empty_like(t) for _ in range(self.dp_size)]
        self.dp_group.allgather([out], [t]).wait()
        return [o.tolist() for o in out]

    def broadcast_object(self, obj: object) -> object:
        """A small object from global rank 0 to every rank: over replica 0's TP world, then each DP group.

        Pickled in memory only (never read from disk)."""
        if self.dp_rank == 0 and self.tp_size > 1:
            box = [obj]
            dist.broadcast_object_list(box, src=0)  # the default group is replica 0's TP world here
            obj = box[0]
        if self.dp_group is None:
            return obj
        data = pickle.dumps(obj) if self.dp_rank == 0 else b""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        size = torch.tensor([len(data)], dtype=torch.int64)
        self.dp_group.broadcast([size], opts).wait()
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(int(size), dtype=torch.uint8)
        self.dp_group.broadcast([buf], opts).wait()
        return pickle.loads(buf.numpy().tobytes()) if self.dp_rank else obj

    def barrier(self) -> None:
        """Wait for every replica (and, through SGLang's default group, every TP rank)."""
        if self.dp_group is not None:
            self.dp_group.barrier().wait()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()

    def close(self) -> None:
        """Drop the DP group and the stores. The default group (the TP world) stays until the caller's
        distributed.teardown(): SGLangRunner.close() destroys only a default group it created itself."""
        self.dp_group = None
        self._keep.clear()


def tp_first_port(ctx: RankContext, cfg: Config) -> int:
    """First candidate port of this rank's replica: replicas of one node start port_attempts apart."""
    base = cfg.model.sglang_port or (ctx.master_port or 29500) + DEFAULT_PORT_OFFSET
    return base + (ctx.local_rank // cfg.model.tp_size) * cfg.dist.port_attempts


def _launcher_store(ctx: RankContext, cfg: Config) -> dist.Store:
    """The store all ranks of the job share: torchrun's agent store, env:// rank 0's, or an agreed one."""
    timeout = datetime.timedelta(seconds=cfg.dist.timeout_s)
    if ctx.launcher in ("torchrun", "env"):
        if ctx.master_addr is None or ctx.master_port is None:
            raise BackendError(f"launcher {ctx.launcher} with world size {ctx.world_size} but no MASTER_ADDR/MASTER_PORT")
        # torchrun's agent hosts the store on MASTER_PORT; by hand (env), rank 0 hosts it as env:// does.
        host = ctx.launcher == "env" and ctx.rank == 0
        return dist.TCPStore(ctx.master_addr, ctx.master_port, world_size=ctx.world_size, is_master=host,
                             timeout=timeout, wait_for_workers=False)
    store, _ = agree_on_port(ctx, cfg.dist)  # slurm without torchrun: the foundation's port agreement
    return store


def _dp_group(ctx: RankContext, cfg: Config, tp_rank: int, dp_rank: int, dp_size: int, keep: list) -> object | None:
    if dp_size == 1:
        return None
    joined_a_group()
    store = _launcher_store(ctx, cfg)
    keep.append(store)
    prefix = dist.PrefixStore(f"mezo_elastic/{ctx.run_id}/{ctx.restart_count}/dp/tp{tp_rank}", store)
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = datetime.timedelta(seconds=cfg.dist.timeout_s)
    # One node: loopback, so gloo never depends on the host name resolving (containers often lack it).
    host = "127.0.0.1" if ctx.local_world_size == ctx.world_size else None
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host) if host
                     else dist.ProcessGroupGloo.create_default_device()]
    return dist.ProcessGroupGloo(prefix, dp_rank, dp_size, opts)


def init_tp_world(ctx: RankContext, cfg: Config, device: torch.device, keep: list, backend: str = "nccl") -> int:
    """Make torch.distributed's default group this replica's TP world; return the agreed port (0 if none).

    Raises:
        BackendError: a default group of another size already exists (e.g. torchrun's whole world).
        PortError: no port could be agreed for the replica.
    """
    tp_rank, tp, _, _ = layout(ctx, cfg.model.tp_size)
    if dist.is_initialized():
        if dist.get_world_size() != tp:
            raise BackendError(
                f"torch.distributed's default group has {dist.get_world_size()} ranks but model.tp_size={tp}: "
                f"SGLang builds its TP groups on the default group, so under model.backend=sglang start "
                f"distributed with runners.sglang.init_mezo_distributed(ctx, cfg), not distributed.init_distributed")
        return 0
    timeout = datetime.timedelta(seconds=cfg.dist.timeout_s)
    kw = {"device_id": device} if backend == "nccl" else {}
    joined_a_group()
    if tp == 1:  # a world of one needs no rendezvous and so no port
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout, **kw)
        return 0
    replica = ctx.rank // tp
    store, port = agree_on_port(ctx, cfg.dist, first=tp_first_port(ctx, cfg),
                                run_id=f"{ctx.run_id}/{ctx.restart_count}/replica{replica}", addr="127.0.0.1",
                                world=tp, rank=tp_rank)
    keep.append(store)
    dist.init_process_group(backend, store=store, rank=tp_rank, world_size=tp, timeout=timeout, **kw)
    log.info("rank %d: replica %d TP world of %d on port %d", ctx.rank, replica, tp, port)
    return port


def init_mezo_distributed(ctx: RankContext, cfg: Config) -> MezoDist:
    """Set up DP x TP for the sglang backend: device, the replica's TP default group, the DP group.

    Call once per process, before make_runner; pass MezoDist.dp_rank / dp_size to the data slicing
    and use its all_reduce_sum / all_gather_floats for MeZO's scalars.

    Raises:
        ConfigError, BackendError, LaunchEnvError, PortError: with the value at fault and what is allowed.
    """
    validate_mezo_config(cfg, ctx)
    device = select_device(ctx, "cuda")
    tp_rank, tp, dp_rank, dp = layout(ctx, cfg.model.tp_size)
    keep: list = []
    group = _dp_group(ctx, cfg, tp_rank, dp_rank, dp, keep)
    port = init_tp_world(ctx, cfg, device, keep)
    return MezoDist(device, tp_rank, tp, dp_rank, dp, port, group, keep)
