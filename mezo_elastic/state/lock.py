"""One job per output directory: a lock file that global rank 0 holds while the job runs.

    output_dir/.lock   {"host", "pid", "pid_started", "run_id", "heartbeat", "started"}; created with
                       O_CREAT|O_EXCL, so of two jobs starting together exactly one creates it; the
                       holder rewrites it (atomic rename) every checkpoint.lock_stale_s / 10 seconds

Rank 0 judges an existing lock and every rank learns the verdict (a broadcast), so a refused job
stops on all ranks at once. A lock does not block:
  - a restart of the same job: the same run id (torchrun's rdzv id, SLURM's job and step id);
  - a job that died without cleaning up, on this host: its pid is gone (or belongs to a newer process);
  - a job on another host whose heartbeat is older than checkpoint.lock_stale_s (a lost node).
Everything else is refused with one line naming the holder. docs/elastic.md covers shared file systems.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mezo_elastic.cluster.distributed import DataParallel
from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.errors import CheckpointError
from mezo_elastic.state.checkpoint import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)
LOCK = ".lock"
# Run ids that do not tell two jobs apart: single processes, RANK/WORLD_SIZE by hand, and torchrun
# without --rdzv-id (its default id is "none"). For these only the pid / heartbeat checks apply.
ANONYMOUS_RUN_IDS = ("local", "env", "none", "")


class OutputDirInUse(CheckpointError):
    """Another live job holds the output directory's lock."""


@dataclass
class Holder:
    """Who holds (or wants) the lock."""

    host: str
    pid: int
    pid_started: float  # the process's start time: a reused pid is not the holder
    run_id: str
    heartbeat: float
    started: float

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, run id {self.run_id!r}"


def _process_started(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def _pid_alive(holder: Holder) -> bool:
    started = _process_started(holder.pid)
    return started > 0 and abs(started - holder.pid_started) < 2.0


def _read(path: Path) -> Holder | None:
    """The lock's holder; None if the file vanished. Raises ValueError on unreadable content."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return Holder(**json.loads(text))


def judge(holder: Holder, me: Holder, stale_s: float, now: float) -> tuple[str, str]:
    """('same', why) | ('stale', why) | ('held', why) for an existing lock seen by `me`."""
    if holder.run_id == me.run_id and me.run_id not in ANONYMOUS_RUN_IDS:
        return "same", f"run id {me.run_id!r} is this job's (a restart)"
    if holder.host == me.host:
        if holder.pid == me.pid or not _pid_alive(holder):
            return "stale", f"pid {holder.pid} on this host is gone"
        return "held", f"pid {holder.pid} is running on this host"
    age = now - holder.heartbeat
    if age > stale_s:
        return "stale", f"its heartbeat is {age:.0f} s old (checkpoint.lock_stale_s={stale_s:g})"
    return "held", f"its heartbeat is {max(age, 0):.0f} s old, within checkpoint.lock_stale_s={stale_s:g}"


class RunLock:
    """The lock of one output directory as rank 0 holds it; a no-op object on the other ranks."""

    def __init__(self, out: Path, me: Holder | None, stale_s: float) -> None:
        self.path, self.me, self.stale_s = Path(out) / LOCK, me, stale_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(self.me)))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.path.parent)
        return True

    def _break(self, seen: str) -> None:
        """Remove a stale lock whose content is `seen`; a lock someone re-created meanwhile is put back."""
        aside = self.path.with_name(f"{LOCK}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text() != seen:  # another job took the stale lock first: it is theirs
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink()

    def acquire(self) -> str | None:
        """Take the lock (rank 0). Returns None when held now, else the refusal message."""
        for _ in range(5):
            if self._create():
                self._start_heartbeat()
                return None
            try:
                seen = self.path.read_text()
                holder = Holder(**json.loads(seen))
            except FileNotFoundError:
                continue  # released between our two calls: try to create it again
            except (ValueError, TypeError):  # half-written by a job that died at once, or not ours
                age = time.time() - self.path.stat().st_mtime
                if age <= self.stale_s:
                    return (f"train.output_dir={str(self.path.parent)!r} has an unreadable lock file {self.path} "
                            f"({age:.0f} s old); if no job uses this directory, delete that file")
                holder, verdict, why = None, "stale", f"unreadable and {age:.0f} s old"
            else:
                verdict, why = judge(holder, self.me, self.stale_s, time.time())
            if verdict == "held":
                return (f"train.output_dir={str(self.path.parent)!r} is in use by another job ({holder.describe()}; "
                        f"{why}); use another train.output_dir, or wait for that job to end (if it is gone, "
                        f"delete {self.path})")
            if verdict == "stale":
                log.warning("taking over the lock of %s from %s: %s", self.path.parent,
                            holder.describe() if holder else "an unknown job", why)
            self._break(seen)
        return f"could not take the lock {self.path}: other jobs kept re-creating it"

    def _start_heartbeat(self) -> None:
        interval = max(self.stale_s / 10, 0.5)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    if _read(self.path) != self.me:  # taken over (we looked stale): never write theirs
                        log.error("lost the lock of %s to another job; stopping its heartbeat", self.path.parent)
                        return
                    self.me.heartbeat = time.time()
                    atomic_write_text(self.path, json.dumps(asdict(self.me)))
                except (OSError, ValueError, TypeError) as e:  # a slow or flaky file system: try again
                    log.warning("lock heartbeat of %s failed: %s", self.path, e)

        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (rank 0; no-op elsewhere)."""
        if self.me is None or self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        try:
            if _read(self.path) == self.me:
                self.path.unlink()
        except (OSError, ValueError, TypeError):
            pass


def acquire(ctx: RankContext, out: Path, stale_s: float, comm: DataParallel) -> RunLock:
    """Rank 0 takes the output directory's lock; every rank learns the verdict.

    Raises:
        OutputDirInUse: on every rank, when another live job holds the directory.
    """
    me = None
    if ctx.is_main:
        now = time.time()
        me = Holder(host=socket.gethostname(), pid=os.getpid(), pid_started=_process_started(os.getpid()),
                    run_id=ctx.run_id, heartbeat=now, started=now)
    lock = RunLock(out, me, stale_s)
    refusal = None
    if ctx.is_main:
        try:
            refusal = lock.acquire()
        except OSError as e:  # answered on every rank below, so no rank waits for a verdict that never comes
            refusal = f"cannot take the lock {lock.path}: {e.strerror or e}"
    refusal = comm.broadcast_object(refusal)
    if refusal:
        raise OutputDirInUse(refusal)
    return lock
