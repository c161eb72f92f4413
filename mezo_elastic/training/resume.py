"""Resume: run.json's trajectory check, and (newest valid checkpoint + the step log after it) -> the next step."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from mezo_elastic.config import Config
from mezo_elastic.errors import CheckpointError
from mezo_elastic.state import checkpoint
from mezo_elastic.training import data_record
from mezo_elastic.training.inputs import stored_model_path
from mezo_elastic.zo.optimizer import StepRecord, use_master_weights

log = logging.getLogger(__name__)
# Config keys that shape the trajectory: a resume with other values would not continue the same run.
# docs/elastic.md has the table of every key, with why each does or does not shape it.
TRAJECTORY_KEYS = ("seed", "data.seed", "data.objective", "train.batch_size", "mezo.lr", "mezo.eps", "mezo.mode",
                   "mezo.weight_decay", "mezo.schedule", "mezo.warmup_steps", "model.trainable", "mezo.distribution",
                   "mezo.perturbations", "mezo.reward_shaping", "data.reward", "generate.max_new_tokens",
                   "generate.temperature", "generate.stop", "generate.eos", "data.task", "data.num_train",
                   "data.num_dev", "data.sample_seed", "data.verbatim", "data.candidate_score", "data.class_loss",
                   "peft.method", "peft.rank", "peft.alpha", "peft.targets", "mezo.estimator",
                   "mezo.shaped_update", "model.dtype", "model.sglang_load_format", "data.max_length",
                   "mezo.min_lr_ratio", "mezo.grad_clip", "mezo.master_weights", "train.steps", "mezo.gv_elite",
                   "mezo.zo_muon_rank", "mezo.zo_muon_interval", "mezo.zo_muon_vector_lr",
                   "mezo.perturb_about", "model.fp32_lm_head")
# What a key missing from an older run.json (and from its config) means, where that is not today's default:
# shaped populations stepped by (f+ - f-) / (2 eps) until mezo.shaped_update existed (issue 24).
LEGACY = {"mezo.shaped_update": "per_eps"}
# Keys that only shape a run in some settings: the lr schedule's length and floor only matter to a decaying
# schedule, the shaped update rule only to a shaped population.
_SCHEDULED = ("train.steps", "mezo.min_lr_ratio")
_WHY = {"train.steps": " (a {} lr schedule decays over train.steps)"}
# Keys whose default changed under runs made before (ES's shaped rule; since 2026-12-07 the estimator's paper's
# settings where a run leaves them out): a refusal names the flag that continues such a run as it was.
_DEFAULT_MOVED = ("mezo.shaped_update", "mezo.lr", "mezo.perturbations", "mezo.distribution", "mezo.reward_shaping")
_MISSING = object()


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _recorded(config: dict | None, dotted: str):
    """The value of `dotted` in run.json's whole config (a dict), or _MISSING."""
    obj = config
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def _old_values(before: dict, config: dict | None) -> dict:
    """The run's value of each trajectory key: its trajectory entry, else its whole config's (a key added to
    the trajectory after the run was made), else LEGACY, else today's default."""
    old = {}
    for k in TRAJECTORY_KEYS:
        value = before[k] if k in before else _recorded(config, k)
        old[k] = value if value is not _MISSING else LEGACY.get(k, _get(Config(), k))
    return old


def _counts(k: str, old: dict, cfg: Config) -> bool:
    """Whether a differing key `k` changes this run (see _SCHEDULED; master weights by what they resolve to)."""
    if k == "mezo.shaped_update":
        return not old["mezo.reward_shaping"] == "none" == cfg.mezo.reward_shaping
    if k == "mezo.gv_elite":  # only the gv estimator reads it
        return "gv" in (old["mezo.estimator"], cfg.mezo.estimator)
    if k.startswith("mezo.zo_muon_"):
        return "zo_muon" in (old["mezo.estimator"], cfg.mezo.estimator)
    if k in _SCHEDULED:
        return not old["mezo.schedule"] == "constant" == cfg.mezo.schedule
    if k == "mezo.master_weights":  # auto and on are the same in bf16: compare what each resolves to
        adapter = cfg.peft.method != "none"
        was = dataclasses.replace(cfg.mezo, master_weights=old[k])
        return use_master_weights(was, cfg.model.dtype, adapter) != use_master_weights(cfg.mezo, cfg.model.dtype, adapter)
    return True


def trajectory_diff(before: dict, cfg: Config, config: dict | None = None) -> list[str]:
    """'key: old -> new' for each trajectory setting of `cfg` that differs from run.json's `before`.

    A key missing from `before` reads as run.json's whole `config` has it, else as its LEGACY value, else
    its default: the behaviour runs had before the key existed (gaussian z, one seed, no adapter, shaped
    steps per eps, ...). Some keys only count where they act (_counts).
    """
    old = _old_values(before, config)
    diff = [k for k in TRAJECTORY_KEYS if old[k] != _get(cfg, k) and _counts(k, old, cfg)]
    out = []
    for k in diff:
        why = _WHY.get(k, "").format(cfg.mezo.schedule if cfg.mezo.schedule != "constant" else old["mezo.schedule"])
        if k in _DEFAULT_MOVED:
            why = f" (the run was made with it: set --{k}={old[k]} to continue it)"
        out.append(f"{k}: {old[k]!r} -> {_get(cfg, k)!r}{why}")
    return out


def _model_diff(before: dict, out: Path, model_path: str) -> list[str]:
    """The base model is the start of the trajectory: another model directory is refused (a GGUF run is
    compared by its file's sha256 instead; its converted directory lives in a cache that may move)."""
    stored = before.get("model_path")
    if not stored or before.get("gguf"):
        return []
    now = Path(model_path).resolve()
    same = [Path(stored)] if Path(stored).is_absolute() else [out / stored, Path(stored)]  # older runs: launch dir
    if any(p.resolve() == now for p in same):
        return []
    return [f"model.path: {str(same[0].resolve())!r} -> {str(now)!r} (if you moved the base model, fix "
            f"model_path in {out / 'run.json'})"]


def run_json_refusal(out: Path, cfg: Config, model_path: str, gguf: dict | None = None,
                     data: dict | None = None) -> str | None:
    """Why this launch may not resume the run in `out`: other trajectory settings, another base model or GGUF
    file, or other data content (None: a new run, or a resume of the same run). Logs a line for each data file
    found at another path with the recorded content, and for a change of backend (both allowed).

    Rank 0 calls it (it alone hashed the data, see data_record.py) after taking the lock; every rank raises
    the verdict (Trainer, through rundir.agree).
    """
    path = out / "run.json"
    if not path.exists() or not cfg.checkpoint.resume:
        return None
    before = json.loads(path.read_text())
    diff = trajectory_diff(before.get("trajectory", {}), cfg, before.get("config"))
    diff += _model_diff(before, out, model_path)
    old_sha, new_sha = (before.get("gguf") or {}).get("sha256"), (gguf or {}).get("sha256")
    if old_sha and old_sha != new_sha:
        diff.append(f"GGUF sha256: {old_sha[:12]}... -> {new_sha[:12] + '...' if new_sha else 'no GGUF'}")
    data_diff, moves = data_record.compare(before.get("data"), data or {}, lambda p: _resolved(out, p))
    if diff:
        return (f"{out} holds a run with other trajectory settings ({'; '.join(diff + data_diff)}); "
                f"use another train.output_dir or the same settings")
    if data_diff:
        return (f"{out} holds a run trained on other data ({'; '.join(data_diff)}); resume with the run's data, "
                f"or use another train.output_dir for a run on this data")
    for move in moves:
        log.info("%s: resuming on it (run.json keeps the recorded path)", move)
    was = _recorded(before.get("config"), "model.backend")
    if was is not _MISSING and was != cfg.model.backend:  # allowed: docs/elastic.md's table says why
        log.info("model.backend: %s -> %s: the same objective, seeds and z, but another engine's float rounding "
                 "of the losses: the steps from here are not bit-identical to those %s would take", was,
                 cfg.model.backend, was)
    return None


def write_run_json(out: Path, cfg: Config, model_path: str, gguf: dict | None = None,
                   data: dict | None = None) -> None:
    """A new run's run.json (rank 0): the base model, the trajectory settings, the whole config; with `gguf`
    the GGUF file's path and sha256, with `data` each data file's path and sha256. An existing one is kept
    as the run wrote it (an older run gets no data hashes added)."""
    path = out / "run.json"
    if path.exists():
        return
    now = {k: _get(cfg, k) for k in TRAJECTORY_KEYS}
    info = {"model_path": stored_model_path(model_path, out), "trajectory": now, "config": cfg.to_dict()}
    if gguf:
        info["gguf"] = gguf
    if data:
        info["data"] = {role: {**d, "path": stored_model_path(d["path"], out)} for role, d in data.items()}
    checkpoint.atomic_write_text(path, json.dumps(info, indent=1))


def _resolved(out: Path, stored: str) -> str:
    """An absolute path from one run.json keeps (relative to the output directory when inside it)."""
    return str(Path(stored) if Path(stored).is_absolute() else (out / stored).resolve())


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
    if ctx.is_main:  # the Trainer refused a resume that does not continue this run before it got here
        write_run_json(out, cfg, trainer.data.model_path, trainer.data.gguf, trainer.data.files)
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
