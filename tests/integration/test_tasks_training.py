"""`--data.task` end to end: real `python -m mezo_elastic.train` runs on task fixtures with the built-in
tiny model, the eval reporting the task's metric, and the table collected from the run directories."""

from __future__ import annotations

import json
import random

import pytest
from helpers import train

from mezo_elastic.data import builtin

pytestmark = pytest.mark.integration
STEPS = ["--mezo.lr=1e-3", "--train.steps=4", "--train.batch_size=8", "--train.eval_every=2", "--train.progress=false",
         "--checkpoint.every=0", "--train.save_final=false"]


def _sst2(n: int, seed: int) -> list[dict]:
    """glue/sst2 rows whose words the tiny model's tokenizer knows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(builtin.POSITIVE if label else builtin.NEGATIVE, 2) + rng.sample(builtin.NEUTRAL, 2)
        rows.append({"sentence": " ".join(words) + " ", "label": label, "idx": i})
    return rows


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sst2_from_save_to_disk_and_copa_from_jsonl_report_accuracy(tmp_path, tiny_inputs, capsys):
    import datasets

    model = tiny_inputs[0]  # --model.path=<the built-in tiny model>
    dd = tmp_path / "sst2"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_sst2(40, 1)),
                          "validation": datasets.Dataset.from_list(_sst2(20, 2))}).save_to_disk(str(dd))
    out = tmp_path / "runs" / "sst2"
    res = train(out, model, "--data.task=sst2", "--data.objective=classification", f"--data.path={dd}",
                "--data.num_train=24", "--data.num_dev=8", "--data.num_eval=16", *STEPS)
    evals = [m for m in _metrics(out) if m["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 2, 4] and all(0 <= e["eval_accuracy"] <= 1 for e in evals)
    assert all(0 <= e["dev_accuracy"] <= 1 and e["dev_loss"] > 0 for e in evals)  # MeZO's dev set, held out
    assert "eval step 4 (SST2): eval_loss=" in res.stderr and "eval_accuracy=" in res.stderr
    assert "dev_accuracy=" in res.stderr
    assert json.loads((out / "run.json").read_text())["config"]["data"]["task"] == "SST2"

    # Copa trains on the right choice's tokens (teacher forcing, as mezo.sh) and evaluates by choices.
    copa = [{"premise": "the day was cold.", "choice1": "It was grim.", "choice2": "It was warm.",
             "question": "effect", "idx": i, "label": i % 2} for i in range(12)]
    path = tmp_path / "copa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in copa))
    out2 = tmp_path / "runs" / "copa"
    train(out2, model, "--data.task=COPA", "--data.objective=classification", f"--data.path={path}",
          f"--data.eval_path={path}", "--data.num_dev=4", "--data.num_eval=6", *STEPS)
    evals = [m for m in _metrics(out2) if m["type"] == "eval"]
    assert len(evals) == 3 and all("eval_accuracy" in e for e in evals)

    # The paper's table from these run directories (a row per model and lr, a column per task).
    from mezo_elastic.data.tasks.__main__ import main as tasks_main

    assert tasks_main(["table", str(tmp_path / "runs"), "--csv", str(tmp_path / "t.csv")]) == 0
    row = (tmp_path / "t.csv").read_text().splitlines()[2].split(",")  # [1]: the "lr by dev" row
    def acc(o):  # the eval of lowest dev loss after step 0, as the table reports it
        best = min((m for m in _metrics(o) if m["type"] == "eval" and m["step"] > 0), key=lambda m: m["dev_loss"])
        return f"{100 * best['eval_accuracy']:.1f}"

    assert row[0] == "tiny-model lr=0.001" and row[1] == acc(out) and row[8] == acc(out2)
    printed = capsys.readouterr().out
    assert "SST-2" in printed and "COPA" in printed and acc(out) in printed


def test_squad_from_parquet_trains_with_the_token_f1_reward(tmp_path, tiny_inputs):
    """Generation on the perturbed weights, scored by MeZO's token F1; eval reports it as eval_f1."""
    import datasets

    rows = [{"id": str(i), "title": "film", "context": "the film was good", "question": "how was the film?",
             "answers": {"text": ["good"], "answer_start": [13]}} for i in range(8)]
    path = tmp_path / "squad.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    out = tmp_path / "run"
    res = train(out, tiny_inputs[0], "--data.task=squad", "--data.objective=reward", "--data.reward=token_f1",
                f"--data.path={path}", f"--data.eval_path={path}", "--data.num_dev=2", "--data.num_eval=4",
                "--generate.max_new_tokens=3", *STEPS)
    evals = [m for m in _metrics(out) if m["type"] == "eval"]
    assert len(evals) == 3 and all(e["eval_f1"] == e["eval_reward"] and 0 <= e["eval_f1"] <= 1 for e in evals)
    assert all(e["dev_f1"] == e["dev_reward"] for e in evals)
    assert "eval step 4 (SQuAD):" in res.stderr and "eval_f1=" in res.stderr
    bad = train(tmp_path / "bad", tiny_inputs[0], "--data.task=squad", "--data.objective=lm", f"--data.path={path}",
                check=False)  # a contradicting objective (none given: the task sets reward + token_f1)
    assert bad.returncode == 2 and "data.task=SQuAD needs data.objective=reward" in bad.stderr
    assert "Traceback" not in bad.stderr
