"""The training run: the MeZO step loop, checkpoints and the final save.

Setup reads its inputs through inputs.py, resumes through resume.py, evaluates through evaluation.py and
stops on signals through signals.py; this file is the loop itself.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from mezo_elastic.cluster.distributed import DataParallel
from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config
from mezo_elastic.data.jsonl import BatchSchedule, Example, rank_slice
from mezo_elastic.errors import CheckpointError, ConfigError, MezoError
from mezo_elastic.objectives import make_objective
from mezo_elastic.runners import ForwardRunner, make_runner
from mezo_elastic.runners.hf.runner import check_model_dir
from mezo_elastic.state import checkpoint, rundir
from mezo_elastic.state import lock as run_lock
from mezo_elastic.training import evaluation
from mezo_elastic.training import resume as resuming
from mezo_elastic.training.early_stop import EarlyStop
from mezo_elastic.training.inputs import load_inputs, stored_model_path
from mezo_elastic.training.metrics import MetricsWriter, Progress, best_step
from mezo_elastic.training.signals import StopRequested, StopSignals
from mezo_elastic.zo import estimators
from mezo_elastic.zo.factory import make_optimizer
from mezo_elastic.zo.optimizer import StepRecord, lr_at, seeds_for_step, use_master_weights

__all__ = ["StopRequested", "Trainer"]
log = logging.getLogger(__name__)


class Trainer:
    """One MeZO run on one rank. Build with a RankContext, Config and the data-parallel comm, then run().

    Data slots are `comm.dp_rank` of `comm.dp_size` (a replica of tp ranks under the sglang backend).
    Global rank 0 writes files; the ranks of data slot 0 take part in gathering the weights to save.
    """

    def __init__(self, ctx: RankContext, cfg: Config, comm: DataParallel) -> None:
        self.ctx, self.cfg, self.comm, self.device = ctx, cfg, comm, comm.device
        self.out = Path(cfg.train.output_dir)
        # Every check that can be made is made before anything is written (one line per rank, no
        # traceback); the built-in model and task wait in a staging folder until the directory is ours.
        checkpoint.check_output_dir(self.out)
        if cfg.model.path:
            check_model_dir(cfg.model.path, gguf_ok=True)
        rundir.agree(ctx, comm, rundir.refusal, cfg)  # someone else's files, or resume=false on a run
        tok, self.data, stage = load_inputs(cfg, ctx.is_main)
        if cfg.train.early_stop_evals and not self.data.eval:
            stage.discard()
            raise ConfigError(f"train.early_stop_evals={cfg.train.early_stop_evals} needs an eval set; give "
                              "data.eval_path (or data.task's), or set it to 0")
        self.lock = None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock = run_lock.acquire(ctx, self.out, cfg.checkpoint.lock_stale_s, comm)
            rundir.agree(ctx, comm, rundir.past_target, cfg)  # after the lock: a live job's directory is "in use"
            # a resume with other trajectory settings, base model or data: before anything is copied or loaded
            rundir.agree(ctx, comm, lambda c: resuming.run_json_refusal(
                self.out, c, self.data.model_path, self.data.gguf, self.data.files), cfg)
            stage.commit()
            self._build(ctx, cfg, comm, tok)
        except BaseException:
            stage.discard()
            if self.lock is not None:
                self.lock.release()
            raise

    def _build(self, ctx: RankContext, cfg: Config, comm: DataParallel, tok) -> None:
        self.signals = StopSignals(ctx, cfg.train.stop_grace_s, cfg.train.requeue_on_signal)
        t0 = time.monotonic()
        self.runner: ForwardRunner = make_runner(ctx, cfg, comm.device, self.data.model_path)
        # where a short run's wall-clock goes: an engine's start (SGLang: ~25 s at 135M) can outweigh training
        log.info("%s runner ready in %.1f s", cfg.model.backend, time.monotonic() - t0)
        self.objective = make_objective(cfg, self.runner, tok)
        self.schedule = BatchSchedule(len(self.data.train), cfg.train.batch_size, cfg.data.seed)
        master = use_master_weights(cfg.mezo, cfg.model.dtype, adapter=cfg.peft.method != "none")
        self.opt = make_optimizer(self.runner.segments(), cfg.mezo, master, cfg.seed)
        self.steplog = checkpoint.StepLog(self.out / "steps.jsonl", cfg.checkpoint.log_sync)
        self.metrics = MetricsWriter(self.out, ctx.is_main, cfg.train.tensorboard)
        self.nonfinite = 0

    def resume(self) -> int:
        """Load the newest valid checkpoint, replay the step log after it; return the next step."""
        return resuming.resume(self)

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

    def step(self, t: int) -> tuple[StepRecord, bool]:
        """Score the estimator's points, agree on g (and on stopping), return the record; the update is separate."""
        cfg, examples = self.cfg, self._local(t)
        pts = estimators.points(cfg.mezo, self._my_seeds(t))
        self.opt.at_step(t)
        sums = [0.0] * len(pts)
        for seed, sign, slot in pts:  # one sweep moves the weights from each point to the next
            if seed is None:
                self.opt.clean()
            else:
                self.opt.perturb(seed, sign)
            sums[slot] = float(self.objective.losses(examples, t).sum())
        if cfg.mezo.estimator == "gv":
            sums = self._guided_phase(t, examples, sums)
        rows, stop = reduce_losses(self.comm, cfg.mezo.mode, sums, len(examples), self.signals.vote)
        grads, losses, loss = estimators.coefficients(cfg.mezo, rows)
        seeds = seeds_for_step(cfg.seed, t, cfg.mezo.mode, self.comm.dp_size, cfg.mezo.perturbations)
        skipped = not all(math.isfinite(g) for g in grads + losses)
        rec = StepRecord(step=t, seeds=seeds, grads=[0.0] * len(grads) if skipped else grads,
                         lr=lr_at(cfg.mezo, t, cfg.train.steps), weight_decay=cfg.mezo.weight_decay,
                         skipped=skipped, loss=loss)
        return rec, stop > 0

    def _guided_phase(self, t: int, examples: list[Example], sums: list[float]) -> list[float]:
        """gv's second phase: agree on the first phase's losses (one all-reduce, so every rank ranks the
        same numbers), score theta +- eps v along the guiding vector; returns both phases' loss sums."""
        rows, _ = reduce_losses(self.comm, "dp", sums, len(examples), 0.0)
        v = estimators.guided_direction(self.cfg.mezo, self._my_seeds(t), rows[0])
        for sign in (1.0, -1.0):
            self.opt.show(v, sign)
            sums = sums + [float(self.objective.losses(examples, t).sum())]
        return sums

    def evaluate(self, step: int) -> dict[str, float]:
        """Eval metrics at `step` (see evaluation.evaluate), written to metrics.jsonl."""
        return evaluation.evaluate(self, step)

    def save(self, steps_done: int) -> None:
        """Checkpoint step-N (data slot 0 gathers, rank 0 writes; everyone waits)."""
        with self.opt.clean_weights():
            if self.comm.dp_rank == 0:
                state = self.state()  # a TP replica gathers its shards: all of its ranks take part
                if self.ctx.is_main:
                    self.steplog.sync_now()  # a checkpoint never stands ahead of the durable log
                    checkpoint.save_checkpoint(self.out, steps_done, state, {
                        "world_size": self.ctx.world_size, "model_path": stored_model_path(self.data.model_path, self.out), "time": time.time(),
                    }, self.cfg.checkpoint.keep)
        self.comm.barrier()

    # -- the run ---------------------------------------------------------------------------------

    def _needs_clean_after(self, steps_done: int) -> bool:
        c = self.cfg
        return (not c.mezo.fold_next_perturbation or not self.opt.folds_next or steps_done == c.train.steps
                or (c.checkpoint.every and steps_done % c.checkpoint.every == 0)
                or (c.train.eval_every and steps_done % c.train.eval_every == 0))

    def run(self) -> dict[str, float]:
        """Train from wherever the output directory says, to train.steps; return the summary."""
        self.signals.install()
        cfg = self.cfg
        start = self.resume()
        self.signals.steps_done = start
        first_eval = self.evaluate(0) if start == 0 and self.data.eval else {}
        stopper, end = self._early_stop(start, first_eval), cfg.train.steps
        if stopper and 0 < start < end and stopper.stopped_before(start):
            end = start
        meter = _Meter(self, start)
        last: dict[str, float] = {}
        for t in range(start, end):
            rec, stop = self.step(t)
            self._count_nonfinite(rec)
            done = t + 1
            # A stop keeps the fold an undisturbed run would make: the log then replays to the very
            # same weights, and the relaunch continues bit-exactly.
            rec.next_seed = None if self._needs_clean_after(done) else self._my_seeds(t + 1)[0]
            self.opt.update(rec, rec.next_seed)
            if self.ctx.is_main:
                self.steplog.append(rec)
            meter.log(t, rec)
            self.signals.steps_done = done
            if stop:
                meter.progress.close()
                raise self.signals.stop(done)
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != cfg.train.steps and self.data.eval:
                last = self.evaluate(done)
                if stopper and stopper.after_eval(done, last):
                    end = done
            if cfg.checkpoint.every and done % cfg.checkpoint.every == 0:
                self.save(done)
            if done == end:
                break
        return self._finish(start, first_eval, last, meter, end)

    def _early_stop(self, start: int, first_eval: dict) -> EarlyStop | None:
        """train.early_stop_evals' tracker (None when off), fed the step-0 eval."""
        if not self.cfg.train.early_stop_evals:
            return None
        stopper = EarlyStop(self, start)
        if first_eval:
            stopper.after_eval(0, first_eval)
        return stopper

    def _count_nonfinite(self, rec: StepRecord) -> None:
        """Count skipped (non-finite) steps; past mezo.max_nonfinite the run stops on every rank."""
        if rec.skipped:
            self.nonfinite += 1
            if self.nonfinite > self.cfg.mezo.max_nonfinite:
                raise MezoError(f"{self.nonfinite} steps had non-finite losses (mezo.max_nonfinite="
                                f"{self.cfg.mezo.max_nonfinite}); lower mezo.lr or mezo.eps")

    def _finish(self, start: int, first_eval: dict, last: dict, meter: "_Meter", end: int) -> dict[str, float]:
        """Final eval, clean weights, the final save and the summary line; `end` = the steps done (train.steps, or
        fewer where train.early_stop_evals ended the run)."""
        cfg = self.cfg
        early = end < cfg.train.steps
        if first_eval and start == end:  # train.steps=0: the first eval's weights
            final = first_eval
        elif early and last:  # the eval that stopped the run was at these weights
            final = last
        else:
            final = self.evaluate(end) if self.data.eval else last
        self.opt.clean()
        if self.ctx.is_main:
            self.steplog.sync_now()  # the whole log durable before final/ and the summary claim the run's end
        if cfg.train.save_final:
            self._check_finite_weights(end)
        if cfg.train.save_final and self.comm.dp_rank == 0:
            self._save_final()
        self.comm.barrier()
        meter.progress.close()
        summary = {"steps": end, **({"stopped_early": 1} if early else {}), "resumed_from": start,
                   **{f"first_{k}": v for k, v in first_eval.items()},
                   **{f"final_{k}": v for k, v in final.items()}, "nonfinite_steps": self.nonfinite,
                   "seconds": time.monotonic() - meter.t0, "run_seconds": self.metrics.run_seconds()}
        self.metrics.write("summary", end, **summary)
        log.info("done: %s", " ".join(f"{k}={v + 0.0:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in summary.items()))  # + 0.0: a reward loss of -0.0 prints 0
        self._say_best(final, end)
        return summary

    def _say_best(self, final: dict, end: int) -> None:
        """Rank 0: where an earlier eval beat the final one (a run past its best), say which and how to get its
        weights, since the final save holds the last step's."""
        if not (self.ctx.is_main and self.metrics.enabled and self.data.eval):
            return
        try:
            step, key, value = best_step(self.out)
        except ConfigError:
            return
        worse = key in final and (final[key] > value if key.endswith("_loss") else final[key] < value)
        if step != end and worse:
            log.info("best eval: step %d, %s=%.4f (final: %.4f); its weights: python -m mezo_elastic.export --run %s "
                     "--step best --out DIR", step, key, value, final[key], self.out)

    def _check_finite_weights(self, end: int) -> None:
        """Refuse the final save, on every rank, when a weight is nan/inf (a diverged run).

        Each rank checks its own trainable tensors (the others never change) and the ranks agree
        through one all-reduce, so no rank goes on into the save while another stops.
        """
        bad = checkpoint.first_nonfinite((seg.name, seg.tensor) for seg in self.runner.segments())
        total, = self.comm.all_reduce_sum([float(bad[1]) if bad else 0.0])
        if total:
            where = f"tensor {bad[0]!r} has {bad[1]} non-finite values" if bad else "another rank's weights are not finite"
            raise CheckpointError(
                f"final save refused: {where} after {end} steps (the run diverged; lower mezo.lr "
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
        """Close the log (fsynced through its end) and metrics files, release the engine and the output
        directory's lock (also when the log's last fsync failed: that error is raised after)."""
        try:
            self.steplog.close()
        finally:
            self.metrics.close()
            self.runner.close()
            self.lock.release()


def reduce_losses(comm: DataParallel, mode: str, sums: list[float], n_local: int, stop_vote: float):
    """(rows of mean losses, stop votes) over all data slots: one row in dp mode, one per data slot in
    multi_seed mode (the step log's seed order), each in the estimator's slot order.

    `sums` are this slot's loss sums per point slot over `n_local` examples.
    """
    if mode == "dp":
        # sums and counts, so uneven slices weigh right; the last scalar makes every rank stop together
        vals = comm.all_reduce_sum(sums + [n_local, stop_vote])
        n = vals[len(sums)]
        return [[v / n for v in vals[: len(sums)]]], vals[-1]
    n_loc = max(n_local, 1)
    rows = comm.all_gather_floats([v / n_loc for v in sums] + [stop_vote])
    return [r[:-1] for r in rows], sum(r[-1] for r in rows)


class _Meter:
    """Steps/s, tokens/s, the train lines of metrics.jsonl and the progress display of one launch."""

    def __init__(self, trainer: Trainer, start: int) -> None:
        cfg = trainer.cfg
        self.trainer, self.start, self.tokens, self.t0 = trainer, start, 0, time.monotonic()
        self.progress = Progress(trainer.ctx.is_main and cfg.train.progress, start, cfg.train.steps, cfg.train.log_every)

    def log(self, t: int, rec: StepRecord) -> None:
        tr, cfg, done = self.trainer, self.trainer.cfg, t + 1
        forwards = estimators.forwards_per_step(cfg.mezo)
        self.tokens += forwards * sum(tr.data.train[i].n_tokens for i in tr.schedule.global_batch(t))
        el = time.monotonic() - self.t0
        sps, tps = (done - self.start) / el, self.tokens / el
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            extra = {"reward": -rec.loss} if cfg.data.objective == "reward" else {}
            tr.metrics.write("train", done, loss=rec.loss, **extra, projected_grad=rec.grads[0], lr=rec.lr,
                             skipped=rec.skipped, steps_per_s=sps, tokens_per_s=tps)
        self.progress.update(t, rec.loss, sps, tps)
