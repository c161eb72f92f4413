"""MeZO's metrics (large_models/metrics.py calculate_metric), by task.

Every classification task, MultiRC and ReCoRD included, is scored by MeZO as accuracy over its
examples: MultiRC per (paragraph, question, answer) row as SuperGLUE publishes it (not F1a or EM),
ReCoRD as the highest-scoring entity being any one of the answers. SQuAD and DROP are F1 of the
generated text against the gold answers with SQuAD's normalisation; that function belongs to the
reward objective (token_f1), which scores those two tasks, and is not repeated here.
"""

from __future__ import annotations

from typing import Sequence

from mezo_elastic.data.tasks.templates import TASKS, canonical_name


def metric_name(task: str) -> str:
    """The metric MeZO reports for `task`: accuracy, or f1 (SQuAD, DROP)."""
    return TASKS[canonical_name(task)].metric


def task_metrics(data, out: dict[str, float]) -> dict[str, float]:
    """Eval values to add under the name of the task's metric (`data`: the DataConfig): `eval_f1` and
    `dev_f1`, the mean token F1 reward, for SQuAD and DROP; classification tasks report `*_accuracy`."""
    if not data.task or metric_name(data.task) != "f1":
        return {}
    return {f"{p}_f1": out[f"{p}_reward"] for p in ("eval", "dev") if f"{p}_reward" in out}


def is_correct(predicted: int, label: int, correct: Sequence[int] = ()) -> bool:
    """MeZO's accuracy for one example: the argmax candidate is the label, or any of `correct` when given
    (ReCoRD: `pred.predicted_candidate in pred.correct_candidate`)."""
    return predicted in correct if correct else predicted == label
