"""The paper's table (task x metric) from fake run directories: layout, cells, CSV, runs left out."""

import json

import pytest

from mezo_elastic.data.tasks.__main__ import main
from mezo_elastic.errors import MezoError


def _run(root, name, task, lr, evals, model="/models/opt-13b"):
    d = root / name
    d.mkdir(parents=True)
    cfg = {"data": {"task": task}, "model": {"path": model}, "mezo": {"lr": lr}}
    (d / "run.json").write_text(json.dumps({"config": cfg}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"type": "eval", "step": s, **m}) + "\n" for s, m in evals))
    return d


def test_table_layout_cells_and_csv(tmp_path, capsys):
    runs = tmp_path / "runs"
    dev = lambda loss, acc: {"dev_loss": loss, "dev_accuracy": acc}  # noqa: E731
    # The eval of lowest dev loss after step 0 is the one reported (MeZO's load_best_model_at_end).
    _run(runs, "sst2-a", "SST2", 1e-7, [(0, {"eval_loss": 0.7, "eval_accuracy": 0.5, **dev(0.1, 0.5)}),
                                        (4000, {"eval_loss": 0.2, "eval_accuracy": 0.92, **dev(0.25, 0.91)}),
                                        (8000, {"eval_loss": 0.2, "eval_accuracy": 0.914, **dev(0.30, 0.90)})])
    _run(runs, "sst2-b", "SST2", 1e-6, [(4000, {"eval_loss": 0.3, "eval_accuracy": 0.9, **dev(0.28, 0.93)})])
    _run(runs, "rec-s0", "ReCoRD", 1e-7, [(20000, {"eval_loss": 1.0, "eval_accuracy": 0.88})])  # no dev: the last
    _run(runs, "rec-s1", "ReCoRD", 1e-7, [(20000, {"eval_loss": 1.0, "eval_accuracy": 0.86})])  # 2 seeds: mean
    _run(runs, "squad", "SQuAD", 1e-7, [(20000, {"eval_f1": 0.845})])
    _run(runs, "lm", "", 1e-3, [(5, {"eval_loss": 1.0})])  # not a task run
    _run(runs, "early", "CB", 1e-7, [])  # no eval yet
    assert main(["table", str(runs), "--csv", str(tmp_path / "t.csv"), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    expected = (
        "setting,SST-2 (accuracy),RTE (accuracy),CB (accuracy),BoolQ (accuracy),WSC (accuracy),WIC (accuracy),"
        "MultiRC (accuracy),COPA (accuracy),ReCoRD (accuracy),SQuAD (f1),DROP (f1)\n"
        "opt-13b lr by dev,90.0,,,,,,,,,,\n"  # SST-2: lr 1e-6 has the better dev accuracy (93 > 91)
        "opt-13b lr=1e-06,90.0,,,,,,,,,,\n"
        "opt-13b lr=1e-07,92.0,,,,,,,,87.0,84.5,\n"
    )
    assert out == expected and (tmp_path / "t.csv").read_text() == expected
    assert "lm: no data.task" in err and "early: no data.task or no eval" in err
    assert main(["table", str(runs)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["setting", "SST-2", "RTE", "CB", "BoolQ", "WSC", "WIC", "MultiRC", "COPA", "ReCoRD",
                               "SQuAD", "DROP"]
    assert text[2].split() == ["opt-13b", "lr", "by", "dev", "90.0"] + ["-"] * 10
    assert text[4].split() == ["opt-13b", "lr=1e-07", "92.0"] + ["-"] * 7 + ["87.0", "84.5", "-"]


def test_table_without_runs_is_an_error(tmp_path, capsys):
    assert main(["table", str(tmp_path)]) == 2
    assert "no data.task run" in capsys.readouterr().err
    with pytest.raises(MezoError):
        from mezo_elastic.data.tasks.table import find_runs
        find_runs([str(tmp_path / "missing")])
