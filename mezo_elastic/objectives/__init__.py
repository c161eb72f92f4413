"""Objectives: what a MeZO step scores at theta + eps z and theta - eps z.

    scoring     lm (NLL of a fixed completion) and classification (cross-entropy over candidates)
    generation  reward: completions generated on the perturbed weights, scored by a reward function
    rewards     the reward functions (built-ins and MODULE:FUNCTION)
    shaping     population reward shaping (none, zscore, centered_rank)

`make_objective` gives the trainer one object with `losses(examples, step)` (float64 per example)
and `eval_sums(examples, step)` (sums it all-reduces over data slots).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from mezo_elastic.config import Config
from mezo_elastic.data.jsonl import Example
from mezo_elastic.objectives.scoring import example_losses
from mezo_elastic.runners.base import ForwardRunner


class Objective(Protocol):
    """Losses of a rank's examples on the current weights (see the module docstring)."""

    def losses(self, examples: Sequence[Example], step: int) -> torch.Tensor:
        """Loss per example (float64, CPU)."""
        ...

    def eval_sums(self, examples: Sequence[Example], step: int) -> dict[str, float]:
        """Per-metric sums over `examples` ("loss" always)."""
        ...


class ScoringObjective:
    """lm and classification through objectives.scoring.example_losses."""

    def __init__(self, cfg: Config, runner: ForwardRunner) -> None:
        from mezo_elastic.data.tasks import TASKS

        self.cfg, self.runner = cfg, runner
        d = cfg.data
        self.length_norm = d.candidate_score == "mean" or (d.candidate_score == "auto" and bool(d.task))
        self.nll_train = d.objective == "classification" and (d.class_loss == "nll" or (
            d.class_loss == "auto" and bool(d.task) and TASKS[d.task].teacher_forced))

    def _run(self, examples: Sequence[Example], objective: str = "") -> tuple[torch.Tensor, torch.Tensor | None]:
        d = self.cfg.data
        return example_losses(self.runner, examples, objective or d.objective, d.micro_batch, d.share_prompt,
                              self.length_norm)

    def losses(self, examples: Sequence[Example], step: int) -> torch.Tensor:
        """Loss per example (data.class_loss nll: the lm loss of the right candidate, MeZO's teacher forcing)."""
        if self.nll_train:
            from mezo_elastic.objectives.scoring import right_candidate_only

            return self._run(right_candidate_only(examples), "lm")[0]
        return self._run(examples)[0]

    def eval_sums(self, examples: Sequence[Example], step: int) -> dict[str, float]:
        """Loss sum (and correct count for classification)."""
        losses, correct = self._run(examples)
        out = {"loss": float(losses.sum())}
        if correct is not None:
            out["correct"] = float(correct.sum())
        return out


def make_objective(cfg: Config, runner: ForwardRunner, tokenizer) -> Objective:
    """The objective named by data.objective (a reward function is loaded by name first).

    Raises:
        ConfigError: data.reward names no built-in and no importable MODULE:FUNCTION.
    """
    if cfg.data.objective == "reward":
        from mezo_elastic.objectives.generation import RewardObjective
        from mezo_elastic.objectives.rewards import load_reward

        return RewardObjective(cfg, runner, tokenizer, load_reward(cfg.data.reward))
    return ScoringObjective(cfg, runner)
