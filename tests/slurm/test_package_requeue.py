"""The package's own requeue (--train.requeue_on_signal): srun without torchrun and without the
launch/ scripts' trap. SIGUSR1 to the job's tasks -> every rank stops after the same step -> rank 0
runs `scontrol requeue` -> SLURM restarts the job -> it resumes and ends on the undisturbed weights."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, final_weights, max_abs_diff, train
from slurm_helpers import FAST, Cluster, job_env, steps_logged

pytestmark = pytest.mark.slurm
STEPS = 120


def test_requeue_on_signal_from_the_package(slurm_cluster: Cluster, tiny_inputs, tmp_path: Path):
    out = tmp_path / "run"
    args = [*tiny_inputs, *FAST, f"--train.steps={STEPS}", "--checkpoint.every=20", f"--train.output_dir={out}"]
    script = tmp_path / "job.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --requeue --open-mode=append --output={tmp_path}/job-%j.out\n"
        "#SBATCH --nodes=1 --ntasks=2 --cpus-per-task=1 --oversubscribe --time=10\n"
        "echo \"start restart=${SLURM_RESTART_COUNT:-0}\"\n"
        f"srun --kill-on-bad-exit=1 {sys.executable} -m mezo_elastic.train --train.requeue_on_signal=true "
        + " ".join(args) + "\n"
    )
    e = job_env(slurm_cluster, OMP_NUM_THREADS="1")
    sb = subprocess.Popen(["sbatch", "--wait", "--parsable", str(script)], env=e, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = sb.stdout.readline().strip().split(";")[0]
    deadline = time.monotonic() + 180
    while steps_logged(out) < 30:
        assert sb.poll() is None, sb.stderr.read()
        assert time.monotonic() < deadline, "the job never reached step 30"
        time.sleep(0.2)
    # to the job's tasks (not the batch shell): what a preemption notice to the step looks like
    subprocess.run(["scancel", "--signal=USR1", job_id], env=e, check=True, timeout=30)
    sb.wait(timeout=300)
    log = (tmp_path / f"job-{job_id}.out").read_text()
    assert sb.returncode == 0, log[-4000:]
    assert f"scontrol requeue {job_id}: rc=0" in log, log[-4000:]
    assert "start restart=1" in log and "resumed after" in log, log[-4000:]
    assert steps_logged(out) == STEPS
    ref = tmp_path / "ref"
    train(ref, *[a for a in args if not a.startswith("--train.output_dir")], nproc=2)
    diff = max_abs_diff(final_weights(out), final_weights(ref))
    print(f"package requeue: max abs diff vs undisturbed = {diff:.3g}")
    assert diff <= 1e-6
