"""Is model.mem_fraction_static enough? A check before SGLang starts (SGLang's own failure is a traceback).

SGLang 0.5.17 sizes its KV pool from the memory free when it starts (kv_cache_configurator.py,
_profile_available_bytes): pool = free after loading the weights - free before x (1 - fraction), that
is about fraction x free before - weights. The pool must hold at least one sequence of data.max_length
tokens, so the smallest fraction that works is

    (weights per GPU + KV bytes of one max_length sequence) / free memory before start  (+ 0.01 headroom)

Memory that earlier engines of this process still hold (open, or not given back by close: teardown.py)
is named in the refusal, since closing them or a process per engine is then the fix. The arithmetic is
here without CUDA (tested on CPU); SGLangRunner feeds it the GPU's numbers.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from mezo_elastic.errors import BackendError, ConfigError

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


HEADROOM = 0.01  # SGLang's request-to-token table, allocator slack and small buffers also come out of the pool


@dataclass(frozen=True)
class Held:
    """GPU memory this process's earlier SGLang engines hold (teardown.held_in_process)."""

    open_engines: int = 0
    open_bytes: int = 0
    not_returned: int = 0  # bytes engines closed in this process did not give back

    @property
    def total(self) -> int:
        return self.open_bytes + self.not_returned

    def describe(self) -> str:
        parts = []
        if self.open_engines:
            parts.append(f"{self.open_bytes / GiB:.2f} GiB held by {self.open_engines} SGLang engine(s) of this "
                         f"process still open")
        if self.not_returned:
            parts.append(f"{self.not_returned / GiB:.2f} GiB that engines closed earlier in this process did not "
                         f"give back")
        return " and ".join(parts)


def min_mem_fraction(weight_bytes: int, kv_bytes: int, free_bytes: int) -> float:
    """The smallest mem_fraction_static whose pool holds the weights and `kv_bytes`, when `free_bytes` are
    free as SGLang starts: rounded up to 0.01, plus HEADROOM."""
    return math.ceil(100 * (weight_bytes + kv_bytes) / free_bytes) / 100 + HEADROOM


def check_mem_fraction(fraction: float, model_dir: Path, dtype: str, tp_size: int, max_length: int,
                       free_bytes: int, total_bytes: int, held: Held = Held()) -> None:
    """Refuse a fraction too small for this model on this GPU, with the minimum that works.

    Raises:
        BackendError: it would fit but for memory this process's earlier engines hold (names it).
        ConfigError: model.mem_fraction_static below the minimum (or no room at all on the GPU).
    """
    numel = weight_elements(model_dir)
    if numel is None:  # dummy weights / other formats: nothing to measure here, SGLang decides
        return
    config = json.loads((Path(model_dir) / "config.json").read_text())
    weights = numel * DTYPE_BYTES[dtype] // tp_size
    kv = kv_bytes_per_token(config, tp_size, DTYPE_BYTES[dtype]) * max_length
    need = min_mem_fraction(weights, kv, free_bytes) if free_bytes > 0 else math.inf
    if fraction >= need:
        return
    detail = (f"weights {weights / GiB:.2f} GiB a GPU (tp_size={tp_size}) + KV cache of one {max_length}-token "
              f"sequence {kv / GiB:.3f} GiB, out of the {free_bytes / GiB:.2f} GiB free of {total_bytes / GiB:.0f} GiB")
    if held.total and fraction >= min_mem_fraction(weights, kv, free_bytes + held.total):
        raise BackendError(f"{model_dir} does not fit next to the SGLang engines this process built before: "
                           f"{held.describe()} ({detail}); close() the other engine first, or run each engine in "
                           f"a process of its own (docs/sglang.md, engines in one process)")
    if need >= 1:
        raise ConfigError(f"{model_dir} does not fit this GPU under model.backend=sglang ({detail}); raise "
                          f"model.tp_size or free the GPU")
    raise ConfigError(f"model.mem_fraction_static={fraction:g} is too small for {model_dir}: it needs at least "
                      f"{need:.2f} ({detail}); use --model.mem_fraction_static={need:.2f} or more")
