"""Helpers for tests/slurm: submit the launch/slurm scripts with `sbatch --wait` and find their outputs."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers import REPO, env

# Short and deterministic: no evals in between, no progress bar.
FAST = ["--train.batch_size=8", "--train.eval_every=0", "--train.progress=false", "--train.log_every=5"]


@dataclass(frozen=True)
class Cluster:
    """The running cluster: its config file (clients need SLURM_CONF) and the node's CPUs."""

    conf: str
    cpus: int


def job_env(cluster: Cluster, **extra: str) -> dict[str, str]:
    """The environment sbatch passes to the job: no launcher variables, this interpreter, the repo."""
    return env(SLURM_CONF=cluster.conf, PYTHON=sys.executable, **extra)


@dataclass
class Job:
    """A submitted `sbatch --wait --parsable` job; wait() returns sbatch's exit code (the job's)."""

    proc: subprocess.Popen
    job_id: str
    cwd: Path
    script: str
    submit_env: dict[str, str]

    @property
    def name(self) -> str:
        return {"torchrun.sbatch": "mezo-torchrun", "srun.sbatch": "mezo-srun"}[self.script]

    @property
    def log_path(self) -> Path:
        return self.cwd / f"{self.name}-{self.job_id}.out"

    @property
    def output_dir(self) -> Path:
        return self.cwd / "runs" / f"{self.name}-{self.job_id}"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else "(no job log)"

    def wait(self, timeout: float = 240) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            subprocess.run(["scancel", self.job_id], env=self.submit_env, timeout=30)
            self.proc.wait(timeout=60)
            raise AssertionError(f"job {self.job_id} did not finish in {timeout}s:\n{self.log()}") from None
        return self.proc.returncode


def submit(cluster: Cluster, script: str, cwd: Path, sbatch_args: list[str], train_args: list[str],
           **job_vars: str) -> Job:
    """`sbatch --wait --parsable [ARGS] launch/slurm/SCRIPT TRAIN_ARGS` from cwd, without waiting here."""
    e = job_env(cluster, **job_vars)
    argv = ["sbatch", "--wait", "--parsable", *sbatch_args, str(REPO / "launch" / "slurm" / script), *train_args]
    proc = subprocess.Popen(argv, env=e, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # --parsable: "JOBID" as soon as it is queued
    if not re.fullmatch(r"\d+(;\S+)?", line):
        proc.wait(timeout=60)
        raise AssertionError(f"sbatch did not queue {script}: {line}\n{proc.stderr.read()}")
    return Job(proc=proc, job_id=line.split(";")[0], cwd=cwd, script=script, submit_env=e)


def cpu_overrides(nodes: int = 1, tasks_per_node: int = 1, cpus_per_task: int = 1, share: bool = True) -> list[str]:
    """The documented sbatch overrides for a CPU-only one-node cluster (share: may run beside another job)."""
    args = [f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", "--gpus-per-node=0",
            f"--cpus-per-task={cpus_per_task}", "--time=10"]
    return args + (["--oversubscribe"] if share else [])


def steps_logged(out: Path) -> int:
    p = out / "steps.jsonl"
    return sum(1 for _ in p.open()) if p.exists() else 0
