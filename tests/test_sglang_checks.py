"""The sglang backend's architecture check (runners/sglang/checks.py), on CPU: the built-in model passes it
(it failed with "architecture ? is not supported" while its config.json had no `architectures`), an older
built-in directory is repaired, and a config without the field or with another class gets one line."""

from __future__ import annotations

import json

import pytest

from mezo_elastic.data import builtin
from mezo_elastic.config import parse_args
from mezo_elastic.errors import BackendError, ConfigError
from mezo_elastic.runners.sglang.checks import SUPPORTED_ARCHS, check_architecture, check_context_length


def test_builtin_model_names_its_architecture(tmp_path):
    path = builtin.ensure_tiny_model(tmp_path)
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert check_architecture(path) == "LlamaForCausalLM"


def test_builtin_model_made_before_the_field_is_repaired(tmp_path):
    path = builtin.ensure_tiny_model(tmp_path)
    values = json.loads((path / "config.json").read_text())
    del values["architectures"]
    (path / "config.json").write_text(json.dumps(values))
    with pytest.raises(BackendError, match="has no 'architectures' field"):
        check_architecture(path)
    assert builtin.ensure_tiny_model(tmp_path) == path  # a later run (every rank) adds it in place
    assert check_architecture(path) == "LlamaForCausalLM"
    assert {k: v for k, v in json.loads((path / "config.json").read_text()).items() if k != "architectures"} == values


def test_missing_or_unsupported_architecture_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BackendError) as e:
        check_architecture(tmp_path)
    assert "\n" not in str(e.value) and "LlamaForCausalLM" in str(e.value) and "model.backend=hf" in str(e.value)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(BackendError, match="architecture GPT2LMHeadModel is not supported by model.backend=sglang"):
        check_architecture(tmp_path)
    assert "LlamaForCausalLM" in SUPPORTED_ARCHS


def test_builtin_defaults_fit_the_builtin_models_context(tmp_path):
    """SGLang refuses context_length = data.max_length + 1 above the model's (a traceback); the built-in model has
    64 positions, so its preset's data.max_length is 63, and a longer one is one line naming the largest."""
    path = builtin.ensure_tiny_model(tmp_path)
    check_context_length(path, parse_args(["--model.backend=sglang"]).data.max_length)
    with pytest.raises(ConfigError) as e:
        check_context_length(path, 128)
    assert str(e.value) == (f"data.max_length=128 needs a context of 129 tokens, but {path / 'config.json'} allows 64 "
                            f"(max_position_embeddings); use --data.max_length=63 or less")
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192,
                                                      "rope_scaling": {"factor": 4.0, "rope_type": "linear"}}))
    check_context_length(tmp_path, 32000)  # scaled rope: 4 x 8192, as SGLang derives it
