"""Process group, ports, devices, scalar collectives, teardown. The loop never touches torch.distributed.

Under torchrun the elastic agent owns MASTER_PORT and its store: workers join it through `env://`.
Everywhere else (srun without torchrun, RANK/WORLD_SIZE by hand) rank 0 hosts the store, and every
rank walks the same candidate list, verifying it joined its own job's store through a run-id key.
The first candidate is MASTER_PORT where one is given (else derived from the SLURM job id), so a
given port held by an unrelated process moves the whole job to the next one instead of failing.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import NoReturn, Protocol

import torch
import torch.distributed as dist

from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import DistConfig
from mezo_elastic.errors import LaunchEnvError, PortError

log = logging.getLogger(__name__)
RUN_ID_KEY = "mezo_elastic/run_id"


def select_device(ctx: RankContext, want: str = "auto") -> torch.device:
    """Map LOCAL_RANK to a device and make it current (before any process group exists).

    Index LOCAL_RANK, or 0 when this task sees exactly one GPU (per-task CUDA_VISIBLE_DEVICES).

    Raises:
        LaunchEnvError: CUDA asked for but absent, or LOCAL_RANK without a matching device.
    """
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LaunchEnvError(
            f"model.device=cuda but CUDA is not available (torch {torch.__version__}, "
            f"CUDA_VISIBLE_DEVICES={ctx.cuda_visible_devices!r}); use --model.device=cpu"
        )
    count = torch.cuda.device_count()
    index = 0 if count == 1 else ctx.local_rank
    if index >= count:
        raise LaunchEnvError(
            f"LOCAL_RANK={ctx.local_rank} has no CUDA device: this process sees {count} device(s) "
            f"(CUDA_VISIBLE_DEVICES={ctx.cuda_visible_devices!r}); run at most {count} processes per node "
            f"or give each task its own GPU"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def backend_for(device: torch.device, cfg: DistConfig) -> str:
    """nccl for CUDA, gloo for CPU, unless the config says otherwise."""
    if cfg.backend != "auto":
        if cfg.backend == "nccl" and device.type != "cuda":
            raise LaunchEnvError("dist.backend=nccl needs CUDA devices; use dist.backend=gloo on CPU")
        return cfg.backend
    return "nccl" if device.type == "cuda" else "gloo"


def port_holder(port: int) -> str:
    """Who listens on a TCP port, for error messages ('pid 123 (python)' or 'unknown')."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    return "a process of another user"
                try:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except Exception:  # psutil may lack permission; the message then just says unknown
        pass
    return "unknown"


def port_is_free(port: int, host: str = "") -> bool:
    """True if a TCP listener could bind this port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A port the kernel considers free now (for tests and the single-node launcher)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _bounded_store(addr: str, port: int, world: int, is_master: bool, timeout: float) -> dist.Store | None:
    """Create a TCPStore, giving up after `timeout` seconds.

    A client whose port is held by a listener that never speaks the store protocol blocks in the
    handshake forever (the store's own timeout does not cover it), so the constructor runs in a
    daemon thread (it releases the GIL); a hung attempt is abandoned and the port counted as foreign.
    """
    box: dict[str, object] = {}

    def build() -> None:
        try:
            box["store"] = dist.TCPStore(addr, port, world_size=world, is_master=is_master, wait_for_workers=False,
                                         timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, OSError) as e:  # bind failed (held) or nothing answered in time
            box["error"] = e

    worker = threading.Thread(target=build, name=f"store-{port}", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    if "store" not in box:
        log.debug("port %d: %s", port, box.get("error", "no answer"))
        return None
    return box["store"]  # type: ignore[return-value]


def _own_store(addr: str, port: int, run_id: str, is_master: bool, world: int, timeout: float) -> dist.Store | None:
    """Join (or host) the store on one candidate port; None if the port belongs to someone else."""
    store = _bounded_store(addr, port, world, is_master, timeout)
    if store is None:
        return None
    if is_master:
        store.set(RUN_ID_KEY, run_id)
        return store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the master sets the key right after binding
        try:
            if store.check([RUN_ID_KEY]):
                if store.get(RUN_ID_KEY).decode() == run_id:
                    return store
                log.warning("port %d hosts another job's store; moving on", port)
                return None
        except (RuntimeError, OSError):
            return None
        time.sleep(0.05)
    return None


def agree_on_port(ctx: RankContext, cfg: DistConfig, first: int | None = None, run_id: str | None = None,
                  addr: str | None = None, world: int | None = None, rank: int | None = None) -> tuple[dist.Store, int]:
    """All ranks settle on the first candidate port whose store is this job's; bounded, with backoff.

    Rank 0 hosts a TCPStore on the first candidate it can bind; the others try the same candidates in
    order and accept a store only if its run-id key equals theirs (a foreign store is never joined).

    Raises:
        PortError: no candidate worked; names the ports tried and their holders.
    """
    first = ctx.master_port if first is None else first
    run_id = ctx.run_id if run_id is None else run_id
    addr = addr or ctx.master_addr or "127.0.0.1"
    world = ctx.world_size if world is None else world
    rank = ctx.rank if rank is None else rank
    assert first is not None
    tried: list[int] = []
    for attempt in range(cfg.port_attempts):
        port = first + attempt
        tried.append(port)
        store = _own_store(addr, port, run_id, rank == 0, world, cfg.port_timeout_s)
        if store is not None:
            if attempt and rank == 0:  # rank 0 bound the port, so the holders it names are on its host
                held = ", ".join(f"{p} held by {port_holder(p)}" for p in tried[:-1])
                log.warning("port agreement: %s; every rank of run %r moved to port %d", held, run_id, port)
            elif attempt:
                log.info("rank %d: ports %s were taken; using %d", rank, tried[:-1], port)
            return store, port
        time.sleep(min(0.05 * 2**attempt, 1.0))  # backoff, so a briefly busy port is not hammered
    holders = ", ".join(f"{p} held by {port_holder(p)}" for p in tried)
    raise PortError(
        f"rank {rank}: no port agreed for run {run_id!r} after {len(tried)} attempts ({holders}); "
        f"set MASTER_PORT to a free port or raise --dist.port_attempts"
    )


def wait_for_world(store: dist.Store, ctx: RankContext, timeout_s: float, key: str = "mezo_elastic/arrived") -> None:
    """Every rank checks in; fail on every rank, with the missing ranks named, if the world is incomplete.

    Without this a rank whose peer died at start-up would sit in init_process_group for the whole
    collective timeout.

    Raises:
        LaunchEnvError: not all ranks arrived within timeout_s.
    """
    store.set(f"{key}/{ctx.rank}", "1")
    count = store.add(key, 1)
    deadline = time.monotonic() + timeout_s
    while count < ctx.world_size:
        if time.monotonic() > deadline:
            missing = [r for r in range(ctx.world_size) if not store.check([f"{key}/{r}"])]
            raise LaunchEnvError(
                f"rank {ctx.rank}: only {count} of {ctx.world_size} ranks arrived within dist.init_timeout_s="
                f"{timeout_s:g}s (missing ranks: {missing[:16]}); a peer failed at start-up or was never launched"
            )
        time.sleep(0.1)
        count = store.add(key, 0)


@dataclass
class DistState:
    """What init_distributed() set up."""

    device: torch.device
    backend: str
    initialized: bool

    def comm(self, ctx: RankContext) -> WorldComm:
        """MeZO's data-parallel collectives over this group: every rank is one data slot."""
        return WorldComm(self.device, ctx.rank, ctx.world_size)


def init_distributed(ctx: RankContext, cfg: DistConfig, device_pref: str = "auto") -> DistState:
    """Select the device, then create the default process group when world size > 1.

    torchrun/env: `env://` (the agent's store). slurm: this package agrees on a port first.
    Single process: no group, no port.
    """
    device = select_device(ctx, device_pref)
    backend = backend_for(device, cfg)
    if ctx.world_size == 1:
        return DistState(device, backend, False)
    joined_a_group()
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    kw = {"device_id": device} if device.type == "cuda" else {}
    if ctx.launcher == "torchrun":  # the agent's store; the agent also ends every worker if one fails
        # The agent's store outlives worker restarts, and gloo's address keys from the previous attempt
        # were seen to be read by the next one (connect refused to a dead worker's port, every restart).
        # A prefix per restart keeps each attempt's keys its own.
        base = dist.TCPStore(ctx.master_addr, ctx.master_port, world_size=ctx.world_size,
                             is_master=not ctx.agent_store and ctx.rank == 0, wait_for_workers=False,
                             timeout=datetime.timedelta(seconds=cfg.init_timeout_s))
        store = dist.PrefixStore(f"mezo_elastic/{ctx.run_id}/attempt_{ctx.restart_count}", base)
        # Connecting gets init_timeout_s, not the collective timeout, so a stuck connect fails soon.
        dist.init_process_group(backend, store=store, rank=ctx.rank, world_size=ctx.world_size,
                                timeout=datetime.timedelta(seconds=cfg.init_timeout_s), **kw)
        dist.distributed_c10d._set_pg_timeout(timeout)  # collectives: dist.timeout_s
        return DistState(device, backend, True)
    # srun or RANK/WORLD_SIZE by hand: MASTER_PORT (given, or derived from the job) is the first candidate.
    store, port = agree_on_port(ctx, cfg)
    log.info("rank %d joined run %s on port %d", ctx.rank, ctx.run_id, port)
    wait_for_world(store, ctx, cfg.init_timeout_s)
    dist.init_process_group(backend, store=store, rank=ctx.rank, world_size=ctx.world_size, timeout=timeout, **kw)
    return DistState(device, backend, True)


_joined_a_group = False  # set by joined_a_group(): this process made or joined a process group


def joined_a_group() -> None:
    """Note that this process is part of a process group (exit_process() then skips finalization)."""
    global _joined_a_group
    _joined_a_group = True


def teardown() -> None:
    """Destroy the default process group if one exists (call in `finally`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End the process with `code`; without interpreter finalization if it was part of a group.

    Call after teardown, with every file closed. torch 2.13's gloo objects outlive
    destroy_process_group: their worker threads can still hold the last collective's tensors, and C++
    objects with running threads get destroyed while the process exits. Either can abort a rank after
    it finished its work (SIGABRT: "Fatal Python error: Aborted", "terminate called without an active
    exception"; seen twice in CI, and in 6 of 24 runs of a 2-rank gloo probe under load, 0 of 40 with
    this), and torchrun then reports the whole job failed. os._exit skips that stage; logs and
    standard streams are flushed first.
    """
    if not _joined_a_group:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class DataParallel(Protocol):
    """Where MeZO's data-parallel traffic goes: this rank's data slot and the scalar collectives.

    hf backend: every rank is a slot (WorldComm, the default group). sglang backend: a replica of
    tp ranks is a slot and the default group is the replica's TP world (runners.sglang_dist.MezoDist).
    """

    device: torch.device
    dp_rank: int
    dp_size: int

    def all_reduce_sum(self, values: list[float]) -> list[float]: ...
    def all_gather_floats(self, values: list[float]) -> list[list[float]]: ...
    def broadcast_object(self, obj: object) -> object: ...
    def barrier(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class WorldComm:
    """DataParallel over torch.distributed's default group; identity without one (single process)."""

    device: torch.device
    dp_rank: int = 0
    dp_size: int = 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few float64 scalars over all ranks."""
        if not dist.is_initialized():
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_gather_floats(self, values: list[float]) -> list[list[float]]:
        """A fixed-length float64 vector from every rank, in rank order."""
        if not dist.is_initialized():
            return [list(values)]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t)
        return [o.tolist() for o in out]

    def broadcast_object(self, obj: object) -> object:
        """A small object from rank 0 to every rank (pickled in memory, never from disk)."""
        if not dist.is_initialized():
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank."""
        if dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        """Nothing of its own to release (teardown() destroys the default group)."""
