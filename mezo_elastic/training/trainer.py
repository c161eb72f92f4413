"""The training run: setup, resume, the MeZO step loop, eval, checkpoints, signals, final save."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mezo_elastic.cluster.distributed import DataParallel
from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config
from mezo_elastic.data import builtin
from mezo_elastic.data.jsonl import (
    BatchSchedule,
    Example,
    load_tokenizer,
    rank_slice,
    read_jsonl,
    tokenize,
    unknown_token_fraction,
)
from mezo_elastic.data.tasks.metrics import task_metrics
from mezo_elastic.errors import CheckpointError, ConfigError, MezoError
from mezo_elastic.objectives import make_objective
from mezo_elastic.runners import ForwardRunner, make_runner
from mezo_elastic.runners.hf.runner import check_model_dir
from mezo_elastic.state import checkpoint
from mezo_elastic.state import lock as run_lock
from mezo_elastic.training.metrics import MetricsWriter, Progress
from mezo_elastic.zo.optimizer import (
    MezoOptimizer,
    StepRecord,
    lr_at,
    projected_grad,
    seeds_for_step,
    use_master_weights,
)
from mezo_elastic.zo.shaping import shaped_pairs

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# Config keys that shape the trajectory: a resume with other values would not continue the same run.
TRAJECTORY_KEYS = ("seed", "data.seed", "data.objective", "train.batch_size", "mezo.lr", "mezo.eps", "mezo.mode",
                   "mezo.weight_decay", "mezo.schedule", "mezo.warmup_steps", "model.trainable", "mezo.distribution",
                   "mezo.perturbations", "mezo.reward_shaping", "data.reward", "generate.max_new_tokens",
                   "generate.temperature", "generate.stop", "generate.eos", "data.task", "data.num_train",
                   "data.num_dev", "data.sample_seed", "data.verbatim", "data.candidate_score", "data.class_loss",
                   "peft.method", "peft.rank", "peft.alpha", "peft.targets")


class StopRequested(MezoError):
    """A stop signal ended the run after a durable step; exit code 128 + signum."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; the step log is durable")
        self.signum = signum


@dataclass
class RunData:
    train: list[Example]
    eval: list[Example]
    model_path: str
    dev: list[Example] = field(default_factory=list)  # data.task: MeZO's held-out dev set (data.eval_dev)


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def trajectory_diff(before: dict, cfg: Config) -> list[str]:
    """'key: old -> new' for each trajectory setting of `cfg` that differs from run.json's `before`.

    A key newer than the run.json reads as its default: every default keeps the behaviour runs had
    before the key existed (gaussian z, one seed, no adapter, ...).
    """
    old = {k: before[k] if k in before else _get(Config(), k) for k in TRAJECTORY_KEYS}
    return [f"{k}: {old[k]!r} -> {_get(cfg, k)!r}" for k in TRAJECTORY_KEYS if old[k] != _get(cfg, k)]


def resolve_inputs(cfg: Config) -> tuple[str, str, str]:
    """(model path, train path, eval path); the built-in model/task are made on first use."""
    root = Path(cfg.train.output_dir) / "builtin"
    model_path = cfg.model.path or str(builtin.ensure_tiny_model(root))
    if cfg.data.path:
        if cfg.data.task and not cfg.data.eval_path:  # a DatasetDict directory holds the validation split too
            from mezo_elastic.data.tasks.loading import is_dataset_dict

            return model_path, cfg.data.path, cfg.data.path if is_dataset_dict(cfg.data.path) else ""
        return model_path, cfg.data.path, cfg.data.eval_path
    train, evalp = builtin.ensure_task(root, cfg.data.objective)
    return model_path, str(train), cfg.data.eval_path or str(evalp)


def _read(path: str, tok, cfg: Config, split: str = "train") -> list[Example]:
    """A split's examples, tokenised: with data.task MeZO's rows of its `split` (train or eval) of the
    file, else the JSONL file's (reward: prompts leave room for generate.max_new_tokens)."""
    d, where = cfg.data, []
    if d.task:
        from mezo_elastic.data.tasks.protocol import Protocol, render_rows

        rows = render_rows(d.task, path, split, Protocol.of(d), where)
    else:
        rows = read_jsonl(path, d.objective, where)
    max_len = d.max_length
    if d.objective == "reward":
        max_len -= cfg.generate.max_new_tokens
        if max_len < 1:
            raise ConfigError(f"data.max_length={d.max_length} leaves no room for a prompt beside "
                              f"generate.max_new_tokens={cfg.generate.max_new_tokens}; raise data.max_length")
    return tokenize(rows, tok, d.objective, max_len, where, d.verbatim or bool(d.task))


def stored_model_path(model_path: str, out: Path) -> str:
    """The model path as run.json keeps it: relative to the output directory when inside it (so a
    copied run directory still finds its built-in model), else absolute (any launch directory)."""
    model = Path(model_path).resolve()
    try:
        return str(model.relative_to(Path(out).resolve()))
    except ValueError:
        return str(model)


class Trainer:
    """One MeZO run on one rank. Build with a RankContext, Config and the data-parallel comm, then run().

    Data slots are `comm.dp_rank` of `comm.dp_size` (a replica of tp ranks under the sglang backend).
    Global rank 0 writes files; the ranks of data slot 0 take part in gathering the weights to save.
    """

    def __init__(self, ctx: RankContext, cfg: Config, comm: DataParallel) -> None:
        self.ctx, self.cfg, self.comm, self.device = ctx, cfg, comm, comm.device
        self.out = Path(cfg.train.output_dir)
        # Bad paths fail here on every rank, before anything is written (one line each, no traceback).
        checkpoint.check_output_dir(self.out)
        if cfg.model.path:
            check_model_dir(cfg.model.path)
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock = run_lock.acquire(ctx, self.out, cfg.checkpoint.lock_stale_s, comm)
        try:
            self._build(ctx, cfg, comm)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, ctx: RankContext, cfg: Config, comm: DataParallel) -> None:
        self._signal: int | None = None
        model_path, train_path, eval_path = resolve_inputs(cfg)
        self.runner: ForwardRunner = make_runner(ctx, cfg, comm.device, model_path)
        tok = load_tokenizer(model_path, cfg.model.trust_remote_code)
        train = _read(train_path, tok, cfg)
        evals = _read(eval_path, tok, cfg, "eval") if eval_path else []  # data.task: data.num_eval, not cut
        self.data = RunData(train, evals if cfg.data.task else evals[: cfg.data.eval_examples], model_path)
        if cfg.data.task and cfg.data.eval_dev and evals:
            self.data.dev = _read(train_path, tok, cfg, "dev")
        self.objective = make_objective(cfg, self.runner, tok)
        self._warn_unknown_tokens(tok, train_path)
        self.schedule = BatchSchedule(len(self.data.train), cfg.train.batch_size, cfg.data.seed)
        master = use_master_weights(cfg.mezo, cfg.model.dtype, adapter=cfg.peft.method != "none")
        self.opt = MezoOptimizer(self.runner.segments(), cfg.mezo, master)
        self.steplog = checkpoint.StepLog(self.out / "steps.jsonl")
        self.metrics = MetricsWriter(self.out, ctx.is_main, cfg.train.tensorboard)
        self.nonfinite = 0

    def _warn_unknown_tokens(self, tok, train_path: str) -> None:
        """Rank 0, once: text the tokenizer does not know trains on <unk> (e.g. own data on the built-in model)."""
        frac = unknown_token_fraction(self.data.train, tok.unk_token_id)
        if self.ctx.is_main and frac > self.cfg.data.unk_warn_fraction:
            log.warning("%.0f%% of the tokens of %s are the unknown token %r for the tokenizer of %s: that text "
                        "trains on %r, not on its words. Give a model that knows them: --model.path=/path/to/hf-model"
                        "%s", 100 * frac, train_path, tok.unk_token, self.data.model_path, tok.unk_token,
                        " (the built-in model knows 31 words only)" if not self.cfg.model.path else "")


    # -- resume ---------------------------------------------------------------------------------

    def _check_run_json(self) -> None:
        path = self.out / "run.json"
        now = {k: _get(self.cfg, k) for k in TRAJECTORY_KEYS}
        if path.exists():
            diff = trajectory_diff(json.loads(path.read_text()).get("trajectory", {}), self.cfg)
            if diff and self.cfg.checkpoint.resume:
                raise ConfigError(
                    f"{self.out} holds a run with other trajectory settings ({'; '.join(diff)}); "
                    f"use another train.output_dir or the same settings"
                )
        elif self.ctx.is_main:
            checkpoint.atomic_write_text(path, json.dumps(
                {"model_path": stored_model_path(self.data.model_path, self.out), "trajectory": now, "config": self.cfg.to_dict()}, indent=1))

    def _plan_resume(self) -> dict:
        """Rank 0: which checkpoint to load and which logged steps to replay after it.

        A log that ends (torn or corrupt) before the newest valid checkpoint loses the records in
        between, not the weights: resume from the checkpoint, replay the records after it (also those
        past the corrupt line), and write the lost stretch into the log as a gap that export refuses.
        """
        records = self.steplog.read()
        gaps = list(self.steplog.gaps)
        ck = checkpoint.newest_valid_checkpoint(self.out, quarantine=True)  # verified and loaded: kept
        self._ck = ck
        ck_step = ck[0] if ck else 0
        end = records[-1].step + 1 if records else (gaps[-1][1] if gaps else 0)
        if ck_step > end:
            tail = self.steplog.records_from(ck_step)
            gaps.append((end, ck_step))
            log.warning("%s: the records of steps %d..%d are lost (the log is corrupt or cut before checkpoint "
                        "step-%d); resuming from that checkpoint, which holds their result, and %d logged steps "
                        "after it. export cannot rebuild the weights after %d..%d steps (written into the log as "
                        "a gap)", self.steplog.path, end, ck_step - 1, ck_step, len(tail), end + 1, ck_step - 1)
        else:
            tail = [r for r in records if r.step >= ck_step]
        plan = {"ck_step": ck_step if ck else None, "tail": [r.__dict__ for r in tail], "error": None}
        if tail and tail[0].step != ck_step:
            plan["error"] = f"step log has no record for step {ck_step} (first after the checkpoint)"
        self._kept = ([r for r in records if r.step < ck_step] + tail, [g for g in gaps if g[1] <= ck_step])
        return plan

    def resume(self) -> int:
        """Load the newest valid checkpoint, replay the step log after it; return the next step."""
        self._check_run_json()
        if not self.cfg.checkpoint.resume:
            return 0
        # One rank decides, so every rank resumes from the same state; an error reaches every rank.
        plan = self.comm.broadcast_object(self._plan_resume() if self.ctx.is_main else None)
        if plan["error"]:
            raise CheckpointError(plan["error"])
        ck_step, tail = plan["ck_step"], [StepRecord(**d) for d in plan["tail"]]
        if ck_step is not None:
            ck = self._ck if self.ctx.is_main else None
            state = ck[1] if ck else checkpoint.load_checkpoint(self.out / "checkpoints" / f"step-{ck_step}")[1]
            self.load_state(state)
            del state, ck
        self._ck = None
        for rec in tail:
            self.opt.replay(rec)
        if self.ctx.is_main and (self.steplog.path.exists() or self._kept[1]):
            # Always rewritten: it drops a torn tail (which the next append would otherwise turn into
            # a corrupt line in the middle) and steps about to be redone.
            self.steplog.truncate_to(*self._kept)
        start = tail[-1].step + 1 if tail else (ck_step or 0)
        if start:
            log.info("resumed at step %d (checkpoint %s + %d replayed steps)", start, ck_step, len(tail))
        self.comm.barrier()
        return start

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Weights from HF-named tensors; the fp32 master copy too when one is kept."""
        self.runner.load_hf_state_dict(state)
        self.opt.load_master(state)

    def state(self) -> dict[str, torch.Tensor]:
        """HF-named weights at theta (exact fp32 master values when kept). Call on clean weights."""
        return self.runner.hf_state_dict(self.opt.master_state() if self.opt.master else None)

    # -- one step ---------------------------------------------------------------------------------

    def _local(self, step: int) -> list[Example]:
        batch = self.schedule.global_batch(step)
        return [self.data.train[i] for i in rank_slice(batch, self.comm.dp_rank, self.comm.dp_size)]

    def _my_seeds(self, step: int) -> list[int]:
        """This data slot's perturbation seeds of `step` (all of them in dp mode)."""
        k = self.cfg.mezo.perturbations
        seeds = seeds_for_step(self.cfg.seed, step, self.cfg.mezo.mode, self.comm.dp_size, k)
        return seeds if self.cfg.mezo.mode == "dp" else seeds[self.comm.dp_rank * k : (self.comm.dp_rank + 1) * k]

    def _reduce(self, lp: list[float], lm: list[float], n_local: int, stop_vote: float):
        """(L+ per seed, L- per seed, stop votes) over all data slots, in the step log's seed order."""
        k = len(lp)
        if self.cfg.mezo.mode == "dp":
            # sums and counts, so uneven slices weigh right; the last scalar makes every rank stop together
            vals = self.comm.all_reduce_sum(lp + lm + [n_local, stop_vote])
            n = vals[2 * k]
            return [v / n for v in vals[:k]], [v / n for v in vals[k : 2 * k]], vals[-1]
        n_loc = max(n_local, 1)
        rows = self.comm.all_gather_floats([v / n_loc for v in lp + lm] + [stop_vote])
        return ([v for r in rows for v in r[:k]], [v for r in rows for v in r[k : 2 * k]],
                sum(r[-1] for r in rows))

    def step(self, t: int) -> tuple[StepRecord, bool]:
        """Score L+ and L- for each seed, agree on g (and on stopping), return the record; the update is separate."""
        cfg, examples = self.cfg, self._local(t)
        lp, lm = [], []
        for seed in self._my_seeds(t):  # between seeds one sweep moves +eps z_k to -eps z_k, then to z_k+1
            self.opt.perturb(seed, +1.0)
            lp.append(float(self.objective.losses(examples, t).sum()))
            self.opt.perturb(seed, -1.0)
            lm.append(float(self.objective.losses(examples, t).sum()))
        stop_vote = 1.0 if self._signal is not None else 0.0
        plus, minus, stop = self._reduce(lp, lm, len(examples), stop_vote)
        fp, fm = shaped_pairs(plus, minus, cfg.mezo.reward_shaping)
        grads = [projected_grad(a, b, cfg.mezo.eps, cfg.mezo.grad_clip) for a, b in zip(fp, fm)]
        seeds = seeds_for_step(cfg.seed, t, cfg.mezo.mode, self.comm.dp_size, cfg.mezo.perturbations)
        skipped = not all(math.isfinite(g) for g in grads + plus + minus)
        rec = StepRecord(step=t, seeds=seeds, grads=[0.0] * len(grads) if skipped else grads,
                         lr=lr_at(cfg.mezo, t, cfg.train.steps), weight_decay=cfg.mezo.weight_decay,
                         skipped=skipped, loss=(sum(plus) + sum(minus)) / (2 * len(plus)))
        return rec, stop > 0

    def _eval_metrics(self, examples: list[Example], step: int, prefix: str) -> dict[str, float]:
        """`prefix`_loss (and _accuracy, _reward) of `examples`, split over ranks, on clean weights."""
        mine = rank_slice(examples, self.comm.dp_rank, self.comm.dp_size)
        with self.opt.clean_weights():
            sums = self.objective.eval_sums(mine, step)
        keys = sorted(sums)  # the same keys on every rank: they depend on the objective only
        vals = dict(zip(keys + ["n"], self.comm.all_reduce_sum([sums[k] for k in keys] + [len(mine)])))
        n = max(vals["n"], 1)
        out = {f"{prefix}_loss": vals["loss"] / n}
        if "reward" in vals:
            out[f"{prefix}_reward"] = vals["reward"] / n
        if "correct" in vals and vals.get("nonbinary", 0) == 0:
            out[f"{prefix}_accuracy"] = vals["correct"] / n
        return out

    def evaluate(self, step: int) -> dict[str, float]:
        """Loss (accuracy for classification; mean reward, and accuracy when rewards are 0/1, for the
        reward objective) on the eval set, and with data.task on MeZO's dev set (dev_*)."""
        out = self._eval_metrics(self.data.eval, step, "eval")
        if self.data.dev:
            out.update(self._eval_metrics(self.data.dev, step, "dev"))
        out.update(task_metrics(self.cfg.data, out))  # data.task: the metric MeZO reports, by its name
        self.metrics.write("eval", step, **out)
        log.info("eval step %d%s: %s", step, f" ({self.cfg.data.task})" if self.cfg.data.task else "",
                 " ".join(f"{k}={v:.4f}" for k, v in out.items()))
        return out

    def save(self, steps_done: int) -> None:
        """Checkpoint step-N (data slot 0 gathers, rank 0 writes; everyone waits)."""
        with self.opt.clean_weights():
            if self.comm.dp_rank == 0:
                state = self.state()  # a TP replica gathers its shards: all of its ranks take part
                if self.ctx.is_main:
                    checkpoint.save_checkpoint(self.out, steps_done, state, {
                        "world_size": self.ctx.world_size, "model_path": stored_model_path(self.data.model_path, self.out), "time": time.time(),
                    }, self.cfg.checkpoint.keep)
        self.comm.barrier()

    # -- the run ---------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame) -> None:
        self._signal = signum  # acted on at the end of the current step, agreed by all ranks

    def _install_signal_handlers(self) -> None:
        """Stop signals end the run after the current step; a rank that cannot get there still exits.

        Python runs signal handlers only when the main thread is back in the interpreter, so a rank
        blocked in a collective on a dead peer would never see one. The wakeup fd is written by the
        C-level handler at once: a watcher thread reads it and gives the step train.stop_grace_s
        seconds. Every logged step is durable already. A second signal does not cut the grace short:
        under srun, SLURM and torchrun both deliver the same SIGTERM to a worker within milliseconds.
        """
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        grace = self.cfg.train.stop_grace_s

        def watch() -> None:
            first = os.read(r, 1)[0]
            timer = threading.Timer(grace, os._exit, args=(128 + first,))
            timer.daemon = True
            timer.start()

        threading.Thread(target=watch, name="stop-watchdog", daemon=True).start()

    def _needs_clean_after(self, steps_done: int) -> bool:
        c = self.cfg
        return (not c.mezo.fold_next_perturbation or steps_done == c.train.steps
                or (c.checkpoint.every and steps_done % c.checkpoint.every == 0)
                or (c.train.eval_every and steps_done % c.train.eval_every == 0))

    def _maybe_requeue(self, signum: int) -> None:
        if signum == signal.SIGUSR1 and self.cfg.train.requeue_on_signal and self.ctx.is_main and self.ctx.job_id:
            res = subprocess.run(["scontrol", "requeue", self.ctx.job_id], capture_output=True, text=True)
            log.warning("scontrol requeue %s: rc=%d %s", self.ctx.job_id, res.returncode, res.stderr.strip())

    def run(self) -> dict[str, float]:
        """Train from wherever the output directory says, to train.steps; return the summary."""
        self._install_signal_handlers()
        cfg = self.cfg
        start = self.resume()
        prog = Progress(self.ctx.is_main and cfg.train.progress, start, cfg.train.steps, cfg.train.log_every)
        first_eval = self.evaluate(0) if start == 0 and self.data.eval else {}
        t0, tokens, last = time.monotonic(), 0, {}
        for t in range(start, cfg.train.steps):
            rec, stop = self.step(t)
            if rec.skipped:
                self.nonfinite += 1
                if self.nonfinite > cfg.mezo.max_nonfinite:
                    raise MezoError(f"{self.nonfinite} steps had non-finite losses (mezo.max_nonfinite="
                                    f"{cfg.mezo.max_nonfinite}); lower mezo.lr or mezo.eps")
            done = t + 1
            # A stop keeps the fold an undisturbed run would make: the log then replays to the very
            # same weights, and the relaunch continues bit-exactly.
            rec.next_seed = None if self._needs_clean_after(done) else self._my_seeds(t + 1)[0]
            self.opt.update(rec, rec.next_seed)
            if self.ctx.is_main:
                self.steplog.append(rec)
            tokens += 2 * cfg.mezo.perturbations * sum(self.data.train[i].n_tokens for i in self.schedule.global_batch(t))
            el = time.monotonic() - t0
            sps, tps = (done - start) / el, tokens / el
            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                extra = {"reward": -rec.loss} if cfg.data.objective == "reward" else {}
                self.metrics.write("train", done, loss=rec.loss, **extra, projected_grad=rec.grads[0], lr=rec.lr,
                                   skipped=rec.skipped, steps_per_s=sps, tokens_per_s=tps)
            prog.update(t, rec.loss, sps, tps)
            if stop:
                prog.close()
                self._maybe_requeue(self._signal or signal.SIGTERM)
                raise StopRequested(self._signal or signal.SIGTERM, t)
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != cfg.train.steps and self.data.eval:
                last = self.evaluate(done)
            if cfg.checkpoint.every and done % cfg.checkpoint.every == 0:
                self.save(done)
        final = self.evaluate(cfg.train.steps) if self.data.eval else last
        self.opt.clean()
        if cfg.train.save_final:
            self._check_finite_weights()
        if cfg.train.save_final and self.comm.dp_rank == 0:
            self._save_final()
        self.comm.barrier()
        prog.close()
        summary = {"steps": cfg.train.steps, "resumed_from": start, **{f"first_{k}": v for k, v in first_eval.items()},
                   **{f"final_{k}": v for k, v in final.items()}, "nonfinite_steps": self.nonfinite,
                   "seconds": time.monotonic() - t0, "run_seconds": self.metrics.run_seconds()}
        self.metrics.write("summary", cfg.train.steps, **summary)
        log.info("done: %s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
        return summary

    def _check_finite_weights(self) -> None:
        """Refuse the final save, on every rank, when a weight is nan/inf (a diverged run).

        Each rank checks its own trainable tensors (the others never change) and the ranks agree
        through one all-reduce, so no rank goes on into the save while another stops.
        """
        bad = checkpoint.first_nonfinite((seg.name, seg.tensor) for seg in self.runner.segments())
        total, = self.comm.all_reduce_sum([float(bad[1]) if bad else 0.0])
        if total:
            where = f"tensor {bad[0]!r} has {bad[1]} non-finite values" if bad else "another rank's weights are not finite"
            raise CheckpointError(
                f"final save refused: {where} after {self.cfg.train.steps} steps (the run diverged; lower mezo.lr "
                f"or mezo.eps); the step log is intact: export an earlier step with python -m mezo_elastic.export"
            )

    def _save_final(self) -> None:
        """final/: HF-loadable model at theta, written to a temp folder by rank 0 and renamed."""
        import shutil

        tmp, dst = self.out / ".final.tmp", self.out / "final"
        if self.ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        # Clean weights are theta (with master weights: the master cast to the model dtype).
        self.runner.save_pretrained(tmp)  # every rank of data slot 0 joins (TP gather); rank 0 writes
        if self.ctx.is_main:
            shutil.rmtree(dst, ignore_errors=True)
            tmp.rename(dst)

    def close(self) -> None:
        """Close the log and metrics files, release the engine and the output directory's lock."""
        self.steplog.close()
        self.metrics.close()
        self.runner.close()
        self.lock.release()
