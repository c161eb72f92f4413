"""Resume: run.json's trajectory check, and (newest valid checkpoint + the step log after it) -> the next step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mezo_elastic.config import Config
from mezo_elastic.errors import CheckpointError, ConfigError
from mezo_elastic.state import checkpoint
from mezo_elastic.training.inputs import stored_model_path
from mezo_elastic.zo.optimizer import StepRecord

log = logging.getLogger(__name__)
# Config keys that shape the trajectory: a resume with other values would not continue the same run.
TRAJECTORY_KEYS = ("seed", "data.seed", "data.objective", "train.batch_size", "mezo.lr", "mezo.eps", "mezo.mode",
                   "mezo.weight_decay", "mezo.schedule", "mezo.warmup_steps", "model.trainable", "mezo.distribution",
                   "mezo.perturbations", "mezo.reward_shaping", "data.reward", "generate.max_new_tokens",
                   "generate.temperature", "generate.stop", "generate.eos", "data.task", "data.num_train",
                   "data.num_dev", "data.sample_seed", "data.verbatim", "data.candidate_score", "data.class_loss",
                   "peft.method", "peft.rank", "peft.alpha", "peft.targets", "mezo.estimator",
                   "mezo.shaped_update")
# What a key missing from an older run.json means, where that is not today's default: shaped populations
# stepped by (f+ - f-) / (2 eps) until mezo.shaped_update existed (issue 24).
LEGACY = {"mezo.shaped_update": "per_eps"}


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def trajectory_diff(before: dict, cfg: Config) -> list[str]:
    """'key: old -> new' for each trajectory setting of `cfg` that differs from run.json's `before`.

    A key newer than the run.json reads as its LEGACY value, else its default: the behaviour runs had
    before the key existed (gaussian z, one seed, no adapter, shaped steps per eps, ...). The shaped
    update rule only counts where a run shapes (an unshaped run steps the same under either rule).
    """
    old = {k: before[k] if k in before else LEGACY.get(k, _get(Config(), k)) for k in TRAJECTORY_KEYS}
    diff = [k for k in TRAJECTORY_KEYS if old[k] != _get(cfg, k)]
    if old["mezo.reward_shaping"] == "none" == cfg.mezo.reward_shaping:
        diff = [k for k in diff if k != "mezo.shaped_update"]
    return [f"{k}: {old[k]!r} -> {_get(cfg, k)!r}" + (" (the run was made with it: set --mezo.shaped_update="
                                                      f"{old[k]} to continue it)" if k == "mezo.shaped_update" else "")
            for k in diff]


def check_run_json(out: Path, cfg: Config, model_path: str, is_main: bool, gguf: dict | None = None) -> None:
    """Refuse a resume with other trajectory settings or another GGUF file; a new run's rank 0 writes run.json
    (with `gguf`, the GGUF file's path and sha256 beside the converted directory it loads)."""
    path = out / "run.json"
    if path.exists():
        before = json.loads(path.read_text())
        diff = trajectory_diff(before.get("trajectory", {}), cfg)
        old_sha, new_sha = (before.get("gguf") or {}).get("sha256"), (gguf or {}).get("sha256")
        if old_sha and old_sha != new_sha and cfg.checkpoint.resume:
            diff.append(f"GGUF sha256: {old_sha[:12]}... -> {new_sha[:12] + '...' if new_sha else 'no GGUF'}")
        if diff and cfg.checkpoint.resume:
            raise ConfigError(f"{out} holds a run with other trajectory settings ({'; '.join(diff)}); "
                              f"use another train.output_dir or the same settings")
    elif is_main:
        now = {k: _get(cfg, k) for k in TRAJECTORY_KEYS}
        info = {"model_path": stored_model_path(model_path, out), "trajectory": now, "config": cfg.to_dict()}
        if gguf:
            info["gguf"] = gguf
        checkpoint.atomic_write_text(path, json.dumps(info, indent=1))


class ResumePlan:
    """Rank 0's reading of the output directory: which checkpoint to load and which logged steps to replay.

    A log that ends (torn or corrupt) before the newest valid checkpoint loses the records in
    between, not the weights: resume from the checkpoint, replay the records after it (also those
    past the corrupt line), and write the lost stretch into the log as a gap that export refuses.
    """

    def __init__(self, out: Path, steplog: checkpoint.StepLog) -> None:
        records = steplog.read()
        gaps = list(steplog.gaps)
        self.ck = checkpoint.newest_valid_checkpoint(out, quarantine=True)  # verified and loaded: kept
        ck_step = self.ck[0] if self.ck else 0
        end = records[-1].step + 1 if records else (gaps[-1][1] if gaps else 0)
        if ck_step > end:
            tail = steplog.records_from(ck_step)
            gaps.append((end, ck_step))
            # In steps done, like every other message: the lost records took the run from `end` to `ck_step`.
            log.warning("%s: the records taking the run from %d to %d steps done are lost (the log is corrupt or cut "
                        "before checkpoint step-%d); resuming from that checkpoint, which holds their result, and "
                        "%d logged steps after it. export cannot rebuild the weights after %d..%d steps (written "
                        "into the log as a gap)", steplog.path, end, ck_step, ck_step, len(tail), end + 1, ck_step - 1)
        else:
            tail = [r for r in records if r.step >= ck_step]
        self.shared = {"ck_step": ck_step if self.ck else None, "tail": [r.__dict__ for r in tail], "error": None}
        if tail and tail[0].step != ck_step:
            self.shared["error"] = f"step log has no record for step {ck_step} (first after the checkpoint)"
        # what the rewritten log keeps: records before the checkpoint, the replayed tail, gaps up to it
        self.kept = ([r for r in records if r.step < ck_step] + tail, [g for g in gaps if g[1] <= ck_step])


def resume(trainer) -> int:
    """Load the newest valid checkpoint into `trainer`, replay the step log after it; return the next step."""
    out, cfg, ctx, comm = trainer.out, trainer.cfg, trainer.ctx, trainer.comm
    check_run_json(out, cfg, trainer.data.model_path, ctx.is_main, trainer.data.gguf)
    if not cfg.checkpoint.resume:
        return 0
    # One rank decides, so every rank resumes from the same state; an error reaches every rank.
    plan = ResumePlan(out, trainer.steplog) if ctx.is_main else None
    shared = comm.broadcast_object(plan.shared if plan else None)
    if shared["error"]:
        raise CheckpointError(shared["error"])
    ck_step, tail = shared["ck_step"], [StepRecord(**d) for d in shared["tail"]]
    if ck_step is not None:
        ck = plan.ck if plan else None
        state = ck[1] if ck else checkpoint.load_checkpoint(out / "checkpoints" / f"step-{ck_step}")[1]
        trainer.load_state(state)
        del state, ck
        if plan:
            plan.ck = None
    for rec in tail:
        trainer.opt.replay(rec)
    if plan and (trainer.steplog.path.exists() or plan.kept[1]):
        # Always rewritten: it drops a torn tail (which the next append would otherwise turn into
        # a corrupt line in the middle) and steps about to be redone.
        trainer.steplog.truncate_to(*plan.kept)
    start = tail[-1].step + 1 if tail else (ck_step or 0)
    if start:  # "step" counts steps done, here as in metrics.jsonl, checkpoints/step-N and export --step
        base = f"checkpoint step-{ck_step}" if ck_step is not None else "no checkpoint: the base model"
        log.info("resumed after %d steps (%s + %d replayed steps)", start, base, len(tail))
    comm.barrier()
    return start
