"""The hf backend's LoRA adapter: a peft model around the loaded base model, trained as segments.

peft injects LoRA layers into the transformers model in place (`get_peft_model`): the runner keeps
scoring and generating with that same transformers model, and this class owns what differs from a
full-weight run: which tensors are trainable, what a checkpoint holds, what final/ is.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import torch

from mezo_elastic.config import Config
from mezo_elastic.errors import BackendError
from mezo_elastic.runners import lora
from mezo_elastic.zo.perturb import ParamSegment


class LoraAdapter:
    """A LoRA adapter (peft) on `model`, initialised from the run seed (mezo_elastic.runners.lora)."""

    def __init__(self, model: torch.nn.Module, cfg: Config, base_path: str) -> None:
        from peft import get_peft_model

        try:
            with warnings.catch_warnings():  # transformers 5.24 deprecation noise from inside peft
                warnings.simplefilter("ignore", FutureWarning)
                # autocast off: the adapter is held in model.dtype like every other weight (SGLang's LoRA
                # pool holds it in the model dtype too); mezo.master_weights keeps 16-bit runs exact.
                self.peft_model = get_peft_model(model, lora.peft_lora_config(cfg.peft, base_path),
                                                 autocast_adapter_dtype=False)
        except ValueError as e:  # e.g. "Target modules {...} not found in the base model"
            raise BackendError(f"peft.targets={cfg.peft.targets!r}: {e}") from None
        self.peft_model.requires_grad_(False)  # forward only
        self.params: dict[str, torch.nn.Parameter] = {
            lora.saved_name(n): p for n, p in self.peft_model.named_parameters() if ".lora_" in n
        }
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(lora.init_tensor(cfg.seed, name, tuple(p.shape)).to(p.dtype))

    @property
    def model(self) -> torch.nn.Module:
        """The transformers model with the LoRA layers in it (a normal HF model: forward, generate)."""
        return self.peft_model.get_base_model()

    def segments(self, trainable: str) -> list[ParamSegment]:
        """The adapter tensors (those whose saved name matches the regex `trainable`) as segments."""
        pattern = re.compile(trainable)
        return [ParamSegment(p.data.view(-1), name, 0, decay=True)
                for name, p in self.params.items() if pattern.search(name)]

    def state_dict(self, master: Sequence[tuple[ParamSegment, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """The adapter under its saved names, on CPU; with `master`, those tensors in fp32 at the master values."""
        state = {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}
        for seg, m in master or ():
            state[seg.name] = m.detach().to("cpu", torch.float32, copy=True).view(state[seg.name].shape)
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy adapter tensors (saved names, all present) into the live adapter in place."""
        missing = sorted(set(self.params) - set(state))
        if missing:
            raise BackendError(f"adapter state is missing {len(missing)} tensor(s), e.g. {missing[:3]} "
                               f"(a checkpoint of a run with other peft settings?)")
        for name, p in self.params.items():
            if state[name].shape != p.shape:
                raise BackendError(f"{name}: shape {tuple(state[name].shape)} does not match adapter {tuple(p.shape)}")
            p.copy_(state[name].to(p.dtype))

    def save(self, out_dir: Path) -> None:
        """Write a peft adapter directory (adapter_config.json + adapter_model.safetensors)."""
        self.peft_model.save_pretrained(str(out_dir), safe_serialization=True)

    def save_merged(self, out_dir: Path) -> None:
        """Write the base model with the adapter merged in, HF-loadable. Merges in place: call last."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            merged = self.peft_model.merge_and_unload()
        merged.save_pretrained(str(out_dir), safe_serialization=True)
