"""Fixed-shape scoring batches: the host-side plan that both backends' graph scorers run.

A scoring call (`score`: prompt + completion sequences; `score_choices`: prompts and their candidates)
becomes rows of token ids, right-padded to a bucket width, and a list of picks (row, position, target):
the log-probability of `target` after `row[: position + 1]`. Causal attention never lets a real
position see the padding after it, so no attention mask is needed and every row starts at position 0.
Shapes come from a few buckets (rows and picks: the next power of two; width: the next multiple of
WIDTH_STEP), so a CUDA graph captured for a bucket serves every later batch of that bucket, and the
eager run of the same plan computes the same function on the same shapes (graph == eager, bit for bit).

Every pick's log-prob comes back to the host in one copy; the sums per request (or candidate) are made
there in a fixed order (float64), as the SGLang backend's row_sums does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mezo_elastic.runners.base import ScoreRequest

WIDTH_STEP = 32  # bucket widths: few enough buckets to capture, little padding on short prompts


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def bucket_width(width: int, cap: int) -> int:
    """`width` rounded up to a multiple of WIDTH_STEP, but never past `cap` (the model's positions)."""
    return min(-(-width // WIDTH_STEP) * WIDTH_STEP, max(cap, width))


@dataclass
class Plan:
    """One scoring call as fixed-shape tensors (CPU). The first n_rows rows and n_picks picks are real;
    the rest pad the bucket (pad rows hold pad tokens; pad picks read row 0, position 0, token 0)."""

    ids: torch.Tensor  # [rows, width] int64
    picks: torch.Tensor  # [3, picks] int64: row, position, target token
    owner: torch.Tensor  # [n_picks] int64: which output each real pick adds to
    n_out: int
    n_rows: int
    n_picks: int
    key: tuple  # the tokens and picks: equal keys make equal plans (MeZO's second forward of a step)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, width, picks): the bucket a graph is captured for."""
        return (self.ids.shape[0], self.ids.shape[1], self.picks.shape[1])

    def sums(self, picked: torch.Tensor) -> torch.Tensor:
        """Per output, the sum of its picks' log-probs (float64, CPU) from every pick's value."""
        vals = picked[: self.n_picks].to(torch.float64)
        return torch.zeros(self.n_out, dtype=torch.float64).index_add_(0, self.owner, vals)


def _build(rows: Sequence[tuple[int, ...]], picks: list[tuple[int, int, int, int]], n_out: int, cap: int,
           pad_id: int) -> Plan:
    """Plan from token rows and (row, position, target, owner) picks (numpy fills: a step's host time)."""
    width = bucket_width(max(len(r) for r in rows), cap)
    ids = np.full((next_pow2(len(rows)), width), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    pk = np.zeros((3, next_pow2(len(picks))), dtype=np.int64)
    pk[:, : len(picks)] = np.array([p[:3] for p in picks], dtype=np.int64).T
    owner = torch.tensor([p[3] for p in picks], dtype=torch.long)
    key = (tuple(rows), tuple(picks))
    return Plan(torch.from_numpy(ids), torch.from_numpy(pk), owner, n_out, len(rows), len(picks), key)


class PlanCache:
    """The last plan, given back when a call passes the very same token tuples again.

    MeZO scores one batch at +eps z and at -eps z (FZOO: K + 1 times): the objective hands the runner the
    same Example tuples each time. The cache keeps those tuples alive, so `is` on every one of them proves
    equal tokens (tuples never change) without comparing the tokens.
    """

    def __init__(self) -> None:
        self._leaves: list | None = None
        self._plan: Plan | None = None

    def get(self, leaves: list, make) -> Plan:
        """The cached plan when `leaves` (the call's token tuples, in order) are the cached ones, else make()."""
        old = self._leaves
        if old is not None and len(old) == len(leaves) and all(a is b for a, b in zip(old, leaves)):
            return self._plan
        plan = make()
        # only tuples prove their tokens by identity: a list could change between two calls
        self._plan, self._leaves = (plan, leaves) if all(type(x) is tuple for x in leaves) else (None, None)
        return plan


def score_leaves(requests: Sequence[ScoreRequest]) -> list:
    """A score call's token tuples in order (PlanCache.get's `leaves`)."""
    return [t for r in requests for t in (r.prompt_ids, r.completion_ids)]


def choice_leaves(prompts: Sequence[Sequence[int]], choices: Sequence[Sequence[Sequence[int]]]) -> list:
    """A score_choices call's token tuples in order (PlanCache.get's `leaves`)."""
    return [*prompts, *choices]


def plan_score(requests: Sequence[ScoreRequest], cap: int, pad_id: int = 0) -> Plan:
    """A row per request (prompt + completion); a pick per completion token; output = the request."""
    rows, picks = [], []
    for i, r in enumerate(requests):
        if not r.prompt_ids:
            raise ValueError(f"request {i}: empty prompt_ids; the first completion token needs a prompt token before it")
        rows.append(tuple(r.prompt_ids) + tuple(r.completion_ids))
        p = len(r.prompt_ids)
        picks += [(i, p - 1 + j, t, i) for j, t in enumerate(r.completion_ids)]
    return _build(rows, picks, len(requests), cap, pad_id)


def plan_choices(prompts: Sequence[Sequence[int]], choices: Sequence[Sequence[Sequence[int]]], cap: int,
                 pad_id: int = 0) -> Plan:
    """Outputs = every candidate of every prompt, in order. One-token candidates share their prompt's
    row (one pick each at the prompt's last position); otherwise a row per (prompt, candidate)."""
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i}: empty prompt_ids; the first completion token needs a prompt token before it")
    cands = [(b, tuple(c)) for b, cs in enumerate(choices) for c in cs]
    rows, picks = [], []
    if all(len(c) == 1 for _, c in cands):
        rows = [tuple(p) for p in prompts]
        picks = [(b, len(prompts[b]) - 1, c[0], o) for o, (b, c) in enumerate(cands)]
    else:
        for o, (b, c) in enumerate(cands):
            p = len(prompts[b])
            rows.append(tuple(prompts[b]) + c)
            picks += [(o, p - 1 + j, t, o) for j, t in enumerate(c)]
    return _build(rows, picks, len(cands), cap, pad_id)


def split_choices(sums: torch.Tensor, choices: Sequence[Sequence[Sequence[int]]]) -> list[torch.Tensor]:
    """plan_choices' outputs as one tensor of candidate scores per prompt."""
    return list(sums.split([len(cs) for cs in choices]))


def completion_lengths(requests: Sequence[ScoreRequest]) -> torch.Tensor:
    """Completion token counts (int64, CPU), as ForwardRunner.score returns them."""
    return torch.tensor([len(r.completion_ids) for r in requests], dtype=torch.int64)


def pick_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row, in float32: logits [n, vocab], targets [n]."""
    lg = logits.float()
    return lg.gather(1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(lg, dim=1)
