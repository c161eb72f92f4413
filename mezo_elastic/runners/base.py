"""The ForwardRunner interface every backend implements. The MeZO loop sees only this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch

from mezo_elastic.zo.perturb import ParamSegment


@dataclass(frozen=True)
class ScoreRequest:
    """Score the completion tokens given the prompt tokens (token ids of the model's tokenizer)."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]


@dataclass(frozen=True)
class GenerateRequest:
    """Generate a completion of the prompt tokens; `seed` keys the sampling noise (unused when greedy)."""

    prompt_ids: tuple[int, ...]
    seed: int = 0


@dataclass(frozen=True)
class GenerationSettings:
    """How completions are generated (config section `generate`, plus the tokenizer's EOS)."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    eos_ids: tuple[int, ...] = ()  # a completion ends at the first of these (kept out of the completion)


@runtime_checkable
class ForwardRunner(Protocol):
    """A forward engine holding the model's weights.

    Contract:
      - `segments()` returns the trainable weights as contiguous 1-D views keyed by HF parameter
        name and element offset; the optimizer changes them in place and the runner must see the
        change on its next `score` (no re-upload, no rebinding).
      - `generate()` decodes completions on the current (perturbed) weights, the same way for +eps and
        -eps: greedy, or sampling whose noise depends on (request seed, position) only.
      - `score()` returns, per request and in order, the summed log-probability of the completion
        tokens (float64, CPU) and the number of completion tokens (int64, CPU).
      - `hf_state_dict()` / `load_hf_state_dict()` speak HF parameter names and shapes, so a
        checkpoint written by one backend loads into the other.
    """

    device: torch.device

    def segments(self) -> list[ParamSegment]:
        """The trainable weights as segments (see perturb.ParamSegment)."""
        ...

    def score(self, requests: Sequence[ScoreRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of completion-token log-probs [n] float64, completion token counts [n] int64)."""
        ...

    def generate(self, requests: Sequence[GenerateRequest], settings: GenerationSettings) -> list[tuple[int, ...]]:
        """Per request, in order, the generated token ids (without the prompt, cut before EOS).

        Greedy or Gumbel-max sampling (runners.sampling.gumbel_argmax) at the current weights; the
        engine's KV slots are free again when it returns.
        """
        ...

    def hf_state_dict(self, master: Sequence[tuple[ParamSegment, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """Every weight under its HF name and shape (CPU tensors, model dtype). With `master` (this
        rank's (segment, fp32 theta) pairs) the tensors holding trainable weights come back in fp32
        with the exact master values, of every TP rank where the engine shards them."""
        ...

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Overwrite the weights in place from HF-named tensors (all of them must be present)."""
        ...

    def save_pretrained(self, out_dir: Path) -> None:
        """Write an HF-loadable model directory (config, tokenizer files, safetensors weights)."""
        ...

    def close(self) -> None:
        """Release the engine's resources (GPU memory, process groups it created)."""
        ...
