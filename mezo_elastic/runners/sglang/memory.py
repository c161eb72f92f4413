"""Is model.mem_fraction_static enough? A check before SGLang starts (SGLang's own failure is a traceback).

SGLang sizes its KV pool as what is left of `total * mem_fraction_static` once the weights are
loaded: rest = total * fraction - (memory in use before loading + weights). The pool must hold at
least one sequence of data.max_length tokens, so the smallest fraction that works is

    (in use before + weights per GPU + KV bytes of one max_length sequence) / total  (+ 0.01 headroom)

The arithmetic is here without CUDA (tested on CPU); SGLangRunner feeds it the GPU's numbers.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from mezo_elastic.errors import ConfigError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GiB = 1 << 30


def weight_elements(model_dir: Path) -> int | None:
    """Parameters stored in the directory's *.safetensors files (headers only); None without any."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def kv_bytes_per_token(config: dict, tp_size: int, elem_bytes: int) -> int:
    """K and V of one token over all layers, on one GPU of a TP group (heads split over tp_size)."""
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * max(heads // tp_size, 1) * head_dim * elem_bytes


HEADROOM = 0.01  # of total: SGLang's request-to-token table and allocator slack also come out of the pool


def min_mem_fraction(weight_bytes: int, kv_bytes: int, in_use_bytes: int, total_bytes: int) -> float:
    """The smallest mem_fraction_static whose pool holds the weights and `kv_bytes`: rounded up to 0.01,
    plus HEADROOM."""
    return math.ceil(100 * (in_use_bytes + weight_bytes + kv_bytes) / total_bytes) / 100 + HEADROOM


def check_mem_fraction(fraction: float, model_dir: Path, dtype: str, tp_size: int, max_length: int,
                       free_bytes: int, total_bytes: int) -> None:
    """Refuse a fraction too small for this model on this GPU, with the minimum that works.

    Raises:
        ConfigError: model.mem_fraction_static below the minimum (or no room at all on the GPU).
    """
    numel = weight_elements(model_dir)
    if numel is None:  # dummy weights / other formats: nothing to measure here, SGLang decides
        return
    config = json.loads((Path(model_dir) / "config.json").read_text())
    weights = numel * DTYPE_BYTES[dtype] // tp_size
    kv = kv_bytes_per_token(config, tp_size, DTYPE_BYTES[dtype]) * max_length
    in_use = total_bytes - free_bytes
    need = min_mem_fraction(weights, kv, in_use, total_bytes)
    if fraction >= need:
        return
    detail = (f"weights {weights / GiB:.2f} GiB a GPU (tp_size={tp_size}) + KV cache of one {max_length}-token "
              f"sequence {kv / GiB:.3f} GiB + {in_use / GiB:.2f} GiB already in use, of {total_bytes / GiB:.0f} GiB")
    if need >= 1:
        raise ConfigError(f"{model_dir} does not fit this GPU under model.backend=sglang ({detail}); raise "
                          f"model.tp_size or free the GPU")
    raise ConfigError(f"model.mem_fraction_static={fraction:g} is too small for {model_dir}: it needs at least "
                      f"{need:.2f} ({detail}); use --model.mem_fraction_static={need:.2f} or more")
