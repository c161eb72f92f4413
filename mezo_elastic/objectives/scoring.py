"""Per-example losses of the scoring objectives (lm, classification), computed through any ForwardRunner."""

from __future__ import annotations

from typing import Sequence

import torch

from mezo_elastic.data.jsonl import Example
from mezo_elastic.data.tasks.metrics import is_correct
from mezo_elastic.runners.base import ForwardRunner, ScoreRequest


def _score_all(runner: ForwardRunner, requests: list[ScoreRequest], micro_batch: int) -> torch.Tensor:
    out = []
    for lo in range(0, len(requests), micro_batch):
        lp, _ = runner.score(requests[lo : lo + micro_batch])
        out.append(lp)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _candidate_scores(runner: ForwardRunner, examples: Sequence[Example], micro_batch: int,
                      share_prompt: bool) -> list[torch.Tensor]:
    """Summed log-likelihood of every candidate of every example, in order."""
    score_choices = getattr(runner, "score_choices", None) if share_prompt else None
    if score_choices is None:  # one sequence per (prompt, candidate)
        reqs = [ScoreRequest(ex.prompt_ids, c) for ex in examples for c in ex.candidates]
        return list(_score_all(runner, reqs, micro_batch).split([len(ex.candidates) for ex in examples]))
    out, lo = [], 0
    while lo < len(examples):  # a forward holds at most micro_batch candidate rows (and >= 1 example)
        hi, rows = lo, 0
        while hi < len(examples) and (hi == lo or rows + len(examples[hi].candidates) <= micro_batch):
            rows += len(examples[hi].candidates)
            hi += 1
        chunk = examples[lo:hi]
        out += score_choices([ex.prompt_ids for ex in chunk], [ex.candidates for ex in chunk])
        lo = hi
    return out


def example_losses(runner: ForwardRunner, examples: Sequence[Example], objective: str,
                   micro_batch: int, share_prompt: bool = True,
                   length_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss per example float64, correct per example for classification else None).

    lm: mean NLL of the completion's tokens. classification: cross-entropy over the candidates,
    each candidate scored by the summed log-likelihood of its tokens (MeZO's scoring of options);
    with share_prompt and a runner that has `score_choices`, each prompt is run once for all of them.
    length_norm: a candidate's score is the mean over its tokens instead (MeZO's, in training and eval).
    """
    if objective == "lm":
        reqs = [ScoreRequest(ex.prompt_ids, ex.candidates[0]) for ex in examples]
        lp = _score_all(runner, reqs, micro_batch)
        n = torch.tensor([len(ex.candidates[0]) for ex in examples], dtype=torch.float64)
        return -lp / n, None
    scores = _candidate_scores(runner, examples, micro_batch, share_prompt)
    if not scores:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
    # All examples at once (a few tensor ops a forward instead of a few per example: on a GPU step of a
    # small model the per-example ops cost more host time than the forward). -inf pads uneven candidate
    # counts: exp(-inf) adds exactly 0, so each row's logsumexp is the one of its own candidates.
    k = max(len(sc) for sc in scores)
    mat = torch.full((len(scores), k), float("-inf"), dtype=torch.float64)
    for i, (ex, sc) in enumerate(zip(examples, scores)):
        mat[i, : len(sc)] = sc / torch.tensor([len(c) for c in ex.candidates], dtype=sc.dtype) if length_norm else sc
    labels = torch.tensor([ex.label for ex in examples])
    losses = torch.logsumexp(mat, 1) - mat[torch.arange(len(scores)), labels]
    predicted = mat.argmax(1).tolist()
    correct = [is_correct(p, ex.label, ex.correct) for p, ex in zip(predicted, examples)]
    return losses, torch.tensor(correct)


def right_candidate_only(examples: Sequence[Example]) -> list[Example]:
    """Each example as an lm example of its right candidate: the `nll` classification loss
    (data.class_loss) is the lm objective's loss on these, and scores no other candidate."""
    return [Example(ex.prompt_ids, (ex.candidates[ex.label],)) for ex in examples]
