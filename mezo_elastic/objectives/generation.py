"""The reward objective: generate a completion per example on the current weights, score it.

loss = -reward, so the projected gradient, the step log, replay and resume are those of the scoring
objectives. Generation goes through the runner (`ForwardRunner.generate`), in chunks of
data.micro_batch prompts; the text is the tokenizer's decode of the new tokens, cut before the first
stop string.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from mezo_elastic.config import Config
from mezo_elastic.data.jsonl import Example
from mezo_elastic.objectives.rewards import Reward, compute_rewards
from mezo_elastic.runners.base import ForwardRunner, GenerateRequest, GenerationSettings


def sample_seed(run_seed: int, phase: str, step: int, index: int) -> int:
    """Sampling-noise seed of one example: the same at +eps and -eps, never derived from RANK."""
    h = hashlib.blake2b(f"gen|{run_seed}|{phase}|{step}|{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def settings_for(cfg: Config, tokenizer) -> GenerationSettings:
    """The runner's generation settings from the config tree and the tokenizer's EOS."""
    eos = (tokenizer.eos_token_id,) if cfg.generate.eos and tokenizer.eos_token_id is not None else ()
    return GenerationSettings(cfg.generate.max_new_tokens, cfg.generate.temperature, eos)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest of the stop strings."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


class RewardObjective:
    """Per-example losses -reward(generated completion, row); eval reports the mean reward."""

    def __init__(self, cfg: Config, runner: ForwardRunner, tokenizer, reward: Reward) -> None:
        self.cfg, self.runner, self.tokenizer, self.reward = cfg, runner, tokenizer, reward
        self.settings = settings_for(cfg, tokenizer)

    def completions(self, examples: Sequence[Example], phase: str, step: int) -> list[str]:
        """Generated text of every example (micro_batch prompts a runner call)."""
        mb, out = self.cfg.data.micro_batch, []
        for lo in range(0, len(examples), mb):
            chunk = examples[lo : lo + mb]
            reqs = [GenerateRequest(ex.prompt_ids, sample_seed(self.cfg.seed, phase, step, ex.index)) for ex in chunk]
            for ids in self.runner.generate(reqs, self.settings):
                text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
                out.append(cut_at_stop(text, self.cfg.generate.stop))
        return out

    def rewards(self, examples: Sequence[Example], phase: str, step: int) -> torch.Tensor:
        """Reward of every example's completion (float64)."""
        texts = self.completions(examples, phase, step)
        vals = compute_rewards(self.reward, texts, [ex.row for ex in examples], [ex.where for ex in examples])
        return torch.tensor(vals, dtype=torch.float64)

    def losses(self, examples: Sequence[Example], step: int) -> torch.Tensor:
        """-reward per example, generated with step `step`'s sampling noise."""
        return -self.rewards(examples, "train", step)

    def eval_sums(self, examples: Sequence[Example], step: int) -> dict[str, float]:
        """Sums to all-reduce: loss, reward, rewards equal to 1, rewards neither 0 nor 1."""
        r = self.rewards(examples, "eval", step)
        return {"loss": float(-r.sum()), "reward": float(r.sum()), "correct": float((r == 1).sum()),
                "nonbinary": float(((r != 0) & (r != 1)).sum())}
