"""launch/slurm/*.sbatch on the real one-node cluster: `sbatch --wait`, real srun, real torchrun, gloo on CPU.

Each job is submitted from its own temporary directory, which is the job's working directory:
the script's job log (<job name>-<id>.out) and default output dir (runs/<job name>-<id>) land there.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from slurm_helpers import FAST, Cluster, cpu_overrides, steps_logged, submit

pytestmark = pytest.mark.slurm

STEPS = 20
CPU = {"DEVICE": "cpu", "DIST_BACKEND": "gloo"}


def derived_port(job_id: str) -> int:
    return 20000 + int(job_id) % 20000


def assert_trained(job, rc: int, steps: int = STEPS, world: int = 2) -> None:
    """sbatch exited 0, the log and outputs are where the script says, every step was taken by `world` ranks."""
    log = job.log()
    assert rc == 0, f"sbatch --wait exited {rc}; job log {job.log_path}:\n{log[-4000:]}"
    assert job.log_path.exists(), f"no job log at {job.log_path}"
    assert re.search(r"done \(srun exit 0\)", log), log[-3000:]
    assert re.search(rf"rank=0/{world} ", log), log[-3000:]
    out = job.output_dir
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["type"] == "train"][-1] == steps, lines[-3:]  # steps done
    assert steps_logged(out) == steps
    assert (out / "final" / "model.safetensors").is_file()


def test_torchrun_sbatch_one_agent_two_workers(slurm_cluster: Cluster, tiny_inputs, tmp_path: Path):
    job = submit(slurm_cluster, "torchrun.sbatch", tmp_path, cpu_overrides(cpus_per_task=2, share=False),
                 [*tiny_inputs, *FAST, f"--train.steps={STEPS}"], NPROC_PER_NODE="2", **CPU)
    assert_trained(job, job.wait())
    log = job.log()
    # The rendezvous endpoint: first host of the allocation, the port derived from the job id.
    assert f":{derived_port(job.job_id)}, output runs/mezo-torchrun-{job.job_id}" in log, log[:2000]
    assert "launcher=torchrun rank=0/2" in log and f"run_id={job.job_id} " in log


def test_torchrun_sbatch_two_agents_agree_on_rendezvous(slurm_cluster: Cluster, tiny_inputs, tmp_path: Path):
    # Two srun tasks on one node, each a torchrun agent: they must meet on HEAD:port with the job's id.
    job = submit(slurm_cluster, "torchrun.sbatch", tmp_path, cpu_overrides(tasks_per_node=2, share=False),
                 [*tiny_inputs, *FAST, f"--train.steps={STEPS}"], NPROC_PER_NODE="1", **CPU)
    assert_trained(job, job.wait())
    assert "2 torchrun agent(s)" in job.log()


def test_srun_sbatch_two_tasks_agree_on_rendezvous(slurm_cluster: Cluster, tiny_inputs, tmp_path: Path):
    job = submit(slurm_cluster, "srun.sbatch", tmp_path, cpu_overrides(tasks_per_node=2, share=False),
                 [*tiny_inputs, *FAST, f"--train.steps={STEPS}"], **CPU)
    assert_trained(job, job.wait())
    log = job.log()
    # Both ranks came from SLURM's variables and met on the job-derived port picked by the package.
    assert "launcher=slurm rank=0/2" in log and f"run_id=slurm-{job.job_id}." in log
    assert f"on port {derived_port(job.job_id)}" in log, log[-3000:]


def test_srun_sbatch_with_a_held_master_port_moves_every_task(slurm_cluster: Cluster, tiny_inputs, tmp_path: Path):
    # MASTER_PORT exported before sbatch, held by an unrelated process: the job moves on together.
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import socket, time\ns = socket.socket()\n"
                               "s.bind(('', 0)); s.listen()\nprint(s.getsockname()[1], flush=True)\n"
                               "time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        job = submit(slurm_cluster, "srun.sbatch", tmp_path, cpu_overrides(tasks_per_node=2, share=False),
                     [*tiny_inputs, *FAST, f"--train.steps={STEPS}", "--dist.port_timeout_s=2"],
                     MASTER_PORT=str(port), **CPU)
        assert_trained(job, job.wait())
        log = job.log()
        assert f"port agreement: {port} held by pid {holder.pid} (python" in log, log[-3000:]
        assert f"moved to port {port + 1}" in log
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("script", ["torchrun.sbatch", "srun.sbatch"])
def test_two_jobs_at_once_do_not_collide(slurm_cluster: Cluster, tiny_inputs, tmp_path: Path, script: str):
    # Both share the node's CPUs (--oversubscribe) so they really run at the same time. Long enough to
    # see the overlap at 0.2 s polls: 20 steps took 0.3 s once the CPU sweep got fast (issue 18).
    steps = 10 * STEPS
    jobs = []
    for i in range(2):
        d = tmp_path / f"job{i}"
        d.mkdir()
        extra = {"NPROC_PER_NODE": "2"} if script == "torchrun.sbatch" else {}
        over = cpu_overrides(cpus_per_task=2) if script == "torchrun.sbatch" else cpu_overrides(tasks_per_node=2)
        jobs.append(submit(slurm_cluster, script, d, over, [*tiny_inputs, *FAST, f"--train.steps={steps}"],
                           **CPU, **extra))
    both_running = False
    while any(j.proc.poll() is None for j in jobs):  # see them overlap: both have training steps logged
        both_running |= all(0 < steps_logged(j.output_dir) < steps for j in jobs)
        time.sleep(0.2)
    for j in jobs:
        assert_trained(j, j.wait(), steps=steps)
    assert both_running, "the two jobs never trained at the same time; the test proves nothing"
    ports = {derived_port(j.job_id) for j in jobs}
    assert len(ports) == 2


def test_preempted_jobs_requeue_and_match_an_undisturbed_job(slurm_cluster: Cluster, tiny_inputs, tmp_path: Path):
    """USR1 to the batch shell (what --signal=B:USR1@120 sends) -> stop after a step -> requeue -> same weights."""
    steps = 60
    args = [*tiny_inputs, *FAST, f"--train.steps={steps}", "--checkpoint.every=10"]
    dirs = {k: tmp_path / k for k in ("torchrun", "srun", "reference")}
    for d in dirs.values():
        d.mkdir()
    jobs = {
        "torchrun": submit(slurm_cluster, "torchrun.sbatch", dirs["torchrun"], cpu_overrides(cpus_per_task=2),
                           args, NPROC_PER_NODE="2", **CPU),
        "srun": submit(slurm_cluster, "srun.sbatch", dirs["srun"], cpu_overrides(tasks_per_node=2), args, **CPU),
        "reference": submit(slurm_cluster, "srun.sbatch", dirs["reference"], cpu_overrides(tasks_per_node=2),
                            args, **CPU),
    }
    signalled: dict[str, int] = {}
    deadline = time.monotonic() + 180
    while len(signalled) < 2 and time.monotonic() < deadline:
        for k in ("torchrun", "srun"):
            n = steps_logged(jobs[k].output_dir)
            if k not in signalled and 15 <= n:  # past the checkpoint at step 10: a real mid-run stop
                subprocess.run(["scancel", "--batch", "--signal=USR1", jobs[k].job_id], check=True,
                               env=jobs[k].submit_env, timeout=30)
                signalled[k] = n
        time.sleep(0.2)
    assert len(signalled) == 2, f"jobs never reached step 15: {[j.log() for j in jobs.values()]}"
    rcs = {k: j.wait(timeout=300) for k, j in jobs.items()}
    ref = load_file(str(jobs["reference"].output_dir / "final" / "model.safetensors"))
    for k in ("torchrun", "srun"):
        job, log = jobs[k], jobs[k].log()
        assert rcs[k] == 0, f"{k}: sbatch --wait exited {rcs[k]}:\n{log[-4000:]}"
        assert "got SIGUSR1" in log and f"requeueing job {job.job_id}" in log, log[-4000:]
        assert "restart 1:" in log, f"{k}: the job was not requeued:\n{log[-4000:]}"
        assert re.search(r"stopped by SIGTERM after (\d+) steps", log), log[-4000:]
        stopped = int(re.search(r"stopped by SIGTERM after (\d+) steps", log).group(1))
        assert stopped < steps, f"{k}: stopped only at the last step; nothing was resumed"
        assert re.search(r"resumed after \d+ steps \(checkpoint step-\d+", log), log[-4000:]
        assert steps_logged(job.output_dir) == steps
        got = load_file(str(job.output_dir / "final" / "model.safetensors"))
        assert got.keys() == ref.keys()
        diff = max((got[n].double() - ref[n].double()).abs().max().item() for n in ref)
        assert diff <= 1e-6, f"{k}: final weights differ from the undisturbed job by {diff}"
    assert_trained(jobs["reference"], rcs["reference"], steps=steps)


def test_bad_input_fails_fast_with_a_clear_message(slurm_cluster: Cluster, tiny_inputs, tmp_path: Path):
    cpus = slurm_cluster.cpus
    t0 = time.monotonic()
    # More torchrun workers than the job's CPUs: the script refuses before starting anything.
    a = submit(slurm_cluster, "torchrun.sbatch", tmp_path, cpu_overrides(cpus_per_task=cpus),
               [*tiny_inputs, "--train.steps=5"], NPROC_PER_NODE=str(cpus + 1), **CPU)
    assert a.wait(timeout=60) == 2
    assert f"error: NPROC_PER_NODE={cpus + 1} x 1 task(s) per node but the job has {cpus} CPU(s)" in a.log(), a.log()
    # DEVICE=cuda on a node without GPUs.
    b = submit(slurm_cluster, "srun.sbatch", tmp_path, cpu_overrides(tasks_per_node=1),
               [*tiny_inputs, "--train.steps=5"], DEVICE="cuda")
    assert b.wait(timeout=60) == 2
    assert "error: DEVICE=cuda but the job has no GPUs" in b.log(), b.log()
    assert not list(tmp_path.glob("runs/*/steps.jsonl")), "a bad job must not start training"
    assert time.monotonic() - t0 < 60, "bad input must fail fast, not hang"
