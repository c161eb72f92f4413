"""What train.output_dir holds before a run touches it: nothing, a run, or someone else's files.

A run never writes into a directory it cannot own (docs/elastic.md, "What an output directory may hold"):
  - a directory that does not exist, is empty, or holds only what a launch that stopped before its
    first step leaves (the lock, the built-in model and task) starts a new run;
  - a run (it has run.json) is resumed; with checkpoint.resume=false it is refused, never started
    over or mixed with a new run (give another directory, or delete it yourself);
  - anything else (files that are not a run's) is refused, naming them.
A resumed run that has done more steps than train.steps is refused too: nothing would be trained and
the metrics would be labelled with the wrong step.
Rank 0 decides and every rank learns the verdict, so all ranks stop together.
"""

from __future__ import annotations

from pathlib import Path

from mezo_elastic.cluster.distributed import DataParallel
from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config
from mezo_elastic.errors import ConfigError
from mezo_elastic.state import checkpoint

RUN_MARKER = "run.json"
# What a launch that stopped before its first step may leave: the lock (and a stale one set aside), the
# built-in model and task (copied in once every check passed) and TensorBoard's folder (made with the
# metrics writer), all before run.json is written.
_NOT_STARTED = (".lock", "builtin", "tb")


def steps_done(out: Path) -> int:
    """Steps a run directory has done: the end of its step log or its newest checkpoint, whichever is later."""
    log = checkpoint.StepLog(Path(out) / "steps.jsonl")
    records = log.read(warn=False)
    end = records[-1].step + 1 if records else (log.gaps[-1][1] if log.gaps else 0)
    cks = checkpoint.checkpoint_dirs(out)
    return max(end, cks[0][0] if cks else 0)


def _foreign(out: Path) -> list[str]:
    """Names in `out` that no launch of a run writes before run.json (directories with a slash)."""
    return sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
                  if not (p.name in _NOT_STARTED or p.name.startswith(".lock.stale.")))


def refusal(cfg: Config) -> str | None:
    """Why this launch may not use train.output_dir (items 2 and 3 of docs/elastic.md's rules), or None."""
    out = Path(cfg.train.output_dir)
    if not out.is_dir():
        return _new_run_refusal(cfg)
    if (out / RUN_MARKER).is_file():
        if not cfg.checkpoint.resume:
            return (f"train.output_dir={str(out)!r} holds a run ({steps_done(out)} steps done); "
                    f"checkpoint.resume=false does not start over in a run's directory: give another "
                    f"train.output_dir, or delete {out} yourself to start over")
        return None
    names = _foreign(out)
    if names:
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        return (f"train.output_dir={str(out)!r} holds files that are not a mezo_elastic run ({shown}); a new run "
                f"needs a new or empty directory: give another train.output_dir")
    return _new_run_refusal(cfg)


def _new_run_refusal(cfg: Config) -> str | None:
    """Settings that only continue an old run: refused on a new one (a resume of a run that recorded them
    keeps them; training/resume.py refuses a resume that changes them)."""
    if cfg.mezo.shaped_update == "per_eps":
        # per_eps steps ~1/eps further than ES's rule: a new run with it diverges (eval loss 3.8 -> 74.8 in 20 steps)
        return ("mezo.shaped_update=per_eps is not allowed on a new run: it exists only to continue a run made "
                "before ES's rule (issue 24), whose run.json records it; a new run steps by ES's rule: leave "
                "mezo.shaped_update out (es)")
    return None


def past_target(cfg: Config) -> str | None:
    """Why a resume cannot go on: the run has done more steps than train.steps (or None)."""
    out = Path(cfg.train.output_dir)
    if not cfg.checkpoint.resume or not (out / RUN_MARKER).is_file():
        return None
    done = steps_done(out)
    if done <= cfg.train.steps:
        return None
    return (f"train.output_dir={str(out)!r} has done {done} steps, past train.steps={cfg.train.steps}; nothing to "
            f"train. For the weights after {cfg.train.steps} steps: python -m mezo_elastic.export --run {out} "
            f"--step {cfg.train.steps} --out DIR; to train on, give train.steps >= {done}")


def agree(ctx: RankContext, comm: DataParallel, check, cfg: Config) -> None:
    """Rank 0 runs `check(cfg)`; every rank raises its refusal (ConfigError), or none does."""
    verdict = comm.broadcast_object(check(cfg) if ctx.is_main else None)
    if verdict:
        raise ConfigError(verdict)
