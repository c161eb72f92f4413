"""train.early_stop_evals: end a run whose evals have stopped improving.

The metric is the one `export --step best` picks (metrics.BEST_KEYS: MeZO's dev set before the eval set, the task's
metric before loss). Every eval is all-reduced, so the ranks see the same values during a launch, but only rank 0
reads the evals of earlier launches (metrics.jsonl): rank 0 decides and one all-reduce after each eval tells every
rank, so no rank goes on into a step the others left. Stopping changes nothing about the trajectory: a run stops at
an eval step, whose weights are clean (no folded perturbation), so a relaunch with a larger patience or 0 continues
bit-exactly.
"""

from __future__ import annotations

import logging

from mezo_elastic.training.metrics import best_key, eval_lines, evals_since_best

log = logging.getLogger(__name__)


class EarlyStop:
    """Tracks one metric's evals (rank 0) and says when `patience` evals in a row have not beaten the best."""

    def __init__(self, trainer, start: int) -> None:
        self.trainer, self.patience = trainer, trainer.cfg.train.early_stop_evals
        self.key = ""
        self.seen: list[tuple[int, float]] = []  # (step, value), rank 0 only
        if trainer.ctx.is_main and start > 0:  # the evals of the launches before this one, up to where it resumes
            prior = [rec for step, rec in sorted(eval_lines(trainer.out).items()) if step <= start]
            self.key = best_key({k for rec in prior for k in rec})
            self.seen = [(rec["step"], float(rec[self.key])) for rec in prior
                         if isinstance(rec.get(self.key), (int, float))]

    def _stalled(self) -> bool:
        return bool(self.seen) and evals_since_best([v for _, v in self.seen], self.key) >= self.patience

    def _agree(self, stop: bool) -> bool:
        """Rank 0's decision on every rank (a collective: every rank calls it at the same point)."""
        total, = self.trainer.comm.all_reduce_sum([1.0 if stop and self.trainer.ctx.is_main else 0.0])
        return total > 0

    def _best(self) -> tuple[int, float]:
        sign = -1.0 if self.key.endswith("_loss") else 1.0
        return max(self.seen, key=lambda sv: (sign * sv[1] if sv[1] == sv[1] else float("-inf"), -sv[0]))

    def stopped_before(self, start: int) -> bool:
        """At launch: do the run's evals up to `start` (its last logged step) already meet the stop rule (a run
        that stopped early, or one relaunched with the option newly set)? Then it ends where it is."""
        stop = self._agree(self._stalled())
        if stop and self.trainer.ctx.is_main:
            step, value = self._best()
            log.warning("early stop at step %d, where the run is (its evals: %d in a row without beating step %d's "
                        "%s=%.4f): nothing to train; raise train.early_stop_evals (now %d) or set it to 0 to go on",
                        start, evals_since_best([v for _, v in self.seen], self.key), step, self.key, value,
                        self.patience)
        return stop

    def after_eval(self, step: int, metrics: dict[str, float]) -> bool:
        """Record the eval of `step`; True on every rank when the run should end here."""
        if self.trainer.ctx.is_main:
            self.key = self.key or best_key(metrics)
            if self.key in metrics:
                self.seen.append((step, float(metrics[self.key])))
        stop = self._agree(self._stalled())
        if stop and self.trainer.ctx.is_main:
            best, value = self._best()
            log.info("early stop at step %d: %d evals in a row without beating step %d's %s=%.4f "
                     "(train.early_stop_evals=%d)", step, self.patience, best, self.key, value, self.patience)
            self.trainer.metrics.write("early_stop", step, best_step=best, key=self.key, best=value,
                                       patience=self.patience)
        return stop
