"""`python -m mezo_elastic.doctor` as users run it: real subprocesses, real sockets, real torchrun."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
import torch

# Launcher variables of whatever runs pytest must not leak into the doctor's view.
LAUNCH_VARS = re.compile(r"^(RANK|LOCAL_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE|GROUP_RANK|MASTER_ADDR|MASTER_PORT"
                         r"|TORCHELASTIC_.*|SLURM_.*)$")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not LAUNCH_VARS.match(k)}
    env.update(extra)
    return env


def doctor(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mezo_elastic.doctor", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_doctor_clean_machine_exits_zero_with_correct_report():
    r = doctor(env=clean_env())
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "launcher=single rank=0/1 local_rank=0/1" in out
    assert f"torch {torch.__version__}" in out
    assert f"gloo: {'yes' if torch.distributed.is_gloo_available() else 'no'}" in out
    if not torch.cuda.is_available():
        assert "CUDA: not available" in out and "this rank's device: cpu" in out
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    assert f"CUDA_VISIBLE_DEVICES: {'(unset)' if cvd is None else repr(cvd)}" in out
    assert re.search(r"sglang: (not installed|\S+ \((supported|NOT supported))", out)
    assert "torchrun default port 29500:" in out and "single process: no process group needed" in out
    assert out.rstrip().splitlines()[-1].startswith("RESULT: OK")


def test_doctor_rank_outside_world_names_problem_and_fix():
    env = clean_env(RANK="5", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    r = doctor("--timeout", "5", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ERROR [launch-env]" in r.stdout
    assert "RANK=5 is outside [0, 2)" in r.stdout
    assert "fix: let the launcher set RANK/LOCAL_RANK/WORLD_SIZE" in r.stdout
    assert "RESULT: 1 problem(s) found: launch-env" in r.stdout


def test_doctor_held_master_port_names_holder_and_free_port():
    """A held MASTER_PORT given by hand is the first candidate of the port agreement (training moves on):
    a warning naming the holder and a free port; the candidates after it are checked too."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = clean_env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        r = doctor("--timeout", "5", env=env, timeout=60)
    assert f"WARNING [master-port-held] (this process): MASTER_PORT={port}" in r.stdout, r.stdout
    assert "the ranks will agree on the next free candidate port instead" in r.stdout
    assert f"held by pid {os.getpid()}" in r.stdout  # psutil names this test process as the holder
    fix = re.search(r"fix: give the job a free port, e.g. MASTER_PORT=(\d+)", r.stdout)
    assert fix and int(fix.group(1)) != port
    assert f"candidate ports {port}..{port + 7}" in r.stdout
    assert "ERROR [master-port-held]" not in r.stdout


def test_doctor_bad_config_flag_is_a_problem():
    r = doctor("--model.device=tpu", env=clean_env())
    assert r.returncode == 1
    assert "ERROR [config]" in r.stdout and "model.device" in r.stdout and "'tpu'" in r.stdout


def test_doctor_missing_rank_times_out_bounded():
    port = _free_port()
    env = clean_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    r = doctor("--timeout", "2", env=env, timeout=40)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ERROR [process-group] (this process): rank 0: no process group after" in r.stdout
    # torch's store message, or distributed.wait_for_world's where it checks arrivals itself
    assert re.search(r"1/2 clients joined|only 1 of 2 ranks arrived", r.stdout), r.stdout


@pytest.mark.integration
def test_doctor_under_torchrun_every_rank_reports_rank0_summarises():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "mezo_elastic.doctor", "--timeout", "20"]
    r = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"\[doctor rank 1\] launcher=torchrun rank=1/2 .*: 0 problem\(s\); rank 0 prints", out)
    assert "mezo_elastic doctor: 2 rank(s) reporting" in out
    assert "gloo group of 2 formed and every report gathered" in out
    assert re.search(r"rank 0: ok .*launcher=torchrun rank=0/2", out)
    assert re.search(rf"rank 1: ok  host={re.escape(socket.gethostname())} device=\S+  \[launcher=torchrun rank=1/2", out)
    assert "this job's torchrun agent store (expected)" in out
    assert out.count("RESULT: OK") == 1  # only rank 0 summarises


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error; this host has CUDA")
def test_doctor_under_torchrun_problem_on_every_rank_fails_the_job():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "mezo_elastic.doctor", "--timeout", "20", "--model.device=cuda"]
    r = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "ERROR [cuda-device] (all ranks): model.device=cuda but CUDA is not available" in r.stdout
    assert "fix: use --model.device=cpu" in r.stdout
    assert re.search(r"rank 1: [1-9]\d* error\(s\)", r.stdout)  # the summary counts rank 1's own errors


def test_doctor_sglang_backend_requirements_follow_this_machine():
    import importlib.metadata

    try:
        installed = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    r = doctor("--model.backend=sglang", env=clean_env())
    out = r.stdout
    if installed is None:
        assert "ERROR [sglang-missing] (this process): model.backend=sglang but sglang is not installed" in out
        assert 'fix: pip install "sglang==' in out
    if not torch.cuda.is_available():
        assert "ERROR [cuda-device]" in out and "model.backend=sglang needs a GPU" in out
    assert r.returncode == (0 if installed and torch.cuda.is_available() else 1)
    assert "SGLang TP port: none needed (model.tp_size=1" in out


def test_doctor_sglang_tp_ports_all_held_is_an_error():
    socks = []
    try:
        first = None
        while first is None:  # two consecutive ports we hold, as another job's stores would
            a = socket.socket()
            a.bind(("127.0.0.1", 0))
            b = socket.socket()
            try:
                b.bind(("127.0.0.1", a.getsockname()[1] + 1))
                first = a.getsockname()[1]
            except OSError:
                a.close()
                b.close()
                continue
            socks += [a, b]
        for s in socks:
            s.listen()
        env = clean_env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=str(_free_port()))
        r = doctor("--timeout", "2", "--model.backend=sglang", "--model.tp_size=2", f"--model.sglang_port={first}",
                   "--dist.port_attempts=2", env=env, timeout=40)
    finally:
        for s in socks:
            s.close()
    assert r.returncode == 1
    assert f"ERROR [sglang-port-held] (this process): all 2 SGLang TP candidate ports from {first} are held" in r.stdout
    assert f"held by pid {os.getpid()}" in r.stdout and "fix: set --model.sglang_port to a free range start" in r.stdout


def test_doctor_json_is_machine_readable():
    import json

    r = doctor("--json", env=clean_env())
    assert r.returncode == 0
    verdict = json.loads(r.stdout)
    assert verdict["ok"] is True and verdict["ranks"][0]["rank"] == 0 and verdict["ranks"][0]["errors"] == 0
    assert all(p["severity"] == "warning" for p in verdict["problems"])


def test_doctor_output_dir_under_a_file_is_a_problem(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = doctor(f"--train.output_dir={blocker / 'run'}", env=clean_env())
    assert r.returncode == 1
    assert f"ERROR [output-dir] (this process): train.output_dir='{blocker / 'run'}' cannot be made: {blocker} is a file" in r.stdout
    assert not (blocker / "run").exists()
    ok = doctor(f"--train.output_dir={tmp_path / 'new' / 'run'}", env=clean_env())
    assert ok.returncode == 0 and f"will be created under {tmp_path}, usable" in ok.stdout
    assert not (tmp_path / "new").exists()  # the doctor looks, it does not create


def test_doctor_output_dir_says_what_training_would_refuse(tmp_path):
    """Issue 22, item 8: /proc is writable by its mode bits yet takes no files; someone else's files are refused."""
    proc = doctor("--train.output_dir=/proc/mezo_run", env=clean_env())
    assert proc.returncode == 1 and "RESULT: OK" not in proc.stdout
    assert "train.output_dir='/proc/mezo_run' cannot be made: /proc does not take new files" in proc.stdout
    mine = tmp_path / "mine"
    (mine / "final").mkdir(parents=True)
    (mine / "final" / "notes.txt").write_text("my notes\n")
    r = doctor(f"--train.output_dir={mine}", env=clean_env())
    assert r.returncode == 1 and "holds files that are not a mezo_elastic run (final/)" in r.stdout, r.stdout
    assert sorted(p.name for p in mine.rglob("*")) == ["final", "notes.txt"]
