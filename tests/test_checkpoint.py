import errno
import os
import threading

import pytest
import torch

from mezo_elastic.state import checkpoint
from mezo_elastic.zo.optimizer import StepRecord


def _rec(t):
    return StepRecord(step=t, seeds=[t * 7], grads=[0.5 + t], lr=1e-3, weight_decay=0.0, loss=1.0 / (t + 1))


def test_step_log_roundtrip_and_torn_tail(tmp_path):
    log = checkpoint.StepLog(tmp_path / "steps.jsonl")
    for t in range(5):
        log.append(_rec(t))
    log.close()
    assert [r.step for r in log.read()] == list(range(5))
    assert log.read()[3].grads == [3.5]
    with open(tmp_path / "steps.jsonl", "a") as f:  # a crash mid-write leaves half a line
        f.write('{"crc": 1, "rec": "{\\"step\\": 5')
    assert [r.step for r in log.read()] == list(range(5))
    lines = (tmp_path / "steps.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace("0.001", "0.002")  # a flipped value fails its CRC: the log ends before it
    (tmp_path / "steps.jsonl").write_text("\n".join(lines) + "\n")
    assert [r.step for r in log.read()] == [0, 1]


def test_checkpoints_atomic_pruned_and_corruption_detected(tmp_path):
    for step in (10, 20, 30):
        checkpoint.save_checkpoint(tmp_path, step, {"w": torch.full((4,), float(step))}, {}, keep=2)
    assert [s for s, _ in checkpoint.checkpoint_dirs(tmp_path)] == [30, 20]
    (tmp_path / "checkpoints" / "step-40").mkdir()  # no meta.json: not a checkpoint
    assert checkpoint.newest_valid_checkpoint(tmp_path)[0] == 30
    w = tmp_path / "checkpoints" / "step-30" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8])  # truncated
    step, state = checkpoint.newest_valid_checkpoint(tmp_path)
    assert step == 20 and state["w"][0].item() == 20.0


def test_step_log_gap_record_reads_back_and_is_declared(tmp_path):
    log = checkpoint.StepLog(tmp_path / "steps.jsonl")
    log.truncate_to([_rec(t) for t in (0, 1, 5, 6)], gaps=[(2, 5)])
    assert [r.step for r in log.read()] == [0, 1, 5, 6] and log.gaps == [(2, 5)]
    log.truncate_to([_rec(t) for t in (0, 1, 5, 6)])  # the same jump without its gap record ends the log
    assert [r.step for r in log.read()] == [0, 1] and log.gaps == []
    assert [r.step for r in log.records_from(5)] == [5, 6]  # still found past the break


def test_corrupt_checkpoint_quarantined_not_counted_toward_keep(tmp_path):
    for step in (10, 20):
        checkpoint.save_checkpoint(tmp_path, step, {"w": torch.full((4,), float(step))}, {}, keep=2)
    w = tmp_path / "checkpoints" / "step-20" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8])
    assert checkpoint.newest_valid_checkpoint(tmp_path, quarantine=True)[0] == 10
    checkpoint.save_checkpoint(tmp_path, 30, {"w": torch.full((4,), 30.0)}, {}, keep=2)
    assert [s for s, _ in checkpoint.checkpoint_dirs(tmp_path)] == [30, 10]
    assert (tmp_path / "checkpoints" / "corrupt-step-20").is_dir()


@pytest.fixture
def fsync_threads(monkeypatch) -> list[str]:
    """The name of the thread of every os.fsync the step log makes (the real fsync still runs)."""
    calls, real = [], os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (calls.append(threading.current_thread().name), real(fd)))
    return calls


def test_step_log_background_sync_writes_each_record_before_append_returns_and_fsyncs_off_the_step(tmp_path, fsync_threads):
    """checkpoint.log_sync=background: a record is in the file (the OS) when append returns, so another
    reader (or a relaunch after a kill -9) sees it at once; the thread fsyncs them (never on the caller's
    thread); sync_now waits for every record so far; close fsyncs what is left and stops the thread."""
    calls = fsync_threads
    log = checkpoint.StepLog(tmp_path / "steps.jsonl", "background")
    for t in range(50):
        log.append(_rec(t))
        assert [r.step for r in checkpoint.StepLog(tmp_path / "steps.jsonl").read()] == list(range(t + 1))
    log.sync_now()
    assert calls and set(calls) == {"steplog-fsync"}  # group commit: at most one fsync a record, off the loop
    assert len(calls) <= 50
    log.close()
    assert log._thread is None and [r.step for r in checkpoint.StepLog(tmp_path / "steps.jsonl").read()] == list(range(50))
    log.append(_rec(50))  # a log closed and appended to again (a relaunch in one process) starts a new thread
    log.close()
    assert len(checkpoint.StepLog(tmp_path / "steps.jsonl").read()) == 51


def test_step_log_step_sync_fsyncs_on_the_callers_thread(tmp_path, fsync_threads):
    calls = fsync_threads
    log = checkpoint.StepLog(tmp_path / "steps.jsonl", "step")
    for t in range(3):
        log.append(_rec(t))
    assert calls == [threading.current_thread().name] * 3 and log._thread is None
    log.close()


def test_step_log_background_fsync_failure_surfaces_at_the_next_append_and_at_close(tmp_path, monkeypatch):
    """A failed fsync (a full or broken disk) is not swallowed by the thread: the next append, sync_now
    and close raise it."""

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint.os, "fsync", broken)
    log = checkpoint.StepLog(tmp_path / "steps.jsonl", "background")
    log.append(_rec(0))
    with pytest.raises(OSError, match="Input/output error"):
        log.sync_now()
    with pytest.raises(OSError, match="Input/output error"):
        log.append(_rec(1))
    with pytest.raises(OSError, match="Input/output error"):
        log.close()
    assert log._f is None  # closed all the same
