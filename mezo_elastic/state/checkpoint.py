"""Run state on disk: atomic full checkpoints and the per-step log. Nothing here unpickles.

    output_dir/steps.jsonl                 one record a step, appended (written to the OS before the step
                                           goes on) and fsynced (by a background thread, or every step:
                                           checkpoint.log_sync); each line carries a CRC32 of its payload,
                                           so a torn last line is detected
    output_dir/checkpoints/step-N/         weights after N steps:
        model.safetensors                  HF names (fp32 master values when master weights are kept)
        meta.json                          written LAST: a folder without it is not a checkpoint
    output_dir/checkpoints/corrupt-step-N/ a checkpoint that failed verification at resume, moved aside
    output_dir/run.json                    base model path and config of the run (for export)

A stretch of the step log lost to corruption, behind a newer checkpoint, is written into the log as
a gap record {"crc", "gap"}: readers accept the jump it declares, and export refuses the steps in it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file

from mezo_elastic.errors import CheckpointError, ConfigError
from mezo_elastic.zo.optimizer import StepRecord

log = logging.getLogger(__name__)
WEIGHTS, META = "model.safetensors", "meta.json"


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output_dir(path: Path, field: str = "train.output_dir", writes_in: Path | None = None) -> None:
    """Fail before anything is written when `path` cannot be an output directory.

    Probes the directory (or the nearest existing parent it would be made in) with an unnamed temporary
    file, so a refusal leaves nothing behind. Every rank can call it.

    Args:
        path: the directory asked for, named in the message as `field` (export passes "--out").
        writes_in: where the files are created when that is not `path` itself (export writes a temp
            sibling and renames it: `path`'s parent); its nearest existing parent is probed.

    Raises:
        ConfigError: the path is a file, sits under a file, or is not writable (naming the reason).
    """
    path = Path(path)
    shown = f"{field}={str(path)!r}"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{shown} is a file, not a directory; give a directory path")
    probe = Path(writes_in) if writes_in is not None else path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{shown} cannot be made: {probe} is a file")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ConfigError(f"{shown} is not writable: {probe}: {e.strerror or e}") from None
        # e.g. /proc: writable by its mode bits, yet creating a file there fails with ENOENT
        raise ConfigError(f"{shown} cannot be made: {probe} does not take new files "
                          f"(creating one fails: {e.strerror or e}); give a directory on a real file system") from None


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int] | None:
    """(name, count of nan/inf elements) of the first tensor that is not all finite, or None."""
    for name, t in named:
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return name, bad
    return None


# -- step log -------------------------------------------------------------------------------------


def _encode(rec: StepRecord) -> str:
    payload = json.dumps(asdict(rec), separators=(",", ":"), allow_nan=True)
    return json.dumps({"crc": zlib.crc32(payload.encode()), "rec": payload}) + "\n"


def _encode_gap(lo: int, hi: int) -> str:
    payload = json.dumps({"lost": [lo, hi]})
    return json.dumps({"crc": zlib.crc32(payload.encode()), "gap": payload}) + "\n"


def _decode(line: str) -> StepRecord | tuple[int, int] | None:
    """A record, a gap (lo, hi) (records of steps lo..hi-1 lost), or None for a torn/corrupt line."""
    try:
        outer = json.loads(line)
        payload = outer["rec"] if "rec" in outer else outer["gap"]
        if zlib.crc32(payload.encode()) != outer["crc"]:
            return None
        if "gap" in outer:
            lo, hi = json.loads(payload)["lost"]
            return int(lo), int(hi)
        return StepRecord(**json.loads(payload))
    except (ValueError, KeyError, TypeError):
        return None


class StepLog:
    """Append-only, fsynced step log; readers stop at the first torn or corrupt record.

    append() writes a record to the OS before it returns, so a killed or crashed process loses nothing it
    appended. fsync (durability against the machine going down) is `sync`'s: "step" fsyncs each record
    before append returns; "background" hands it to a thread that fsyncs whatever is written (group
    commit), so the step loop never waits on the filesystem (a network filesystem's fsync takes
    milliseconds, as long as a small model's step). What a machine crash can then lose is the last records
    (milliseconds' worth), and resume recomputes those steps from the same seeds and batches; before a
    checkpoint is written and at close the log is fsynced through its end (sync_now).

    After read(), `gaps` lists the declared lost stretches [(lo, hi), ...]: the records of steps
    lo..hi-1 are gone (their result lives in a checkpoint at step hi or later).
    """

    def __init__(self, path: Path, sync: str = "step") -> None:
        if sync not in ("step", "background"):
            raise ValueError(f"sync={sync!r}: step or background")
        self.path, self.sync = Path(path), sync
        self._f = None
        self.gaps: list[tuple[int, int]] = []
        self._cv = threading.Condition()
        self._written = self._synced = 0  # records appended / fsynced (background)
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None
        self._closing = False

    def read(self, warn: bool = True) -> list[StepRecord]:
        """Valid records in order. A bad record ends the log (only the last can be torn); `warn`
        reports it (off for a read-only look that every rank takes before the run starts)."""
        self.gaps = []
        if not self.path.exists():
            return []
        out: list[StepRecord] = []
        expect = 0
        with open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                item = _decode(line) if line.endswith("\n") else None
                if isinstance(item, tuple) and item[0] == expect and item[1] > item[0]:
                    self.gaps.append(item)
                    expect = item[1]
                    continue
                if not isinstance(item, StepRecord) or (item.step != expect and (out or self.gaps)):
                    if warn:
                        log.warning("%s:%d: torn or out-of-order record; the log ends before it", self.path, lineno)
                    break
                out.append(item)
                expect = item.step + 1
        return out

    def records_from(self, step: int) -> list[StepRecord]:
        """Records step, step+1, ... wherever they are in the file, also past a corrupt line."""
        found: dict[int, StepRecord] = {}
        if self.path.exists():
            with open(self.path) as f:
                for line in f:
                    item = _decode(line) if line.endswith("\n") else None
                    if isinstance(item, StepRecord) and item.step >= step:
                        found[item.step] = item
        out = []
        while step in found:
            out.append(found[step])
            step += 1
        return out

    def truncate_to(self, records: list[StepRecord], gaps: list[tuple[int, int]] = ()) -> None:
        """Rewrite the log to exactly these records (drops a torn tail or steps being redone), with
        each gap (lo, hi) written where its stretch is missing."""
        pending, lines = sorted(gaps), []
        for r in records:
            while pending and pending[0][1] <= r.step:
                lines.append(_encode_gap(*pending.pop(0)))
            lines.append(_encode(r))
        lines += [_encode_gap(*g) for g in pending]
        atomic_write_text(self.path, "".join(lines))

    def append(self, rec: StepRecord) -> None:
        """Append one record: written to the OS before returning, fsynced now ("step") or by the
        background thread ("background").

        Raises:
            OSError: the write failed, or the background thread's last fsync did (e.g. the disk is full).
        """
        if self._error is not None:
            raise self._error
        if self._f is None:
            self._f = open(self.path, "a")
        self._f.write(_encode(rec))
        self._f.flush()
        if self.sync == "step":
            os.fsync(self._f.fileno())
            return
        with self._cv:
            self._written += 1
            self._cv.notify()
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._fsync_loop, name="steplog-fsync", daemon=True)
            self._thread.start()

    def _fsync_loop(self) -> None:
        """Background: fsync whatever has been written, as often as the filesystem allows."""
        fd = self._f.fileno()
        while True:
            with self._cv:
                while self._synced == self._written and not self._closing:
                    self._cv.wait()
                if self._synced == self._written:  # closing, nothing left
                    return
                target = self._written
            try:
                os.fsync(fd)
            except OSError as e:
                with self._cv:
                    self._error = e
                    self._cv.notify_all()
                return
            with self._cv:
                self._synced = target
                self._cv.notify_all()

    def sync_now(self) -> None:
        """Return once every record appended so far is fsynced (before a checkpoint, at close).

        Raises:
            OSError: the background fsync failed.
        """
        if self._thread is None:
            return
        with self._cv:
            while self._synced < self._written and self._error is None:
                self._cv.wait()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """fsync what is written (background), stop the thread, close the file."""
        try:
            self.sync_now()
        finally:
            if self._thread is not None:
                with self._cv:
                    self._closing = True
                    self._cv.notify_all()
                self._thread.join()
                self._thread = None
            if self._f is not None:
                self._f.close()
                self._f = None


# -- full checkpoints -----------------------------------------------------------------------------


def checkpoint_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every folder that has meta.json, newest first."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith("step-") and d.name[5:].isdigit() and (d / META).is_file():
                found.append((int(d.name[5:]), d))
    return sorted(found, reverse=True)


def save_checkpoint(output_dir: Path, step: int, state: dict[str, torch.Tensor], meta: dict, keep: int) -> Path:
    """Write step-N atomically (temp folder, fsync, rename; meta.json last) and prune to `keep`."""
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS))
    with open(tmp / WEIGHTS, "rb+") as f:
        os.fsync(f.fileno())
    meta = dict(meta, step=step, weights_sha256=sha256_file(tmp / WEIGHTS))
    atomic_write_text(tmp / META, json.dumps(meta, indent=1))
    if final.exists():  # a previous attempt at the same step (e.g. after a crash): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(root)
    for _, old in checkpoint_dirs(output_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read meta.json and the weights of one checkpoint, verifying the weights' sha256.

    Raises:
        CheckpointError: missing or unreadable files, or a hash mismatch.
    """
    try:
        meta = json.loads((folder / META).read_text())
        if sha256_file(folder / WEIGHTS) != meta["weights_sha256"]:
            raise CheckpointError(f"{folder / WEIGHTS}: sha256 does not match meta.json (corrupt or truncated)")
        return meta, load_file(str(folder / WEIGHTS))
    except CheckpointError:
        raise
    except Exception as e:  # any read/parse failure means this checkpoint is unusable
        raise CheckpointError(f"{folder}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def newest_valid_checkpoint(output_dir: Path, at_most: int | None = None,
                            quarantine: bool = False) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The newest checkpoint that loads (and is <= at_most); a corrupt one is reported and skipped.

    With `quarantine` (the resuming rank 0; never export, which only reads), a corrupt checkpoint is
    renamed to checkpoints/corrupt-step-N: it then no longer counts toward checkpoint.keep, so pruning
    cannot delete a valid older checkpoint while keeping it.
    """
    for step, folder in checkpoint_dirs(output_dir):
        if at_most is not None and step > at_most:
            continue
        try:
            _, state = load_checkpoint(folder)
            return step, state
        except CheckpointError as e:
            log.error("skipping checkpoint: %s", e)
            if quarantine:
                aside = folder.with_name(f"corrupt-{folder.name}")
                shutil.rmtree(aside, ignore_errors=True)  # an older corrupt copy of the same step
                os.rename(folder, aside)
                fsync_dir(folder.parent)
                log.error("moved %s aside to %s (delete it once you have looked at it)", folder, aside)
    return None
