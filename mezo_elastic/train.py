"""Entry point. Single node, 2 processes on CPU (the built-in tiny default):

    torchrun --nproc_per_node=2 -m mezo_elastic.train

Your model and data:

    torchrun --nproc_per_node=4 -m mezo_elastic.train --model.path=/models/opt-1.3b \
        --data.path=train.jsonl --train.steps=20000 --train.output_dir=runs/opt

Every key: `python -m mezo_elastic.train --help`.
"""

from __future__ import annotations

import logging
import os
import sys
import time

# Nothing heavy at import time: a Ctrl-C while torch loads must reach cli() as one line, not a traceback.
log = logging.getLogger("mezo_elastic")
_INTERRUPTED: list[int] = []  # SIGINTs seen before the step loop installs its own handler
ERROR_GRACE_S = 1.0  # not a setting: how long a failed rank waits so that its peers' reports are not cut off


def _setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING  # rank 0 talks; the others only warn
    logging.basicConfig(level=level, format=f"[rank{rank}] %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _init(ctx, cfg):
    """Bring up devices and groups for the backend: the world group (hf), or DP x TP (sglang)."""
    from mezo_elastic.cluster import distributed

    if cfg.model.backend == "sglang":
        # SGLang needs the default group to be its own TP world: MeZO's DP traffic gets a separate group.
        from mezo_elastic.runners.sglang.dist import init_mezo_distributed

        comm = init_mezo_distributed(ctx, cfg)
        log.info("%s device=%s tp=%d/%d dp=%d/%d", ctx.describe(), comm.device, comm.tp_rank, comm.tp_size,
                 comm.dp_rank, comm.dp_size)
        return comm
    state = distributed.init_distributed(ctx, cfg.dist, cfg.model.device)
    log.info("%s device=%s backend=%s", ctx.describe(), state.device, state.backend)
    return state.comm(ctx)


def _report(line: str) -> None:
    """One line on stderr in one write, so the lines of ranks sharing a terminal or pipe never interleave."""
    sys.stderr.flush()
    os.write(2, (line + "\n").encode())


def _exit_without_teardown(e: Exception) -> None:
    """After a failure in a multi-rank job a peer may be gone: destroying the process group (or the
    interpreter's own clean-up of it) can then block or abort. Report the error where the elastic
    agent looks for it, print it, and leave at once; the agent restarts or ends the job."""
    import traceback

    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(e)
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Parse the config, bring up the rank, train, tear down. Returns the process exit code.

    Runs under torchelastic's @record (imported here, not at module import: see cli())."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_main)(argv)


def _main(argv: list[str] | None) -> int:
    try:
        from mezo_elastic.cluster import distributed
        from mezo_elastic.cluster.rank_context import detect
        from mezo_elastic.config import parse_args
        from mezo_elastic.errors import MezoError
        from mezo_elastic.training.trainer import StopRequested, Trainer
    except Exception:
        if _INTERRUPTED:  # a Ctrl-C inside one of these imports can leave a module half-loaded (numpy under torch)
            raise KeyboardInterrupt from None  # ... and the next import fails with its own error: still the Ctrl-C
        raise

    try:
        cfg = parse_args(argv)
        ctx = detect()
    except MezoError as e:  # bad config or environment: one line, non-zero, no process group to hang on
        _report(f"mezo_elastic: error: {e}")
        return 2
    _setup_logging(ctx.rank)
    trainer = comm = None
    try:
        comm = _init(ctx, cfg)
        trainer = Trainer(ctx, cfg, comm)
        trainer.run()
        return 0
    except StopRequested as e:
        log.warning("%s", e)
        return 128 + e.signum
    except MezoError as e:
        if _INTERRUPTED:
            raise KeyboardInterrupt from None
        _report(f"mezo_elastic: error (rank {ctx.rank}): {e}")
        if ctx.world_size > 1:  # torchrun ends the peers once one rank exits: let them print the same line
            time.sleep(ERROR_GRACE_S)
        return 1
    except Exception as e:
        if _INTERRUPTED:  # a library turned the KeyboardInterrupt into its own error (transformers' lazy imports)
            raise KeyboardInterrupt from None
        if ctx.world_size > 1:
            _exit_without_teardown(e)
        raise
    finally:
        if trainer is not None:
            trainer.close()
        if comm is not None:
            comm.close()
        distributed.teardown()


def cli() -> None:
    """Run main() and exit with its code (`python -m mezo_elastic.train` and `mezo-train`).

    A process that was part of a group leaves without interpreter finalization, once main() has
    closed its files and destroyed the group (distributed.exit_process says why). Ctrl-C before the
    step loop takes over SIGINT (imports, model loading, data) is one line and exit code 130.
    """
    import signal

    def interrupted(signum, frame):
        _INTERRUPTED.append(signum)
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored (nohup, &)
        signal.signal(signal.SIGINT, interrupted)
    try:
        code = main()
    except Exception:  # e.g. the Ctrl-C left numpy half-loaded under torch's import in main(): the next
        if not _INTERRUPTED:  # import raised ImportError "cannot load module more than once per process"
            raise
        code = None
    except KeyboardInterrupt:  # main()'s finally has torn down; a half-imported torch must not be touched
        code = None
    if code is None:
        _report("mezo_elastic: interrupted (SIGINT) during start-up, before the first step; nothing was trained")
        sys.stdout.flush()
        os._exit(130)
    from mezo_elastic.cluster import distributed

    distributed.exit_process(code)


if __name__ == "__main__":
    cli()
