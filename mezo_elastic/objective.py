"""Per-example losses of the two objectives, computed through any ForwardRunner."""

from __future__ import annotations

from typing import Sequence

import torch

from mezo_elastic.data import Example
from mezo_elastic.runners.base import ForwardRunner, ScoreRequest


def _score_all(runner: ForwardRunner, requests: list[ScoreRequest], micro_batch: int) -> torch.Tensor:
    out = []
    for lo in range(0, len(requests), micro_batch):
        lp, _ = runner.score(requests[lo : lo + micro_batch])
        out.append(lp)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def example_losses(runner: ForwardRunner, examples: Sequence[Example], objective: str,
                   micro_batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss per example float64, correct per example for classification else None).

    lm: mean NLL of the completion's tokens. classification: cross-entropy over the candidates,
    each candidate scored by the summed log-likelihood of its tokens (MeZO's scoring of options).
    """
    if objective == "lm":
        reqs = [ScoreRequest(ex.prompt_ids, ex.candidates[0]) for ex in examples]
        lp = _score_all(runner, reqs, micro_batch)
        n = torch.tensor([len(ex.candidates[0]) for ex in examples], dtype=torch.float64)
        return -lp / n, None
    reqs = [ScoreRequest(ex.prompt_ids, c) for ex in examples for c in ex.candidates]
    lp = _score_all(runner, reqs, micro_batch)
    losses, correct, i = [], [], 0
    for ex in examples:
        scores = lp[i : i + len(ex.candidates)]
        i += len(ex.candidates)
        losses.append(torch.logsumexp(scores, 0) - scores[ex.label])
        correct.append(int(torch.argmax(scores)) == ex.label)
    return torch.stack(losses) if losses else torch.zeros(0, dtype=torch.float64), torch.tensor(correct)
