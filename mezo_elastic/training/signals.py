"""Stop signals: SIGTERM / SIGINT / SIGUSR1 end the run after the current step, agreed by all ranks."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.errors import MezoError

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequested(MezoError):
    """A stop signal ended the run after a durable step; exit code 128 + signum."""

    def __init__(self, signum: int, steps_done: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after {steps_done} steps; the step log is "
                         f"durable (a relaunch of the same command resumes after them)")
        self.signum = signum


class StopSignals:
    """Records the first stop signal; the step loop votes on it so every rank stops after the same step."""

    def __init__(self, ctx: RankContext, grace_s: float, requeue: bool) -> None:
        self.ctx, self.grace_s, self.requeue = ctx, grace_s, requeue
        self.signum: int | None = None
        self.steps_done = 0  # kept current by the step loop, for the line printed when the grace runs out

    def _on_signal(self, signum: int, _frame) -> None:
        self.signum = signum  # acted on at the end of the current step, agreed by all ranks

    def install(self) -> None:
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
        grace = self.grace_s

        def watch() -> None:
            first = os.read(r, 1)[0]
            timer = threading.Timer(grace, self._give_up, args=(first,))
            timer.daemon = True
            timer.start()

        threading.Thread(target=watch, name="stop-watchdog", daemon=True).start()

    def _give_up(self, signum: int) -> None:
        """The grace ran out: say why on the way out (the log and stdout may be blocked: one raw write), exit."""
        try:
            name = signal.Signals(signum).name
        except ValueError:  # the wakeup fd carries one byte: a number, not always one of STOP_SIGNALS
            name = f"signal {signum}"
        line = (f"mezo_elastic: rank {self.ctx.rank}: {name} arrived and step {self.steps_done + 1} had not ended "
                f"{self.grace_s:g} s later (train.stop_grace_s); exiting now with code {128 + signum}, without "
                f"that step: the step log holds {self.steps_done} steps done, and a relaunch of the same command "
                f"resumes after them\n")
        try:
            os.write(2, line.encode())
        finally:
            os._exit(128 + signum)

    @property
    def vote(self) -> float:
        """This rank's stop vote for the step's all-reduce: 1.0 once a signal arrived."""
        return 1.0 if self.signum is not None else 0.0

    def stop(self, steps_done: int) -> StopRequested:
        """The exception that ends the run after `steps_done` steps (SLURM requeue first when asked for by SIGUSR1)."""
        signum = self.signum or signal.SIGTERM  # another rank's vote: this one saw no signal itself
        if signum == signal.SIGUSR1 and self.requeue and self.ctx.is_main and self.ctx.job_id:
            res = subprocess.run(["scontrol", "requeue", self.ctx.job_id], capture_output=True, text=True)
            log.warning("scontrol requeue %s: rc=%d %s", self.ctx.job_id, res.returncode, res.stderr.strip())
        return StopRequested(signum, steps_done)
