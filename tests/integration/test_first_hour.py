"""Issue 13, "what a new user's first hour broke": each item through the real entry points.

Every new message is also looked up in docs/troubleshooting.md as the run printed it (assert_quoted;
this run's temporary paths and host name are replaced by the page's /scratch and node17).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAST, REPO, env, final_weights, max_abs_diff, torchrun, train
from test_troubleshooting_doc import assert_quoted

from mezo_elastic.state.checkpoint import StepLog

pytestmark = pytest.mark.integration
TRAIN = [sys.executable, "-m", "mezo_elastic.train"]


PREFIX = re.compile(r"^(\[rank\d+\] \w+ [\w.]+: |mezo_elastic(\.export)?: error( \(rank \d+\))?: )")


def _quote(line: str, tmp: Path) -> None:
    line = line.replace(str(tmp), "/scratch").replace(socket.gethostname(), "node17")
    if os.environ.get("DUMP_QUOTES"):
        with open(os.environ["DUMP_QUOTES"], "a") as f:
            f.write(line + "\n")
        return
    assert_quoted(line)


def _line(stderr: str, words: str) -> str:
    """The one stderr line holding `words`, without the logger's or the entry point's prefix."""
    hits = [l for l in stderr.splitlines() if words in l]
    assert len(hits) == 1, f"{len(hits)} lines with {words!r} in:\n{stderr[-3000:]}"
    return PREFIX.sub("", hits[0])


def _start(argv: list[str], cwd: Path = REPO, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env(**extra), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(p: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def _export(run: Path, step: int, out: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mezo_elastic.export", "--run", str(run), "--step", str(step),
                           "--out", str(out)], env=env(), cwd=cwd, capture_output=True, text=True, timeout=180)


def _read_only_dir(tmp: Path) -> tuple[Path, callable] | None:
    """A directory writes fail in: a read-only tmpfs (root can mount), else chmod 555 (non-root)."""
    ro = tmp / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        return ro, lambda: ro.chmod(0o755)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        return None
    return ro, lambda: subprocess.run(["umount", str(ro)], check=False)


# -- items 2, 3, 4: bad input is one line, exit non-zero, nothing written ------------------------------


def test_bad_input_one_line_nonzero_nothing_written(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory\n")
    cases = {  # name: (flags, environment, rc, words)
        "lr_nan": (["--mezo.lr=nan"], {}, 2, "mezo.lr=nan is not allowed; it must be a finite number"),
        "eps_inf": (["--mezo.eps=inf"], {}, 2, "mezo.eps=inf is not allowed; it must be a finite number"),
        "rank_alone": ([], {"RANK": "1"}, 2, "RANK=1 is set but WORLD_SIZE is not"),
        "world_alone": ([], {"WORLD_SIZE": "2"}, 2, "WORLD_SIZE=2 is set but RANK is not"),
        "file": ([f"--train.output_dir={a_file}"], {}, 1, "is a file, not a directory"),
    }
    ro = _read_only_dir(tmp_path)
    if ro:
        cases["read_only"] = ([f"--train.output_dir={ro[0] / 'run'}"], {}, 1, "is not writable")
    try:
        procs = {k: _start(TRAIN + [f"--train.output_dir={tmp_path / k}", *flags, "--train.progress=false"], **e)
                 for k, (flags, e, _, _) in cases.items()}
        for name, p in procs.items():
            rc, err = _done(p)
            want_rc, words = cases[name][2], cases[name][3]
            assert rc == want_rc and "Traceback" not in err, f"{name}: rc={rc}\n{err[-2000:]}"
            _quote(_line(err, words), tmp_path)
            assert not (tmp_path / name).exists() and a_file.read_text() == "not a directory\n"
        if ro:
            assert not any(ro[0].iterdir())
        else:
            print("read-only case skipped: cannot mount a read-only tmpfs here")
    finally:
        if ro:
            ro[1]()


def test_corrupt_model_config_under_torchrun_is_one_line_per_rank(tmp_path, tiny_inputs):
    model = tmp_path / "model"
    shutil.copytree(tiny_inputs[0].split("=", 1)[1], model)
    (model / "config.json").write_text('{"model_type": "llama", \n')
    out = tmp_path / "run"
    res = subprocess.run(torchrun(f"--train.output_dir={out}", f"--model.path={model}", *tiny_inputs[1:], *FAST,
                                  nproc=2), env=env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = [l for l in res.stderr.splitlines() if "config.json is not valid JSON" in l]
    assert sorted(l.split("):")[0] for l in lines) == ["mezo_elastic: error (rank 0", "mezo_elastic: error (rank 1"]
    # The only traceback left is torchrun's own summary of the failed workers (exit code 1 each).
    assert res.stderr.count("Traceback") <= 1 and "JSONDecodeError" not in res.stderr, res.stderr[-3000:]
    assert "exitcode  : 1" in res.stderr
    assert not out.exists()
    _quote(PREFIX.sub("", lines[0]), tmp_path)


def test_diverged_run_final_save_and_export_refuse_naming_the_tensor(tmp_path, tiny_inputs):
    out = tmp_path / "run"
    res = train(out, *tiny_inputs, *FAST, "--train.steps=3", "--mezo.lr=1e38", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    _quote(_line(res.stderr, "final save refused"), tmp_path)
    assert "tensor 'model." in res.stderr and not (out / "final").exists()
    exp = _export(out, 3, tmp_path / "exported")
    assert exp.returncode == 1 and not (tmp_path / "exported").exists(), exp.stderr
    _quote(PREFIX.sub("", exp.stderr.strip()), tmp_path)


# -- items 1, 10, 11, 12: a run directory is the run; metrics count steps done ----------------------


def test_run_directory_exports_anywhere_and_metrics_span_launches(tmp_path):
    launch = tmp_path / "launch"
    launch.mkdir()
    data = tmp_path / "mine.jsonl"  # words the built-in model's 31-word vocabulary does not know
    data.write_text("".join(json.dumps({"prompt": f"the quick brown fox {i} ->", "completion": "pos"}) + "\n"
                            for i in range(40)))
    args = [f"--data.path={data}", "--train.batch_size=8", "--train.progress=false", "--train.log_every=3",
            "--checkpoint.every=4"]
    # relative output_dir, launched from `launch`; built-in model (made inside the run directory)
    first = subprocess.run(torchrun("--train.output_dir=run", *args, "--train.steps=6", nproc=2), env=env(),
                           cwd=launch, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count("are the unknown token") == 1  # rank 0, once
    _quote(_line(first.stderr, "are the unknown token"), tmp_path)
    run = launch / "run"
    assert json.loads((run / "run.json").read_text())["model_path"] == "builtin/tiny-model"
    res = train(run, *args, "--train.steps=8")  # a second launch (from the repo): resumes at 6
    assert "resumed after 6 steps" in res.stderr
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["type"] == "train"] == [3, 6, 8]  # steps done, as the console says
    s1, s2 = [x for x in lines if x["type"] == "summary"]
    assert (s1["step"], s2["step"]) == (6, 8)
    assert s2["run_seconds"] >= s1["run_seconds"] + s2["seconds"] and all("run_seconds" in x for x in lines)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(launch)  # nothing of the launch directory is needed any more
    exports = [_start([sys.executable, "-m", "mezo_elastic.export", "--run", str(copy), "--step", str(step), "--out",
                       str(tmp_path / f"e{step}")], cwd=Path("/")) for step in (2, 8)]  # before the first checkpoint
    plot = _start([sys.executable, "-m", "mezo_elastic.plot", str(copy)])
    for p in [*exports, plot]:
        rc, err = _done(p)
        assert rc == 0, err[-2000:]
    from safetensors.torch import load_file

    assert max_abs_diff(load_file(str(tmp_path / "e8" / "model.safetensors")), final_weights(copy)) <= 1e-6
    from PIL import Image

    title = Image.open(copy / "metrics.png").text["Title"]
    assert f"{s2['run_seconds']:.0f} s over all launches (last {s2['seconds']:.0f} s)" in title, title


# -- item 5: one job per output directory ----------------------------------------------------------


def test_one_job_per_output_directory(tmp_path, tiny_inputs):
    out = tmp_path / "run"
    first = _start(TRAIN + [f"--train.output_dir={out}", *tiny_inputs, *FAST, "--train.steps=100000",
                            "--train.log_every=100000"])
    deadline = time.monotonic() + 120
    while not (out / "steps.jsonl").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.1)
    holder = json.loads((out / ".lock").read_text())
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
    # a second job (2 ranks) is refused on every rank, naming the holder; it writes nothing
    size = (out / "metrics.jsonl").stat().st_size
    second = subprocess.run(torchrun(f"--train.output_dir={out}", *tiny_inputs, *FAST, "--train.steps=5", nproc=2),
                            env=env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    refusals = [l for l in second.stderr.splitlines() if "is in use by another job" in l]
    assert len(refusals) == 2 and all(f"pid {first.pid}, run id 'local'" in l for l in refusals), second.stderr
    _quote(PREFIX.sub("", refusals[0]), tmp_path)
    assert (out / "metrics.jsonl").stat().st_size == size or first.poll() is None
    # the first job dies without cleaning up: a relaunch takes the lock over
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (out / ".lock").exists()
    done = len(StepLog(out / "steps.jsonl").read()) + 1  # a relaunch to fewer steps than done is refused
    relaunch = train(out, *tiny_inputs, *FAST, f"--train.steps={done}")
    _quote(_line(relaunch.stderr, "taking over the lock"), tmp_path)
    assert f"pid {first.pid} on this host is gone" in relaunch.stderr and not (out / ".lock").exists()
    # another host's lock is taken over once its heartbeat is stale (fresh: refused, tests/test_run_lock.py)
    lock = dict(holder, host="node-elsewhere", pid=4242, run_id="slurm-99.0", heartbeat=time.time() - 30)
    (out / ".lock").write_text(json.dumps(lock))
    stale = train(out, *tiny_inputs, *FAST, f"--train.steps={done}", "--checkpoint.lock_stale_s=10")
    _quote(_line(stale.stderr, "taking over the lock"), tmp_path)


# -- items 6, 7: corrupt checkpoints and a step log corrupted in the middle --------------------------


def test_damaged_checkpoint_or_step_log_resume_on_the_same_trajectory(tmp_path, tiny_inputs):
    """Item 6: a corrupt checkpoint is moved aside and never kept over a valid one. Item 7: a step log
    corrupt in the middle resumes from the newer checkpoint; export refuses exactly the lost steps."""
    args = [*tiny_inputs, *FAST, "--train.batch_size=8", "--checkpoint.every=10", "--checkpoint.keep=2"]
    first = tmp_path / "first"
    train(first, *args, "--train.steps=25")  # checkpoints 10, 20; log 0..24
    ck, log_damaged, ref = (tmp_path / n for n in ("job", "run", "ref"))
    for d in (ck, log_damaged, ref):  # ref: resumed undamaged (checkpoint 20 + the same 5 replayed steps)
        shutil.copytree(first, d)
    w = ck / "checkpoints" / "step-20" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    lines = (log_damaged / "steps.jsonl").read_text().splitlines(keepends=True)
    lines[12] = lines[12][:40] + "#corrupt#\n"  # the record of step 12 (the 13th line)
    (log_damaged / "steps.jsonl").write_text("".join(lines))
    jobs = {d: _start(TRAIN + [f"--train.output_dir={d}", *args, f"--train.steps={35 if d == ck else 30}"])
            for d in (ck, log_damaged, ref)}
    err = {}
    for d, p in jobs.items():
        rc, err[d] = _done(p)
        assert rc == 0, err[d][-3000:]
    # item 6: resumed from 10 (+15 replayed), saved 30; keep=2 kept the valid 10, not the corrupt 20
    assert "resumed after 25 steps (checkpoint step-10 + 15 replayed steps)" in err[ck]
    _quote(_line(err[ck], " aside to "), tmp_path)
    assert sorted(p.name for p in (ck / "checkpoints").iterdir()) == ["corrupt-step-20", "step-10", "step-30"]
    # item 7: resumed from 20 with the 5 records after the corrupt line; the same weights as undamaged
    _quote(_line(err[log_damaged], "are lost"), tmp_path)
    assert "resumed after 25 steps (checkpoint step-20 + 5 replayed steps)" in err[log_damaged]
    log = StepLog(log_damaged / "steps.jsonl")
    assert [r.step for r in log.read()] == [*range(12), *range(20, 30)] and log.gaps == [(12, 20)]
    assert max_abs_diff(final_weights(log_damaged), final_weights(ref)) == 0.0  # the lost records changed nothing
    exports = [_start([sys.executable, "-m", "mezo_elastic.export", "--run", str(log_damaged), "--step", str(step),
                       "--out", str(tmp_path / f"e{step}")]) for step in (15, 12)]
    (rc15, err15), (rc12, err12) = _done(exports[0]), _done(exports[1])
    assert rc15 == 1 and not (tmp_path / "e15").exists()
    _quote(PREFIX.sub("", err15.strip()), tmp_path)
    assert rc12 == 0, err12[-2000:]


# -- item 8: an explicit MASTER_PORT held by an unrelated process -------------------------------------


def test_held_master_port_moves_hand_launched_ranks_together(tmp_path, tiny_inputs):
    holder = subprocess.Popen([sys.executable, "-c", "import socket, sys, time\ns = socket.socket()\n"
                               "s.bind(('', 0)); s.listen()\nprint(s.getsockname()[1], flush=True)\n"
                               "time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        ranks = [_start(TRAIN + [f"--train.output_dir={tmp_path / 'run'}", *tiny_inputs, *FAST, "--train.steps=3",
                                 "--dist.port_timeout_s=2"], RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                        LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)) for r in (0, 1)]
        (rc0, err0), (rc1, err1) = _done(ranks[0]), _done(ranks[1])
        assert rc0 == rc1 == 0, err0[-2000:] + err1[-2000:]
        _quote(_line(err0, "port agreement"), tmp_path)
        assert f"{port} held by pid {holder.pid} (python" in err0 and f"moved to port {port + 1}" in err0
        assert len(StepLog(tmp_path / "run" / "steps.jsonl").read()) == 3
    finally:
        holder.kill()
        holder.wait()
