"""The sglang mem_fraction_static check's arithmetic, on CPU (the GPU test feeds it a real GPU's numbers)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from test_troubleshooting_doc import assert_quoted

from mezo_elastic.errors import BackendError, ConfigError
from mezo_elastic.runners.sglang.memory import (
    GiB,
    Held,
    check_mem_fraction,
    kv_bytes_per_token,
    min_mem_fraction,
    weight_elements,
)

# Llama-3.2-1B's attention shape: 16 layers, 8 KV heads of 64
CONFIG = dict(num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, hidden_size=2048, head_dim=64)


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    save_file({"a": torch.zeros(1000, 1000), "b": torch.zeros(24)}, str(tmp_path / "model-1.safetensors"))
    save_file({"c": torch.zeros(500, 2)}, str(tmp_path / "model-2.safetensors"))
    return tmp_path


def test_weights_and_kv_arithmetic(model_dir):
    assert weight_elements(model_dir) == 1_000_000 + 24 + 1000  # headers of both shards, any stored dtype
    assert weight_elements(model_dir / "nothing") is None
    assert kv_bytes_per_token(CONFIG, 1, 2) == 2 * 16 * 8 * 64 * 2  # K and V, bf16
    assert kv_bytes_per_token(CONFIG, 2, 2) == 2 * 16 * 4 * 64 * 2  # heads split over TP
    # SGLang 0.5.17's pool is fraction x (free memory at start) - weights: the minimum is relative to free
    assert min_mem_fraction(40 * GiB, 1 * GiB, 100 * GiB) == pytest.approx(0.42)  # 0.41 + headroom
    assert min_mem_fraction(40 * GiB, 1 * GiB + 1, 100 * GiB) == pytest.approx(0.43)  # rounded up
    assert min_mem_fraction(40 * GiB, 1 * GiB, 50 * GiB) == pytest.approx(0.83)  # half the GPU free: twice


def test_too_small_fraction_names_the_minimum(model_dir):
    total, free = 140 * GiB, 139 * GiB
    check_mem_fraction(0.02, model_dir, "bfloat16", 1, 512, free, total)  # 2 MB of weights + 16 MB of KV: fits
    with pytest.raises(ConfigError) as e:
        check_mem_fraction(0.0001, model_dir, "bfloat16", 1, 512, free, total)
    msg = str(e.value)
    assert "model.mem_fraction_static=0.0001 is too small" in msg and "--model.mem_fraction_static=0.02" in msg
    assert_quoted(msg.replace(str(model_dir), "/models/llama-1b"))
    with pytest.raises(ConfigError, match="does not fit this GPU"):
        check_mem_fraction(0.9, model_dir, "float32", 1, 512, 0, total)


def test_memory_an_earlier_engine_holds_is_named(model_dir):
    """A second engine in one process that fits only once the first one's memory is back: one line that
    says which engines hold how much and what to do."""
    total, free = 140 * GiB, 2 * 2**20  # 2 MiB free: the weights alone do not fit
    for held, says in ((Held(1, 100 * GiB, 0), "100.00 GiB held by 1 SGLang engine(s) of this process still open"),
                       (Held(0, 0, 42 * GiB), "42.00 GiB that engines closed earlier in this process did not give back")):
        with pytest.raises(BackendError) as e:
            check_mem_fraction(0.3, model_dir, "bfloat16", 1, 512, free, total, held)
        msg = str(e.value)
        assert says in msg and "run each engine in a process of its own" in msg and "\n" not in msg
        if held.not_returned:
            assert_quoted(msg.replace(str(model_dir), "/models/llama-1b"))
    with pytest.raises(ConfigError, match="does not fit this GPU"):  # would not fit even with it back
        check_mem_fraction(0.3, model_dir, "bfloat16", 1, 512, free, total, Held(0, 0, 1 * 2**20))
