"""`python -m mezo_elastic.doctor`: what a training launch here would see, and the fix for each problem.

    python -m mezo_elastic.doctor                                  # this host, one process
    python -m mezo_elastic.doctor --model.backend=sglang           # check against a training config
    torchrun --nproc_per_node=2 -m mezo_elastic.doctor             # every rank reports, rank 0 summarises
    srun --ntasks-per-node=4 python -m mezo_elastic.doctor         # the same under SLURM

Training flags (`--config FILE`, `--section.key=value`) are accepted so the checks follow the config
(e.g. sglang is required only for model.backend=sglang). Exit status: 0 no errors (warnings allowed),
1 at least one error on some rank, 3 the hard deadline passed (something blocked; the report says where).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import threading
import time
from typing import Any

from mezo_elastic.cluster.distributed import init_distributed, teardown
from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config, parse_args
from mezo_elastic.doctor.checks import (
    Problem,
    Section,
    check_backends,
    check_context,
    check_devices,
    check_model,
    check_output_dir,
    check_ports,
)
from mezo_elastic.doctor.report import render, summary
from mezo_elastic.errors import ConfigError

EXIT_OK, EXIT_PROBLEMS, EXIT_DEADLINE = 0, 1, 3
# Problems after which forming the process group is known to fail: skip it rather than wait out the timeout.
BLOCKING = {"master-port-held", "master-addr", "launch-env"}


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, Config | None, Section]:
    parser = argparse.ArgumentParser(prog="python -m mezo_elastic.doctor", description=__doc__.split("\n")[0],
                                     epilog="Other --section.key=value flags are read as the training config.")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds for each bounded step: name lookup, joining the group, the gather (default 30)")
    parser.add_argument("--json", action="store_true", help="rank 0 prints the report as one JSON object")
    args, rest = parser.parse_known_args(argv)
    sec = Section("Config")
    try:
        cfg: Config | None = parse_args(rest, prog=parser.prog)
        sec.lines.append("training config: " + (" ".join(rest) if rest else "defaults"))
    except ConfigError as e:
        cfg = None
        sec.lines.append(f"INVALID: {e}")
        sec.problems.append(Problem("config", str(e), "fix the flag or file named above (see "
                                    "`python -m mezo_elastic.train --help` and docs/configuration.md)"))
    return args, cfg, sec


def _start_watchdog(seconds: float) -> None:
    # A last resort against a hang in a C++ call we cannot interrupt: report, then leave without cleanup.
    def give_up() -> None:
        sys.stderr.write(f"doctor: gave up after {seconds:.0f} s (hard deadline); a rendezvous or collective "
                         "blocked; run with NCCL_DEBUG=INFO TORCH_DISTRIBUTED_DEBUG=DETAIL for more\n")
        sys.stderr.flush()
        os._exit(EXIT_DEADLINE)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()


def _rank_report(ctx: RankContext | None, sections: list[Section]) -> dict[str, Any]:
    # host and device per rank: on several nodes, rank 0's own sections say nothing about the others.
    device = next((s.facts.get("device") for s in sections if s.title == "Devices"), None)
    return {"rank": ctx.rank if ctx else None, "host": socket.gethostname(), "device": device,
            "describe": ctx.describe() if ctx else "invalid environment", "sections": [s.to_dict() for s in sections]}


def _gather(ctx: RankContext | None, cfg: Config | None, report: dict[str, Any], timeout: float,
            blocked: bool) -> tuple[list[dict[str, Any]] | None, Section]:
    """Form a gloo group (world > 1) and gather every rank's report on every rank; None if that failed."""
    sec = Section("Process group")
    if ctx is None or ctx.world_size == 1:
        sec.lines.append("single process: no process group needed")
        return [report], sec
    if blocked:
        sec.lines.append("not formed: a problem above would make joining fail")
        return None, sec
    import torch.distributed as dist

    base = cfg.dist if cfg is not None else Config().dist
    # Every *timeout_s of the dist config is capped: doctor answers in seconds, not in a training timeout.
    caps = {f.name: min(getattr(base, f.name), timeout) for f in dataclasses.fields(base)
            if f.name.endswith("timeout_s")}
    dcfg = dataclasses.replace(base, backend="gloo", **caps)
    t0 = time.monotonic()
    try:
        init_distributed(ctx, dcfg, "cpu")
        reports: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(reports, report)
        sec.lines.append(f"gloo group of {ctx.world_size} formed and every report gathered in "
                         f"{time.monotonic() - t0:.2f} s")
        return reports, sec
    # Any failure here is reported, never swallowed: every rank's wait is bounded by the same timeout.
    except Exception as e:  # noqa: BLE001
        sec.problems.append(Problem(
            "process-group", f"rank {ctx.rank}: no process group after {time.monotonic() - t0:.1f} s: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "start every rank (the same WORLD_SIZE everywhere), check MASTER_ADDR/MASTER_PORT reach rank 0's host "
            "(firewall, wrong interface: set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME), see docs/troubleshooting.md"))
        return None, sec
    finally:
        teardown()


def _emit(text: str) -> None:
    # One write per rank: torchrun workers run unbuffered, and print()'s separate newline write interleaves.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Run every check, gather over ranks when launched with several, print, return the exit status."""
    args, cfg, cfg_sec = _parse(argv)
    _start_watchdog(4 * args.timeout + 15)
    ctx, ctx_sec = check_context(os.environ)
    sections = [ctx_sec, cfg_sec]
    if ctx is not None:
        sections.append(check_devices(ctx, cfg))
    sections.append(check_backends(cfg))
    if ctx is not None:
        sections.append(check_ports(ctx, cfg, args.timeout))
    sections.append(check_output_dir(cfg))
    sections.append(check_model(cfg))
    blocked = any(p.code in BLOCKING and p.severity == "error" for s in sections for p in s.problems)
    reports, pg_sec = _gather(ctx, cfg, _rank_report(ctx, sections), args.timeout, blocked)
    sections.append(pg_sec)
    if reports is None:  # no summary possible: this rank reports alone
        reports = [_rank_report(ctx, sections)]
    else:
        reports[ctx.rank if ctx else 0] = _rank_report(ctx, sections)
    verdict = summary(reports)
    if ctx is None or ctx.is_main or len(reports) == 1:
        _emit(json.dumps(verdict, indent=1) if args.json else render(sections, reports, verdict))
    else:
        mine = [p for p in verdict["problems"] if ctx.rank in p["ranks"]]
        _emit(f"[doctor rank {ctx.rank}] {ctx.describe()}: {len(mine)} problem(s); rank 0 prints the summary")
    return EXIT_OK if verdict["ok"] else EXIT_PROBLEMS
