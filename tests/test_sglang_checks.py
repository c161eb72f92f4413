"""The sglang backend's architecture check (runners/sglang/checks.py), on CPU: the built-in model passes it
(it failed with "architecture ? is not supported" while its config.json had no `architectures`), an older
built-in directory is repaired, and a config without the field or with another class gets one line."""

from __future__ import annotations

import json

import pytest

from mezo_elastic.data import builtin
from mezo_elastic.errors import BackendError
from mezo_elastic.runners.sglang.checks import SUPPORTED_ARCHS, check_architecture


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
