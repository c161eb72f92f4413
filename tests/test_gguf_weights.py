"""What runners/gguf.py writes for a tied model: the embedding under its own name, once.

SGLang's Llama loader skips lm_head.weight when tie_word_embeddings is set, so a file holding the tied
tensor only as lm_head.weight (safetensors' save_model picks that name) left SGLang's embedding unloaded
(H200, 2026-12-01: SmolLM2-135M mean completion NLL 10.80 = ln 49152 on sglang, 4.40 on hf).
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from mezo_elastic.runners.gguf import untied_state


def test_tied_embedding_is_stored_under_the_embedding_name(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # really tied
    save_file(untied_state(model), str(tmp_path / "model.safetensors"))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in saved
    assert torch.equal(saved["model.embed_tokens.weight"], model.model.embed_tokens.weight)
    assert set(saved) == set(model.state_dict()) - {"lm_head.weight"}
    # and what HF reads back from it is the same model
    cfg.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    ids = torch.tensor([[1, 5, 7, 9]])
    assert torch.equal(back(input_ids=ids).logits, model(input_ids=ids).logits)
