"""Run state on disk: atomic full checkpoints and the per-step log. Nothing here unpickles.

    output_dir/steps.jsonl                 one record a step, appended + fsynced; each line carries
                                           a CRC32 of its payload, so a torn last line is detected
    output_dir/checkpoints/step-N/         weights after N steps:
        model.safetensors                  HF names (fp32 master values when master weights are kept)
        meta.json                          written LAST: a folder without it is not a checkpoint
    output_dir/run.json                    base model path and config of the run (for export)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zlib
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mezo_elastic.errors import CheckpointError
from mezo_elastic.mezo import StepRecord

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


# -- step log -------------------------------------------------------------------------------------


def _encode(rec: StepRecord) -> str:
    payload = json.dumps(asdict(rec), separators=(",", ":"), allow_nan=True)
    return json.dumps({"crc": zlib.crc32(payload.encode()), "rec": payload}) + "\n"


def _decode(line: str) -> StepRecord | None:
    try:
        outer = json.loads(line)
        payload = outer["rec"]
        if zlib.crc32(payload.encode()) != outer["crc"]:
            return None
        return StepRecord(**json.loads(payload))
    except (ValueError, KeyError, TypeError):
        return None


class StepLog:
    """Append-only, fsynced step log; readers stop at the first torn or corrupt record."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = None

    def read(self) -> list[StepRecord]:
        """Valid records in order. A bad record ends the log (only the last can be torn)."""
        if not self.path.exists():
            return []
        out: list[StepRecord] = []
        with open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                rec = _decode(line) if line.endswith("\n") else None
                if rec is None or (out and rec.step != out[-1].step + 1):
                    log.warning("%s:%d: torn or out-of-order record; the log ends before it", self.path, lineno)
                    break
                out.append(rec)
        return out

    def truncate_to(self, records: list[StepRecord]) -> None:
        """Rewrite the log to exactly these records (drops a torn tail or steps being redone)."""
        atomic_write_text(self.path, "".join(_encode(r) for r in records))

    def append(self, rec: StepRecord) -> None:
        """Append one record and make it durable before returning."""
        if self._f is None:
            self._f = open(self.path, "a")
        self._f.write(_encode(rec))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
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


def newest_valid_checkpoint(output_dir: Path, at_most: int | None = None) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The newest checkpoint that loads (and is <= at_most); a corrupt one is reported and skipped."""
    for step, folder in checkpoint_dirs(output_dir):
        if at_most is not None and step > at_most:
            continue
        try:
            _, state = load_checkpoint(folder)
            return step, state
        except CheckpointError as e:
            log.error("skipping checkpoint: %s", e)
    return None
