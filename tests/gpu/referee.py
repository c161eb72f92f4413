"""The referee of greedy parity: one request at a time, unpadded, in fp32, HF transformers on the same weights.

Two bf16 engines (HF generate, SGLang decode graphs) follow the same greedy path until their top two
logits are close enough for bf16 rounding to swap them; after that the paths owe each other nothing.
So parity is judged at each FIRST divergence, not by an agreement rate: the referee computes the
next-token logits of the common prefix in fp32, and the two engines' tokens there must be a near-tie,
|referee logit(a) - referee logit(b)| <= NEAR_TIE. A real bug (wrong padding, a stale KV slot, a
mis-mapped weight) diverges where the referee prefers one token by a wide margin. Each engine is also
judged against the referee's own greedy path the same way. Agreement rates are reported, not asserted.

Used by tests/gpu/test_sglang_generate.py on the toy models and by the real-model GPU tests.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import torch

NEAR_TIE = 0.5  # referee logit gap between the two tokens at a first divergence (the real model: issue 24)


def bf16_ulp(x: float) -> float:
    """Spacing of bfloat16 numbers (8 significant bits) at magnitude |x|."""
    return 2.0 ** (math.floor(math.log2(max(abs(x), 2.0 ** -126))) - 7)


class Referee:
    """HF transformers in fp32 on one request at a time, no padding, no batching."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        from transformers import AutoModelForCausalLM

        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
        # transformers 5.17 (the GPU machine) takes past_key_values; later 5.x renamed it cache
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def next_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """fp32 logits of the token after `ids`."""
        return self.model(input_ids=torch.tensor([list(ids)], device=self.device)).logits[0, -1].float()

    @torch.no_grad()
    def greedy(self, prompt: Sequence[int], max_new: int, eos_ids: Sequence[int] = ()) -> tuple[int, ...]:
        """The referee's own greedy completion (cut before the first EOS, as the runners cut theirs)."""
        out = self.model(input_ids=torch.tensor([list(prompt)], device=self.device), use_cache=True)
        toks: list[int] = []
        for _ in range(max_new):
            tok = int(out.logits[0, -1].float().argmax())
            if tok in eos_ids:
                break
            toks.append(tok)
            past = getattr(out, "past_key_values", None)
            past = getattr(out, "cache", None) if past is None else past
            out = self.model(input_ids=torch.tensor([[tok]], device=self.device), use_cache=True,
                             **{self._cache_kw: past})
        return tuple(toks)

    def close(self) -> None:
        self.model = None
        torch.cuda.empty_cache()


@dataclass
class Divergence:
    request: int
    position: int  # index into the completion
    tokens: tuple[str, str]  # the two paths' tokens there ("eos" where a path ended)
    gap: float  # |referee logit difference| of the two tokens at the common prefix
    scale: float = 0.0  # the referee's largest |logit| there (what a bf16 engine's logits round at)


@dataclass
class Verdict:
    """Per pair of paths: (same completions, requests) and the first divergences with their gaps."""

    agree: dict[str, tuple[int, int]] = field(default_factory=dict)
    divergences: dict[str, list[Divergence]] = field(default_factory=dict)
    ulps: int = 0  # near-tie bound: max(NEAR_TIE, ulps bf16 spacings at the divergence's logit scale)

    def bound(self, d: Divergence) -> float:
        return max(NEAR_TIE, self.ulps * bf16_ulp(d.scale))

    @property
    def wide(self) -> list[tuple[str, Divergence]]:
        """Divergences that are not near-ties: what fails the test."""
        return [(pair, d) for pair, ds in self.divergences.items() for d in ds if d.gap > self.bound(d)]

    def line(self) -> str:
        rates = ", ".join(f"{pair} {s}/{n} ({s / n:.0%})" for pair, (s, n) in self.agree.items())
        gaps = ", ".join(f"{pair} max {max((d.gap for d in ds), default=0.0):.3f} over {len(ds)}"
                         for pair, ds in self.divergences.items())
        wide = "; ".join(f"{pair} request {d.request} token {d.position}: {d.tokens[0]} vs {d.tokens[1]} gap {d.gap:.3f} "
                         f"(logit scale {d.scale:.1f}, bound {self.bound(d):.3f})"
                         for pair, d in self.wide[:6])
        rule = f"{NEAR_TIE}" + (f" or {self.ulps} bf16 ulps of the logit scale" if self.ulps else "")
        return (f"greedy completions equal token for token: {rates}; referee logit gap at the first divergence: "
                f"{gaps}; " + (f"NOT near-ties (> {rule}): {wide}" if wide else f"all near-ties (<= {rule})"))


def _logit(logits: torch.Tensor, tok: int | None, eos_ids: Sequence[int]) -> float:
    """The referee's logit of `tok`; of the likeliest EOS where the path ended (tok None)."""
    if tok is None:
        return max(float(logits[e]) for e in eos_ids) if eos_ids else float("-inf")
    return float(logits[tok])


def judge(referee: Referee, prompts: Sequence[Sequence[int]], paths: dict[str, Sequence[Sequence[int]]],
          eos_ids: Sequence[int] = (), ulps: int = 0) -> Verdict:
    """Compare every pair of named greedy paths (completions of `prompts`): agreement and, at each first
    divergence, the referee's logit gap between the two tokens on the common prefix. `ulps` > 0 widens the
    near-tie bound to that many bf16 spacings at the referee's largest |logit| there (toy models only)."""
    verdict = Verdict(ulps=ulps)
    for (na, pa), (nb, pb) in combinations(paths.items(), 2):
        pair = f"{na}=={nb}"
        divs = []
        for i, (prompt, x, y) in enumerate(zip(prompts, pa, pb)):
            x, y = tuple(x), tuple(y)
            if x == y:
                continue
            j = next((k for k, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            tx, ty = (x[j] if j < len(x) else None), (y[j] if j < len(y) else None)
            logits = referee.next_logits(list(prompt) + list(x[:j]))
            gap = abs(_logit(logits, tx, eos_ids) - _logit(logits, ty, eos_ids))
            divs.append(Divergence(i, j, (str(tx if tx is not None else "eos"), str(ty if ty is not None else "eos")),
                                   gap, float(logits.abs().max())))
        verdict.agree[pair] = (len(prompts) - len(divs), len(prompts))
        verdict.divergences[pair] = divs
    return verdict
