"""The checks behind `python -m mezo_elastic.doctor`: each returns facts to print and problems with fixes.

Nothing here starts a process group; doctor.py decides whether one is formed. Every check is bounded:
name resolution runs in a thread with a deadline, port probes are a bind() or a psutil scan.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from mezo_elastic.cluster.distributed import (
    free_port,
    port_holder,
    port_is_free,
    select_device,
)
from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config
from mezo_elastic.errors import LaunchEnvError

# torchrun's defaults: --master_port (static rendezvous) and the c10d --rdzv-endpoint port.
TORCHRUN_DEFAULT_PORTS = (29500, 29400)


@dataclass
class Problem:
    """One thing that would stop (error) or slow/confuse (warning) a training run, with its fix."""

    code: str
    message: str
    fix: str
    severity: str = "error"


@dataclass
class Section:
    """A titled block of the report: printable lines plus the problems found while making them."""

    title: str
    lines: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for gathering over the process group and for --json."""
        return asdict(self)


def check_devices(ctx: RankContext, cfg: Config | None) -> Section:
    """CUDA presence, device count, CUDA_VISIBLE_DEVICES and the device this rank would use."""
    sec = Section("Devices")
    cvd = ctx.cuda_visible_devices
    cuda = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    sec.facts.update(cuda_available=cuda, device_count=count, cuda_visible_devices=cvd)
    sec.lines.append(f"CUDA_VISIBLE_DEVICES: {'(unset)' if cvd is None else repr(cvd)}")
    if cuda:
        names = ", ".join(f"{i}: {torch.cuda.get_device_name(i)}" for i in range(count))
        sec.lines.append(f"CUDA: {count} device(s) visible ({names})")
    else:
        why = "torch is a CPU build" if torch.version.cuda is None else "no GPU visible to this process"
        sec.lines.append(f"CUDA: not available ({why}); training runs on CPU with gloo")
    sglang = cfg is not None and cfg.model.backend == "sglang"
    # The sglang runner always takes the rank's GPU, whatever model.device says.
    want = "cuda" if sglang else (cfg.model.device if cfg is not None else "auto")
    try:
        device = select_device(ctx, want)
    except LaunchEnvError as e:
        sec.facts["device"] = None
        sec.problems.append(Problem("cuda-device", str(e), _device_fix(cuda, count, sglang)))
        return sec
    sec.facts["device"] = str(device)
    sec.lines.append(f"this rank's device: {device} (LOCAL_RANK={ctx.local_rank}, model.device={want})")
    # One visible GPU and several ranks: fine with per-task CUDA_VISIBLE_DEVICES (each its own GPU),
    # but with a node-wide single GPU every rank lands on it.
    if device.type == "cuda" and count == 1 and ctx.local_world_size > 1 and cvd is None:
        sec.problems.append(Problem(
            "gpu-shared", f"{ctx.local_world_size} ranks on this node share the only visible GPU",
            "run one process per GPU (torchrun --nproc_per_node=<GPUs>)", "warning"))
    return sec


def _device_fix(cuda: bool, count: int, sglang: bool) -> str:
    if cuda:
        return (f"launch at most {count} processes per node (torchrun --nproc_per_node={count}), or give each "
                "task its own GPU (srun --gpus-per-task=1)")
    if sglang:
        return "model.backend=sglang needs a GPU: run on a CUDA node, or use --model.backend=hf"
    return "use --model.device=cpu, or run on a node with CUDA (check CUDA_VISIBLE_DEVICES and nvidia-smi)"


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def sglang_range() -> str:
    """The supported sglang versions as a pip specifier (runners.sglang_compat.SUPPORTED is the truth)."""
    from mezo_elastic.runners.sglang.engine import SUPPORTED

    lo, hi = (".".join(map(str, v)) for v in SUPPORTED)
    return f">={lo},<{hi}"


def check_backends(cfg: Config | None) -> Section:
    """torch / CUDA / NCCL / gloo / transformers / sglang: present, versions, supported or not.

    sglang is looked up by its package metadata, never imported (importing it is slow and may touch CUDA).
    """
    sec = Section("Backends")
    nccl = dist.is_available() and dist.is_nccl_available()
    gloo = dist.is_available() and dist.is_gloo_available()
    nccl_v = ".".join(map(str, torch.cuda.nccl.version())) if nccl and torch.cuda.is_available() else None
    sec.facts.update(torch=torch.__version__, cuda_build=torch.version.cuda, nccl=nccl, nccl_version=nccl_v,
                     gloo=gloo, transformers=_dist_version("transformers"), sglang=_dist_version("sglang"))
    sec.lines.append(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})")
    sec.lines.append(f"NCCL: {'yes ' + (nccl_v or '') if nccl else 'no'}   gloo: {'yes' if gloo else 'no'}")
    if not gloo:
        sec.problems.append(Problem("gloo-missing", "torch.distributed has no gloo backend (needed on CPU)",
                                    "install an official torch wheel (pip install torch)"))
    want_cuda = cfg is not None and (cfg.model.device == "cuda" or cfg.dist.backend == "nccl")
    if want_cuda and not nccl:
        sec.problems.append(Problem("nccl-missing", "the config asks for CUDA/NCCL but this torch has no NCCL",
                                    "install a CUDA build of torch, or use --model.device=cpu --dist.backend=gloo"))
    tf = sec.facts["transformers"]
    sec.lines.append(f"transformers: {tf or 'not installed'}")
    if tf is None:
        sec.problems.append(Problem("transformers-missing", "transformers is not installed (the hf backend needs it)",
                                    "pip install 'transformers>=4.45'"))
    sec.lines.append(_sglang_line(sec, sec.facts["sglang"], cfg is not None and cfg.model.backend == "sglang"))
    return sec


def _sglang_line(sec: Section, version: str | None, wanted: bool) -> str:
    # sglang_compat imports no sglang at module level, so this stays cheap on machines without it.
    from mezo_elastic.errors import BackendError
    from mezo_elastic.runners.sglang.engine import INSTALL, check_version

    supported = sglang_range()
    if version is None:
        if wanted:
            sec.problems.append(Problem("sglang-missing", "model.backend=sglang but sglang is not installed", INSTALL))
        return f"sglang: not installed (optional; supported {supported}; needed for model.backend=sglang)"
    try:
        check_version(version)
        ok = True
    except BackendError:
        ok = False
    sec.facts["sglang_supported"] = ok
    if not ok:
        sec.problems.append(Problem("sglang-unsupported", f"sglang {version} is outside {supported}", INSTALL,
                                    "error" if wanted else "warning"))
    return f"sglang: {version} ({'supported' if ok else 'NOT supported'}; supported {supported})"


def resolve(host: str, timeout_s: float) -> list[str] | None:
    """The host's IPv4/IPv6 addresses, or None if it does not resolve within timeout_s."""
    box: list[list[str]] = []

    def work() -> None:
        try:
            box.append(sorted({ai[4][0] for ai in socket.getaddrinfo(host, None)}))
        except OSError:
            pass

    # getaddrinfo has no timeout of its own; a daemon thread bounds it (a stuck resolver cannot hang doctor).
    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout_s)
    return box[0] if box else None


def local_addresses() -> set[str]:
    """Addresses of this host's interfaces (loopback included)."""
    import psutil

    addrs = {"127.0.0.1", "::1"}
    for entries in psutil.net_if_addrs().values():
        addrs.update(a.address.split("%")[0] for a in entries if a.family in (socket.AF_INET, socket.AF_INET6))
    return addrs


def _ancestor_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().parents()}


def _holder_pid(what: str) -> int | None:
    # `what` is _port_line's text: 'held by pid 123 (name)' when psutil could see the owner.
    words = what.split()
    return int(words[3]) if words[:3] == ["held", "by", "pid"] else None


def _port_line(port: int) -> tuple[bool, str]:
    """(free, 'free' or 'held by pid N (name)') for a port on this host."""
    if port_is_free(port):
        return True, "free"
    return False, f"held by {port_holder(port)}"


def check_ports(ctx: RankContext, cfg: Config | None, timeout_s: float) -> Section:
    """The master port (or torchrun's defaults when not launched) and SGLang's port: free, and who holds them."""
    sec = Section("Ports")
    if ctx.master_port is None:
        _check_torchrun_defaults(sec)
    else:
        _check_master(sec, ctx, cfg, timeout_s)
    if cfg is not None and cfg.model.backend == "sglang":
        _check_sglang_port(sec, ctx, cfg)
    return sec


def _check_torchrun_defaults(sec: Section) -> None:
    # Not launched yet: tell the user whether a plain `torchrun` on this host would find its default ports.
    for port in TORCHRUN_DEFAULT_PORTS:
        free, what = _port_line(port)
        sec.facts[f"port_{port}"] = what
        sec.lines.append(f"torchrun default port {port}: {what}")
        if not free:
            sec.problems.append(Problem(
                "torchrun-port-held", f"torchrun's default port {port} is {what}",
                f"launch with `torchrun --standalone ...` (single node, picks a free port) or pass "
                f"--master_port={free_port()} / --rdzv-endpoint=HOST:{free_port()}", "warning"))


def _check_master(sec: Section, ctx: RankContext, cfg: Config | None, timeout_s: float) -> None:
    addr, port = ctx.master_addr or "127.0.0.1", ctx.master_port
    assert port is not None
    addrs = resolve(addr, timeout_s)
    sec.facts.update(master_addr=addr, master_port=port, master_resolves=addrs)
    if addrs is None:
        sec.lines.append(f"MASTER_ADDR {addr}: does not resolve (within {timeout_s:g} s)")
        sec.problems.append(Problem(
            "master-addr", f"MASTER_ADDR={addr!r} does not resolve on this host",
            "set MASTER_ADDR to the first host of the job (SLURM: "
            "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)) or its IP address"))
        return
    local = addr == socket.gethostname() or bool(set(addrs) & local_addresses())
    sec.facts["master_is_local"] = local
    sec.lines.append(f"MASTER_ADDR {addr} -> {', '.join(addrs)} ({'this host' if local else 'another host'})")
    if not local:
        sec.lines.append(f"MASTER_PORT {port}: on another host; the process group check below tests reaching it")
        return
    if ctx.port_chosen_by_package:
        _check_candidates(sec, ctx, cfg)
        return
    free, what = _port_line(port)
    sec.facts["master_port_state"] = what
    holder = _holder_pid(what) if not free else None
    if ctx.launcher == "torchrun" and holder is not None and holder in _ancestor_pids():
        sec.lines.append(f"MASTER_PORT {port}: {what}: this job's torchrun agent store (expected)")
    elif not free and ctx.rank == 0 and ctx.launcher != "torchrun":
        # A given MASTER_PORT is the first candidate of the package's port agreement: training moves every
        # rank to the next free candidate together, so a held one is worth a warning, not a failure.
        sec.lines.append(f"MASTER_PORT {port}: {what}")
        sec.problems.append(Problem(
            "master-port-held", f"MASTER_PORT={port} on {addr} is {what}; the ranks will agree on the next free "
            f"candidate port instead", f"give the job a free port, e.g. MASTER_PORT={free_port()}, or stop "
            f"{what.removeprefix('held by ')}", "warning"))
        _check_candidates(sec, ctx, cfg)
    elif not free and ctx.launcher == "torchrun":
        sec.lines.append(f"MASTER_PORT {port}: {what}, not an ancestor of this worker")
        sec.problems.append(Problem(
            "master-port-foreign", f"MASTER_PORT={port} is {what}, which is not this job's torchrun agent",
            "give each job its own --master_port / --rdzv-endpoint port (or use --standalone)", "warning"))
    else:
        sec.lines.append(f"MASTER_PORT {port}: {what}" + (" (rank 0 hosts it)" if not free else ""))


def _check_candidates(sec: Section, ctx: RankContext, cfg: Config | None) -> None:
    # srun without torchrun: rank 0 walks port_attempts candidates; only all of them held is fatal.
    attempts = cfg.dist.port_attempts if cfg is not None else Config().dist.port_attempts
    first = ctx.master_port
    assert first is not None
    states = {p: _port_line(p) for p in range(first, first + attempts)}
    held = {p: w for p, (free, w) in states.items() if not free}
    sec.facts["candidate_ports_held"] = held
    sec.lines.append(f"candidate ports {first}..{first + attempts - 1} (picked by this package): "
                     f"{attempts - len(held)} free" + (f", held: {held}" if held else ""))
    if ctx.rank == 0 and len(held) == attempts:
        sec.problems.append(Problem(
            "master-port-held", f"all {attempts} candidate ports from {first} are held: {held}",
            f"export MASTER_PORT={free_port()} in the sbatch script, or raise --dist.port_attempts"))


def _check_sglang_port(sec: Section, ctx: RankContext, cfg: Config) -> None:
    # The replica's TP store: tp_rank 0 binds it on 127.0.0.1, walking port_attempts candidates.
    from mezo_elastic.errors import ConfigError
    from mezo_elastic.runners.sglang.dist import layout, tp_first_port

    if cfg.model.tp_size == 1:
        sec.lines.append("SGLang TP port: none needed (model.tp_size=1 uses an in-memory store)")
        return
    try:
        tp_rank, _, _, _ = layout(ctx, cfg.model.tp_size)
    except ConfigError as e:
        sec.problems.append(Problem("sglang-layout", str(e), "choose a model.tp_size that divides both"))
        return
    first, attempts = tp_first_port(ctx, cfg), cfg.dist.port_attempts
    held = {p: w for p in range(first, first + attempts) for free, w in [_port_line(p)] if not free}
    sec.facts["sglang_ports_held"] = held
    source = "model.sglang_port" if cfg.model.sglang_port else "MASTER_PORT + offset, model.sglang_port=0"
    sec.lines.append(f"SGLang TP ports {first}..{first + attempts - 1} ({source}): {attempts - len(held)} free"
                     + (f", held: {held}" if held else ""))
    if tp_rank == 0 and len(held) == attempts:
        sec.problems.append(Problem(
            "sglang-port-held", f"all {attempts} SGLang TP candidate ports from {first} are held: {held}",
            f"set --model.sglang_port to a free range start (e.g. {free_port()}) or raise --dist.port_attempts"))


def check_context(env: dict[str, str] | os._Environ[str]) -> tuple[RankContext | None, Section]:
    """Build the RankContext as training would; a LaunchEnvError becomes a problem with its fix."""
    from mezo_elastic.cluster.rank_context import detect

    sec = Section("Rank context")
    try:
        ctx = detect(env)
    except LaunchEnvError as e:
        sec.lines.append(f"INVALID: {e}")
        sec.problems.append(Problem("launch-env", str(e), _launch_fix(str(e))))
        return None, sec
    sec.lines.append(ctx.describe())
    sec.facts.update(rank=ctx.rank, world_size=ctx.world_size, local_rank=ctx.local_rank, launcher=ctx.launcher,
                     host=socket.gethostname(), pid=os.getpid())
    return ctx, sec


def _launch_fix(message: str) -> str:
    # The error names the bad variable (first, as NAME=value, where there is one); the fix is about that
    # variable and says who should set it.
    var = message.split("=", 1)[0] if "=" in message.split(" ", 1)[0] else ""
    if var == "MASTER_PORT":
        return (f"set MASTER_PORT to a free port in 1..65535 (e.g. MASTER_PORT={free_port()}), or let the launcher "
                f"pick one (torchrun --standalone)")
    if "is set but" in message:
        return (f"unset {var} for a single process, or launch with torchrun or srun, which set RANK, LOCAL_RANK "
                f"and WORLD_SIZE together")
    if var in ("WORLD_SIZE", "SLURM_NTASKS") and "not allowed" in message:
        return (f"{var} is the number of processes (>= 1): let torchrun or srun set it, or unset RANK and "
                f"WORLD_SIZE for a single process")
    if "outside" in message and ("RANK" in message or "SLURM_PROCID" in message or "local rank" in message):
        return ("let the launcher set RANK/LOCAL_RANK/WORLD_SIZE (torchrun or srun); when setting them by hand "
                "keep 0 <= RANK < WORLD_SIZE and 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE")
    if "MASTER_ADDR" in message:
        return "launch with torchrun or srun, or export MASTER_ADDR=<first host> MASTER_PORT=<free port>"
    if "not an integer" in message or "not set" in message:
        return "unset the stray variable or set it to an integer; better, let torchrun/srun set it"
    return "launch with torchrun (or srun) and do not override its RANK/WORLD_SIZE variables"


def check_output_dir(cfg: Config | None) -> Section:
    """train.output_dir: writable here (without creating it), and the free space under it."""
    import shutil
    from pathlib import Path

    sec = Section("Output")
    if cfg is None:
        return sec
    from mezo_elastic.errors import ConfigError
    from mezo_elastic.state.checkpoint import check_output_dir as probe
    from mezo_elastic.state import rundir

    out = Path(cfg.train.output_dir).expanduser().absolute()
    existing = next(p for p in (out, *out.parents) if p.exists())  # the root always exists
    try:  # the very checks training makes first (a real file is created and removed, as there)
        probe(out)
        problem = rundir.refusal(cfg)
    except ConfigError as e:
        problem = str(e)
    writable = problem is None or "holds" not in problem
    free_gib = shutil.disk_usage(existing).free / 2**30
    state = ("a run" if (out / rundir.RUN_MARKER).is_file() else "exists") if existing == out else \
        f"will be created under {existing}"
    sec.facts.update(output_dir=str(out), writable=writable and problem is None, free_gib=round(free_gib, 1))
    sec.lines.append(f"train.output_dir {out}: {state}, {'usable' if problem is None else 'NOT usable'}, "
                     f"{free_gib:.1f} GiB free")
    if problem:
        sec.problems.append(Problem(
            "output-dir", problem,
            "pass --train.output_dir=<a new directory you can write, on a filesystem every node shares>"))
    return sec


def check_model(cfg: Config | None) -> Section:
    """model.path as training checks it before anything is written (the same function): it exists, and is an
    HF model directory or a whole GGUF file (its header against its size; nothing is converted here)."""
    from mezo_elastic.errors import MezoError
    from mezo_elastic.runners.hf.runner import check_model_dir

    sec = Section("Model")
    if cfg is None:
        return sec
    path = cfg.model.path
    if not path:
        sec.lines.append("model.path: empty (the built-in tiny model)")
        return sec
    try:
        check_model_dir(path, gguf_ok=True)
    except MezoError as e:
        sec.lines.append(f"model.path {path}: NOT usable")
        sec.problems.append(Problem("model-path", str(e), _model_fix(str(e))))
        return sec
    sec.facts["model_path"] = path
    sec.lines.append(f"model.path {path}: usable")
    return sec


def _model_fix(message: str) -> str:
    if "truncated" in message or "not a GGUF file" in message or "not a valid GGUF" in message:
        return "download or copy the file again and compare its sha256 with the source's"
    if "pip install" in message:
        return message.rsplit(": ", 1)[-1]
    return ("pass --model.path=<an HF model directory holding config.json, or a .gguf file> (a relative path is "
            "taken from the launch directory)")
