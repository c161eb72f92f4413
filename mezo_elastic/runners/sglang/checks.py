"""What the sglang backend checks before any GPU work: config values, the DP x TP layout, CUDA, sglang.

Its own module so the runner (runner.py) and the process-group set-up (dist.py)
both import it without importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config
from mezo_elastic.errors import BackendError, ConfigError
from mezo_elastic.runners import gguf
from mezo_elastic.runners.sglang import engine as compat
from mezo_elastic.runners.sglang import lora as sglang_lora

SUPPORTED_ARCHS = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def validate_mezo_config(cfg: Config, ctx: RankContext | None = None) -> None:
    """Check what the sglang backend needs before any GPU work.

    Raises:
        ConfigError: a config value the backend cannot use (names it and what is allowed).
        BackendError: no CUDA device, or sglang missing / outside the supported versions.
    """
    m = cfg.model
    if m.backend != "sglang":
        raise ConfigError(f"model.backend={m.backend!r}: these checks are for model.backend='sglang'")
    if m.device == "cpu":
        raise ConfigError("model.device='cpu' is not allowed with model.backend=sglang; use 'auto' or 'cuda' "
                          "(SGLang's CPU engine needs an sgl-kernel CPU build; use model.backend=hf on CPU)")
    if m.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={m.dtype!r} is not allowed with model.backend=sglang; choose one of {list(DTYPES)}")
    if not 0 <= m.sglang_port <= 65535 - cfg.dist.port_attempts * 64:
        raise ConfigError(f"model.sglang_port={m.sglang_port} must be 0 (derived) or a port <= "
                          f"{65535 - cfg.dist.port_attempts * 64}, leaving room for one candidate range per replica")
    if m.path and not Path(m.path).exists():
        raise ConfigError(f"model.path={m.path!r} does not exist; give an HF model directory or a GGUF file")
    if m.path and gguf.find_gguf(m.path) is None and not (Path(m.path) / "config.json").is_file():
        raise ConfigError(f"model.path={m.path!r} is not an HF model directory (no config.json) or a GGUF file")
    if cfg.peft.method == "lora":
        sglang_lora.check_targets(cfg.peft.target_list())
    if ctx is not None:
        layout(ctx, m.tp_size)
    if not torch.cuda.is_available():
        raise BackendError(f"model.backend=sglang needs a CUDA GPU; torch {torch.__version__} sees none "
                           f"(use model.backend=hf on CPU)")
    if ctx is not None and m.tp_size > torch.cuda.device_count() and ctx.local_world_size > torch.cuda.device_count():
        raise BackendError(f"{ctx.local_world_size} ranks on this node but only {torch.cuda.device_count()} GPU(s)")
    compat.check_version()


def check_architecture(model_path: str | Path) -> str:
    """The model class SGLang will build, from config.json's `architectures` (SGLang picks it there).

    Raises:
        BackendError: no such field, or an architecture this backend does not map to HF names.
    """
    config = Path(model_path) / "config.json"
    archs = json.loads(config.read_text()).get("architectures") or []
    if not archs:
        raise BackendError(f"{config} has no 'architectures' field, which SGLang needs to pick the model class; add "
                           f"e.g. \"architectures\": [\"LlamaForCausalLM\"] (supported: {list(SUPPORTED_ARCHS)}) "
                           f"or use model.backend=hf")
    if archs[0] not in SUPPORTED_ARCHS:
        raise BackendError(f"{model_path}: architecture {archs[0]} is not supported by model.backend=sglang; "
                           f"supported: {list(SUPPORTED_ARCHS)} (use model.backend=hf)")
    return archs[0]


CONTEXT_KEYS = ("max_sequence_length", "seq_length", "max_seq_len", "model_max_length", "max_position_embeddings")


def check_context_length(model_path: str | Path, max_length: int) -> None:
    """SGLang refuses a context (data.max_length + 1) longer than the model's own with a traceback; say it in
    one line first. The model's length as SGLang derives it (the first of CONTEXT_KEYS, times a rope
    scaling factor where one applies).

    Raises:
        ConfigError: data.max_length does not fit; names the largest that does.
    """
    config = Path(model_path) / "config.json"
    values = json.loads(config.read_text())
    key = next((k for k in CONTEXT_KEYS if values.get(k) is not None), None)
    if key is None:
        return
    limit, rope = int(values[key]), values.get("rope_scaling") or {}
    if rope.get("factor") and "original_max_position_embeddings" not in rope and rope.get("rope_type") != "llama3":
        limit = int(limit * rope["factor"])
    if max_length + 1 > limit:
        raise ConfigError(f"data.max_length={max_length} needs a context of {max_length + 1} tokens, but {config} "
                          f"allows {limit} ({key}); use --data.max_length={limit - 1} or less")


def layout(ctx: RankContext, tp_size: int) -> tuple[int, int, int, int]:
    """(tp_rank, tp_size, dp_rank, dp_size) of this rank; TP ranks are consecutive and on one node.

    Raises:
        ConfigError: tp_size does not divide the world size or the ranks on one node.
    """
    if ctx.world_size % tp_size:
        raise ConfigError(f"model.tp_size={tp_size} must divide the world size {ctx.world_size} "
                          f"(replicas = world / tp_size); use a tp_size among "
                          f"{[d for d in range(1, ctx.world_size + 1) if ctx.world_size % d == 0]}")
    if ctx.local_world_size % tp_size:
        raise ConfigError(f"model.tp_size={tp_size} must divide the ranks per node ({ctx.local_world_size}): "
                          f"a TP group never spans nodes")
    return ctx.rank % tp_size, tp_size, ctx.rank // tp_size, ctx.world_size // tp_size
