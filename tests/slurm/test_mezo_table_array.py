"""launch/slurm/mezo_table.sbatch as a real job array on the one-node cluster, then the table of its runs.

Two elements (SST2 x two lrs) train the built-in tiny model a few steps on a glue/sst2-schema
DatasetDict through torchrun.sbatch (srun, torchrun, gloo on CPU); `python -m mezo_elastic.tasks
table` then collects both runs into the paper's layout.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO
from slurm_helpers import cpu_overrides, job_env

pytestmark = pytest.mark.slurm


def test_job_array_trains_each_element_and_the_table_collects_them(slurm_cluster, tiny_inputs, tmp_path):
    datasets = pytest.importorskip("datasets")
    from integration.test_tasks_training import _sst2

    model = tiny_inputs[0].split("=", 1)[1]
    data = tmp_path / "data"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_sst2(40, 1)),
                          "validation": datasets.Dataset.from_list(_sst2(20, 2))}).save_to_disk(str(data / "sst2"))
    e = job_env(slurm_cluster, DATA_ROOT=str(data), MODEL=model, TASKS="SST2", LRS="1e-3 1e-4",
                OUT_ROOT=str(tmp_path / "runs"), DEVICE="cpu", DIST_BACKEND="gloo", NPROC_PER_NODE="1")
    argv = ["sbatch", "--wait", "--array=0-1", *cpu_overrides(), str(REPO / "launch" / "slurm" / "mezo_table.sbatch"),
            "--model.dtype=float32", "--train.steps=4", "--train.batch_size=4", "--data.num_train=16",
            "--data.num_dev=8", "--data.num_eval=8", "--data.max_length=64", "--train.eval_every=2",
            "--checkpoint.every=0", "--train.progress=false"]
    res = subprocess.run(argv, env=e, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("mezo-table-*.out")))
    assert res.returncode == 0, f"{res.stderr}\n{logs}"
    runs = tmp_path / "runs" / "tiny-model"
    assert sorted(p.name for p in runs.iterdir()) == ["SST2-lr1e-3", "SST2-lr1e-4"], logs
    for run in runs.iterdir():
        assert (run / "final").is_dir() and (run / "steps.jsonl").read_text().count("\n") == 4
    table = subprocess.run([sys.executable, "-m", "mezo_elastic.tasks", "table", str(runs), "--csv",
                            str(tmp_path / "t.csv")], env=e, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[1]: line.split()[2] for line in table.stdout.splitlines() if line.startswith("tiny-model lr=")}
    assert "SST-2" in table.stdout.splitlines()[0], table.stdout
    assert set(rows) == {"lr=0.001", "lr=0.0001"}, table.stdout
    assert all(0 <= float(v) <= 100 for v in rows.values()), table.stdout  # the SST-2 accuracy of each run
    assert (tmp_path / "t.csv").read_text().count("tiny-model") == 3, (tmp_path / "t.csv").read_text()
