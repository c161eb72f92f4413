"""RankContext: who this process is in the job. The ONLY module that reads launcher variables.

Detectors, first match wins:
  torchrun   TORCHELASTIC_RUN_ID set (also inside an sbatch job: torchrun wins over SLURM)
  env        RANK and WORLD_SIZE set by hand (MASTER_ADDR / MASTER_PORT required for world > 1)
  slurm      SLURM_PROCID and SLURM_NTASKS set (srun without torchrun)
  single     none of the above: one process, no process group port at all
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

from mezo_elastic.errors import LaunchEnvError

Launcher = Literal["torchrun", "env", "slurm", "single"]


@dataclass(frozen=True, kw_only=True)
class RankContext:
    """Everything the rest of the package may know about the launch environment."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str | None
    master_port: int | None
    restart_count: int
    run_id: str
    launcher: Launcher
    job_id: str | None = None
    cuda_visible_devices: str | None = None
    agent_store: bool = False  # torchrun's agent hosts the store on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        """True on the one rank that logs and writes files."""
        return self.rank == 0

    @property
    def port_chosen_by_package(self) -> bool:
        """True where no launcher owns the rendezvous port, so this package must pick one."""
        return self.launcher == "slurm" and self.world_size > 1 and "MASTER_PORT" not in self.extra

    def describe(self) -> str:
        """One line for logs and `doctor`."""
        return (
            f"launcher={self.launcher} rank={self.rank}/{self.world_size} local_rank={self.local_rank}/"
            f"{self.local_world_size} node_rank={self.node_rank} master={self.master_addr}:{self.master_port} "
            f"restart={self.restart_count} run_id={self.run_id}"
        )


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise LaunchEnvError(f"{name} is not set; the launcher must set it")
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise LaunchEnvError(f"{name}={raw!r} is not an integer") from None


def _world(env: Mapping[str, str], name: str) -> int:
    """The world size, checked first: the other variables' defaults and ranges depend on it (WORLD_SIZE=0
    was reported as 'LOCAL_RANK is not set', the default that only a world of 1 has)."""
    world = _int(env, name)
    if world < 1:
        raise LaunchEnvError(f"{name}={world} is not allowed; it must be >= 1 (the number of processes in the job)")
    return world


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list such as 'gpu[01-03,7],login1' into host names, in order.

    Raises:
        LaunchEnvError: on a list that does not parse.
    """
    hosts: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?(?:,|$)", nodelist.strip()):
        prefix, ranges = m.group(1), m.group(2)
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise LaunchEnvError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot parse range {part!r}")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}")
    if not hosts:
        raise LaunchEnvError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return hosts


def slurm_port_from_job(job_id: str, base: int = 20000, span: int = 20000) -> int:
    """The first candidate port for a SLURM job: a pure function of the job id, so two jobs differ."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return base + int(digits) % span


def _torchrun(env: Mapping[str, str]) -> RankContext | None:
    if "TORCHELASTIC_RUN_ID" not in env and not ("RANK" in env and "WORLD_SIZE" in env):
        return None
    launcher: Launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
    world = _world(env, "WORLD_SIZE")
    return RankContext(
        rank=_int(env, "RANK"),
        local_rank=_int(env, "LOCAL_RANK", 0 if world == 1 else None),
        world_size=world,
        local_world_size=_int(env, "LOCAL_WORLD_SIZE", world),
        node_rank=_int(env, "GROUP_RANK", 0),
        master_addr=env.get("MASTER_ADDR"),
        master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else None,
        restart_count=_int(env, "TORCHELASTIC_RESTART_COUNT", 0),
        run_id=env.get("TORCHELASTIC_RUN_ID", "env"),
        launcher=launcher,
        job_id=env.get("SLURM_JOB_ID"),
        cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
        agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
    )


def _slurm(env: Mapping[str, str]) -> RankContext | None:
    if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return None
    world = _world(env, "SLURM_NTASKS")
    job_id = env.get("SLURM_JOB_ID", "0")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
    addr = env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0]
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else slurm_port_from_job(job_id)
    return RankContext(
        rank=_int(env, "SLURM_PROCID"),
        local_rank=_int(env, "SLURM_LOCALID", 0),
        world_size=world,
        local_world_size=_int(env, "SLURM_NTASKS_PER_NODE", 0) or _local_tasks(env, world),
        node_rank=_int(env, "SLURM_NODEID", 0),
        master_addr=addr,
        master_port=port,
        restart_count=_int(env, "SLURM_RESTART_COUNT", 0),
        run_id=f"slurm-{job_id}.{env.get('SLURM_STEP_ID', '0')}",
        launcher="slurm",
        job_id=job_id,
        cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
        extra={"MASTER_PORT": env["MASTER_PORT"]} if "MASTER_PORT" in env else {},
    )


def _local_tasks(env: Mapping[str, str], world: int) -> int:
    # SLURM_TASKS_PER_NODE looks like '2(x3),1'; this node's count is the entry for SLURM_NODEID.
    raw = env.get("SLURM_TASKS_PER_NODE")
    if not raw:
        return world
    counts: list[int] = []
    for part in raw.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise LaunchEnvError(f"SLURM_TASKS_PER_NODE={raw!r} does not parse")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = _int(env, "SLURM_NODEID", 0)
    return counts[node] if node < len(counts) else counts[-1]


def _single(env: Mapping[str, str]) -> RankContext:
    return RankContext(
        rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, master_addr=None, master_port=None,
        restart_count=0, run_id="local", launcher="single", cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
    )


DETECTORS: tuple[Callable[[Mapping[str, str]], RankContext | None], ...] = (_torchrun, _slurm)


def validate(ctx: RankContext) -> RankContext:
    """Check the context's numbers; one clear error for the first problem found.

    Raises:
        LaunchEnvError: world size < 1, rank or local rank out of range, a missing master address.
    """
    src = {"torchrun": "RANK", "env": "RANK", "slurm": "SLURM_PROCID", "single": "rank"}[ctx.launcher]
    if ctx.world_size < 1:
        raise LaunchEnvError(f"world size {ctx.world_size} ({ctx.launcher}) must be >= 1")
    if not 0 <= ctx.rank < ctx.world_size:
        raise LaunchEnvError(f"{src}={ctx.rank} is outside [0, {ctx.world_size}) (world size {ctx.world_size})")
    if ctx.local_world_size < 1 or ctx.local_world_size > ctx.world_size:
        raise LaunchEnvError(f"local world size {ctx.local_world_size} must be in [1, {ctx.world_size}]")
    if not 0 <= ctx.local_rank < ctx.local_world_size:
        raise LaunchEnvError(
            f"local rank {ctx.local_rank} is outside [0, {ctx.local_world_size}) (local world size)"
        )
    if ctx.world_size > 1 and (not ctx.master_addr or ctx.master_port is None):
        raise LaunchEnvError(
            f"world size {ctx.world_size} needs MASTER_ADDR and MASTER_PORT (got {ctx.master_addr!r}, "
            f"{ctx.master_port!r}); launch with torchrun or srun, or set both"
        )
    if ctx.master_port is not None and not 0 < ctx.master_port < 65536:
        raise LaunchEnvError(f"MASTER_PORT={ctx.master_port} is outside 1..65535")
    return ctx


def _check_rank_pair(env: Mapping[str, str]) -> None:
    """RANK without WORLD_SIZE (or the reverse) is a half-set launcher environment, not a single process."""
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env) == ("WORLD_SIZE" in env):
        return
    have, missing = ("RANK", "WORLD_SIZE") if "RANK" in env else ("WORLD_SIZE", "RANK")
    raise LaunchEnvError(
        f"{have}={env[have]} is set but {missing} is not; set both (with MASTER_ADDR and MASTER_PORT), "
        f"or neither for a single process"
    )


def detect(env: Mapping[str, str] | None = None) -> RankContext:
    """Build and validate this process's RankContext from the environment.

    Raises:
        LaunchEnvError: the launcher's variables are missing, half set, not integers, or out of range.
    """
    env = os.environ if env is None else env
    _check_rank_pair(env)
    for detector in DETECTORS:
        ctx = detector(env)
        if ctx is not None:
            return validate(ctx)
    if "LOCAL_RANK" in env:  # a lone LOCAL_RANK would be ignored: this process would run as rank 0 of 1
        raise LaunchEnvError(
            f"LOCAL_RANK={env['LOCAL_RANK']} is set but RANK and WORLD_SIZE are not; set all three (with "
            f"MASTER_ADDR and MASTER_PORT), or none for a single process"
        )
    return _single(env)
