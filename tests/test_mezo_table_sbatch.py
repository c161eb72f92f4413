"""launch/slurm/mezo_table.sbatch's own logic, run by bash as SLURM would run one array element: the
element's task and lr, its data paths, the paper's hyperparameters, and its errors. The training step it
hands over to (torchrun.sbatch, tested on a real cluster in tests/slurm) is replaced by one that records
its arguments here; tests/slurm/test_mezo_table_array.py runs the whole script for real, as a job array
on the one-node cluster."""

import subprocess

import pytest
from helpers import REPO, env

SCRIPT = REPO / "launch" / "slurm" / "mezo_table.sbatch"
TASKS = ["SST2", "RTE", "CB", "BoolQ", "WSC", "WIC", "MultiRC", "Copa", "ReCoRD", "SQuAD", "DROP"]


@pytest.fixture()
def setup(tmp_path):
    launch = tmp_path / "launch"
    launch.mkdir()
    (launch / "torchrun.sbatch").write_text('printf "%s\\n" "OUTPUT_DIR=$OUTPUT_DIR" "$@" > "$RECORD"\n')
    data = tmp_path / "data"
    for t in TASKS:
        (data / t.lower()).mkdir(parents=True)
        (data / t.lower() / "dataset_dict.json").write_text('{"splits": ["train", "validation"]}')
    return tmp_path, launch, data


def _element(tmp_path, launch, data, i, *args, **extra):
    (tmp_path / "argv").unlink(missing_ok=True)
    e = env(**{"SLURM_ARRAY_TASK_ID": str(i), "DATA_ROOT": str(data), "MODEL": "/models/opt-13b",
               "LAUNCH_DIR": str(launch), "RECORD": str(tmp_path / "argv"), **extra})
    r = subprocess.run(["bash", str(SCRIPT), *args], env=e, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    argv = (tmp_path / "argv").read_text().splitlines() if r.returncode == 0 else []
    return r, argv


def test_each_element_is_one_task_and_lr_with_the_papers_hyperparameters(setup):
    tmp_path, launch, data = setup
    seen = []
    for i in range(22):
        r, argv = _element(tmp_path, launch, data, i)
        assert r.returncode == 0, r.stderr
        task = TASKS[i // 2]
        lr = ["1e-6", "1e-7"][i % 2]
        assert argv[0] == f"OUTPUT_DIR=runs/mezo_table/opt-13b/{task}-lr{lr}"
        objective = "reward" if task in ("SQuAD", "DROP") else "classification"
        if objective == "reward":
            assert "--data.reward=token_f1" in argv and '--generate.stop=["\\n"]' in argv, argv
        for a in (f"--data.task={task}", f"--mezo.lr={lr}", f"--data.objective={objective}",
                  f"--data.path={data / task.lower()}", "--model.path=/models/opt-13b", "--train.steps=20000",
                  "--train.batch_size=16", "--mezo.eps=1e-3", "--data.num_train=1000", "--data.num_eval=1000",
                  "--data.sample_seed=0"):
            assert a in argv, (i, a, argv)
        seen.append((task, lr))
    assert len(set(seen)) == 22
    r, _ = _element(tmp_path, launch, data, 22)
    assert r.returncode == 2 and "past the 11 task(s) x 2 lr(s) = 22 elements" in r.stderr


def test_split_files_subsets_and_extra_arguments(setup):
    tmp_path, launch, data = setup
    rte = data / "rte"
    (rte / "dataset_dict.json").unlink()
    (rte / "train.parquet").write_text("")
    (rte / "validation.jsonl").write_text("")
    r, argv = _element(tmp_path, launch, data, 1, "--train.steps=5", TASKS="RTE", LRS="1e-6 1e-7")
    assert r.returncode == 0, r.stderr
    assert f"--data.path={rte / 'train.parquet'}" in argv and f"--data.eval_path={rte / 'validation.jsonl'}" in argv
    assert "--mezo.lr=1e-7" in argv and argv[-1] == "--train.steps=5"  # arguments after the script win
    (rte / "validation.jsonl").unlink()
    r, _ = _element(tmp_path, launch, data, 0, TASKS="RTE")
    assert r.returncode == 2 and "neither a save_to_disk DatasetDict nor has validation.parquet or validation.jsonl" in r.stderr
    r, _ = _element(tmp_path, launch, data, 0, DATA_ROOT=str(tmp_path / "nope"))
    assert r.returncode == 2 and "DATA_ROOT=" in r.stderr and "is not a directory" in r.stderr
