"""export --step best: the step of a run's best eval, read from its metrics.jsonl (mezo_elastic.export.best_step)."""

from __future__ import annotations

import json

import pytest

from mezo_elastic.errors import ConfigError
from mezo_elastic.export import best_step
from mezo_elastic.training.metrics import evals_since_best


def _run(tmp_path, *evals: dict, extra: str = ""):
    lines = [json.dumps({"type": "train", "step": 5, "loss": 0.1})]
    lines += [json.dumps({"type": "eval", **e}) for e in evals]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + extra)
    return tmp_path


def test_the_highest_accuracy_wins_and_a_tie_goes_to_the_earliest_step(tmp_path):
    run = _run(tmp_path, {"step": 0, "eval_loss": 0.9, "eval_accuracy": 0.5},
               {"step": 100, "eval_loss": 0.7, "eval_accuracy": 0.8},
               {"step": 200, "eval_loss": 0.6, "eval_accuracy": 0.8},
               {"step": 300, "eval_loss": 1.9, "eval_accuracy": 0.49})  # collapsed late: the last is not the best
    assert best_step(run) == (100, "eval_accuracy", 0.8)
    assert best_step(run, "eval_loss") == (200, "eval_loss", 0.6)  # a loss: the lowest


def test_dev_before_eval_the_task_metric_before_reward_and_loss_alone_when_nothing_else(tmp_path):
    run = _run(tmp_path, {"step": 0, "eval_f1": 0.2, "eval_reward": 0.2, "dev_f1": 0.3, "dev_reward": 0.3},
               {"step": 10, "eval_f1": 0.4, "eval_reward": 0.4, "dev_f1": 0.25, "dev_reward": 0.25})
    assert best_step(run)[:2] == (0, "dev_f1")  # select on dev, as MeZO does
    lm = _run(tmp_path, {"step": 0, "eval_loss": 3.0}, {"step": 20, "eval_loss": 2.5}, {"step": 40, "eval_loss": 2.7})
    assert best_step(lm) == (20, "eval_loss", 2.5)


def test_a_resumed_runs_repeated_eval_counts_once_and_a_cut_last_line_is_skipped(tmp_path):
    run = _run(tmp_path, {"step": 0, "eval_reward": 0.1}, {"step": 50, "eval_reward": 0.3},
               {"step": 50, "eval_reward": 0.3}, {"step": 60, "eval_reward": 0.2}, extra='{"type": "eval", "st')
    assert best_step(run) == (50, "eval_reward", 0.3)


def test_no_eval_or_an_absent_key_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="has no eval with a metric; it has no eval lines"):
        best_step(_run(tmp_path))
    run = _run(tmp_path, {"step": 0, "eval_loss": 1.0, "eval_accuracy": 0.5})
    with pytest.raises(ConfigError, match="has no eval with eval_f1; its eval lines carry eval_accuracy, eval_loss"):
        best_step(run, "eval_f1")


@pytest.mark.parametrize("values, key, since", [
    ([0.5, 0.6, 0.7], "eval_accuracy", 0),        # every eval beat the one before
    ([0.5, 0.8, 0.7, 0.8], "eval_accuracy", 2),   # a tie does not beat the best
    ([3.0, 2.0, 2.5, 2.1], "eval_loss", 2),       # lower is better for a loss
    ([3.0, float("nan"), 2.9], "eval_loss", 0),   # a nan never beats; a later gain still does
    ([float("nan"), float("nan")], "eval_loss", 2),
    ([0.4], "eval_accuracy", 0),
    ([], "eval_accuracy", 0),
])
def test_evals_since_best_counts_the_evals_that_did_not_beat_it(values, key, since):
    assert evals_since_best(values, key) == since
