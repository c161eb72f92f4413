"""LoRA as this package trains it, for every backend: the adapter's names, its init, its peft config.

Names. The trainable tensors are the adapter's, under the names they have in a saved PEFT adapter
(adapter_model.safetensors), e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`:
the live peft parameter name without the adapter name (`.default`). z is keyed by these names, the
checkpoints and final/ hold these names, and SGLang loads adapters under them too, so any backend
that holds the same adapter follows the same trajectory.

Init (MeZO's large_models/lora.py and peft's default alike): lora_A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
(kaiming_uniform with a = sqrt(5), as nn.Linear), lora_B = 0, so the adapted model starts as the base
model. Here the uniform draws come from a CPU generator seeded by (run seed, name): the same values on
any device, world size and backend, without storing them (an export replays from them).
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peft import LoraConfig

    from mezo_elastic.config import PeftConfig

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# A saved adapter's tensor name: <module path>.lora_A.weight or <module path>.lora_B.weight
_NAME = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


def peft_lora_config(cfg: "PeftConfig", base_path: str = "") -> "LoraConfig":
    """The peft LoraConfig of peft.rank/alpha/targets: no dropout (forward passes only), no bias."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=cfg.target_list(), lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_path or None)


def saved_name(live_name: str, adapter_name: str = "default") -> str:
    """The name peft writes to adapter_model.safetensors for a live parameter name."""
    return live_name.replace(f".{adapter_name}.", ".")


def init_seed(run_seed: int, name: str) -> int:
    """Seed of the CPU generator that draws the init of adapter tensor `name` (< 2**63)."""
    h = hashlib.blake2b(f"lora-init|{run_seed}|{name}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def init_tensor(run_seed: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The initial value (fp32, CPU) of the adapter tensor `name` of `shape` ([r, in] for A, [out, r] for B).

    Raises:
        ValueError: `name` is not a saved adapter name (…lora_A.weight / …lora_B.weight).
    """
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a LoRA adapter tensor name (...lora_A.weight or ...lora_B.weight)")
    if m["which"] == "B":
        return torch.zeros(shape, dtype=torch.float32)
    bound = 1.0 / math.sqrt(shape[1])  # kaiming_uniform(a=sqrt(5)): gain sqrt(1/3), bound sqrt(3)*gain/sqrt(fan_in)
    g = torch.Generator(device="cpu").manual_seed(init_seed(run_seed, name))
    return (torch.rand(shape, generator=g, dtype=torch.float32) * 2.0 - 1.0) * bound


def adapter_config_dict(cfg: "PeftConfig", base_path: str = "") -> dict:
    """adapter_config.json of the adapter (JSON-able), as peft writes it for an inference adapter."""
    d = peft_lora_config(cfg, base_path).to_dict()
    d.update(peft_type="LORA", task_type="CAUSAL_LM", target_modules=sorted(cfg.target_list()), inference_mode=True)
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}


def adapter_shapes(model_path: str, cfg: "PeftConfig", trust_remote_code: bool = False) -> dict[str, tuple[int, ...]]:
    """Saved name -> shape of every tensor of the adapter peft puts on the model at `model_path`.

    Built on the meta device (no weights read, no memory), so an engine that is not transformers
    gets exactly the hf backend's names and shapes.

    Raises:
        ValueError: peft finds none of peft.targets in the model.
    """
    import warnings

    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        peft_model = get_peft_model(model, peft_lora_config(cfg), autocast_adapter_dtype=False)
    return {saved_name(n): tuple(p.shape) for n, p in peft_model.named_parameters() if ".lora_" in n}


def target_candidates(model_path: str, trust_remote_code: bool = False) -> list[str]:
    """The names peft.targets can use for the model at `model_path`: the last part of the name of every
    linear module (q_proj, v_proj, ...), sorted; built on the meta device like adapter_shapes."""
    import warnings

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    # peft's LoRA wraps Linear (and GPT-2's Conv1D, which has a weight of two dimensions and no kernel)
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if n and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2
                   and not isinstance(m, torch.nn.Embedding)})
