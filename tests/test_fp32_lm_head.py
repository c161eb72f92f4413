"""model.fp32_lm_head on the hf backend (CPU, bf16 weights): float32 logits from the 16-bit head's product, the
head's parameters and tie untouched, and scores that follow the float32 product rather than bf16's rounded one."""

from __future__ import annotations

import pytest
import torch
from gpu.sglang_models import save_random_model

from mezo_elastic.config import Config, ModelConfig
from mezo_elastic.runners.base import ScoreRequest
from mezo_elastic.runners.hf.runner import HFRunner
from mezo_elastic.runners.lm_head import fp32_logits

SPEC = dict(model_type="llama", vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_random_model(SPEC, tmp_path_factory.mktemp("fp32head"), seed=0, dtype=torch.float32)


def _runner(model_dir, fp32: bool) -> HFRunner:
    cfg = Config(model=ModelConfig(path=str(model_dir), dtype="bfloat16", device="cpu", fp32_lm_head=fp32))
    return HFRunner(cfg, torch.device("cpu"), str(model_dir))


def test_fp32_logits_is_the_float32_product():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 64, generator=g).to(torch.bfloat16)
    w = (torch.randn(300, 64, generator=g) * 2).to(torch.bfloat16)
    out = fp32_logits(h, w)
    want = h.float() @ w.float().t()
    assert out.dtype == torch.float32 and out.shape == (3, 5, 300)
    assert torch.allclose(out, want, rtol=1e-6, atol=1e-5)
    rounded = (h @ w.t()).float()  # today's bf16 logits: on a grid of up to 2^-8 of their size
    assert (rounded - want).abs().max() > 100 * (out - want).abs().max()


def test_hf_runner_scores_with_float32_logits(model_dir):
    plain, fp32 = _runner(model_dir, False), _runner(model_dir, True)
    head = fp32.model.get_output_embeddings()
    assert head.weight.dtype == torch.bfloat16
    assert head.weight.data_ptr() == fp32.model.get_input_embeddings().weight.data_ptr()  # still tied
    assert set(dict(fp32.model.named_parameters())) == set(dict(plain.model.named_parameters()))
    ids = torch.tensor([[5, 17, 230, 9, 41]])
    with torch.no_grad():
        logits = fp32.model(input_ids=ids).logits
        hidden = fp32.model.get_decoder()(input_ids=ids).last_hidden_state
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, hidden.float() @ head.weight.float().t(), rtol=1e-5, atol=1e-4)
    reqs = [ScoreRequest((5, 17, 230), (9, 41, 77)), ScoreRequest((8,), (600, 3))]
    a, _ = plain.score(reqs)
    b, n = fp32.score(reqs)
    assert n.tolist() == [3, 2]
    assert torch.allclose(a, b, atol=0.5) and not torch.equal(a, b)  # the same model, the logits' rounding apart
