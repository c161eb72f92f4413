"""Tiny random HF models of real architectures, and helpers shared by the GPU tests and bench/."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config, ModelConfig
from mezo_elastic.runners.base import ScoreRequest

# Llama-3.2-1B's conventions (tied embeddings, 128256 vocab, llama3 rope scaling, GQA 4:1, head_dim 64),
# a Llama-2 style untied one, and a Qwen2 (qkv bias, tied) one; few layers, narrow.
TINY = {
    "llama32_tied": dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=256,
                         intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                         head_dim=64, rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                                             high_freq_factor=4.0,
                                                             original_max_position_embeddings=8192)),
    "llama_untied": dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=1000, hidden_size=256,
                         intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=2048),
    "qwen2_tied": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=1536, hidden_size=256,
                       intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=4096,
                       rms_norm_eps=1e-6),
}

LLAMA_1B = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
                intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                head_dim=64, rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=131072,
                rms_norm_eps=1e-5, rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                                    high_freq_factor=4.0, original_max_position_embeddings=8192))
# SmolLM2-135M's shape (the real model of shared/notes/gpu-real-model.md), for host-bound step benchmarks.
SMOLLM2_135M = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=576,
                    intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192, rms_norm_eps=1e-5)
LLAMA_8B = dict(LLAMA_1B, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, head_dim=128,
                tie_word_embeddings=False)


def hf_config(spec: dict):
    """A transformers config object from one of the dicts above."""
    from transformers import AutoConfig

    spec = dict(spec)
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def save_random_model(spec: dict, out: Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                      weights: bool = True) -> Path:
    """Write config.json (and random bf16 safetensors weights unless weights=False) to `out`."""
    from transformers import AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    config = hf_config(spec)
    if not weights:
        config.save_pretrained(out)
        return out
    torch.manual_seed(seed)
    # Initialise on the GPU when there is one: an 8B random init on CPU takes minutes.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out, safe_serialization=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


TRAINED_VOCAB = 512


def save_trained_model(spec: dict, out: Path, seed: int = 0, steps: int = 300) -> Path:
    """Like save_random_model, but first trained (AdamW, fp32, on the GPU) on a fixed bigram rule
    over the first TRAINED_VOCAB ids (next = (31 * token + 7) mod TRAINED_VOCAB) so next-token
    distributions are peaked, as a trained model's are: a random model's top logits are near-ties
    everywhere, so two bf16 engines' greedy paths part after a few tokens whatever their correctness.
    Prompts of ids below TRAINED_VOCAB stay on the trained part."""
    from transformers import AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    config = hf_config(spec)
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    vocab = TRAINED_VOCAB
    g = torch.Generator(device="cuda").manual_seed(seed)
    for _ in range(steps):
        first = torch.randint(0, vocab, (32, 1), device="cuda", generator=g)
        seq = [first]
        for _ in range(31):
            seq.append((31 * seq[-1] + 7) % vocab)
        ids = torch.cat(seq, 1)
        ids[:, 8] = torch.randint(0, vocab, (32,), device="cuda", generator=g)  # not every step is rule-bound
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    del model, opt
    torch.cuda.empty_cache()
    return out


def single_ctx() -> RankContext:
    """A one-process rank context (no launcher)."""
    return RankContext(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, master_addr=None,
                       master_port=None, restart_count=0, run_id="gpu-test", launcher="single")


def sglang_cfg(path: Path | str, **model: object) -> Config:
    """A Config for the sglang backend on `path` (bf16, triton attention)."""
    fields = dict(backend="sglang", path=str(path), dtype="bfloat16", device="cuda", attention_backend="triton",
                  mem_fraction_static=0.3)
    fields.update(model)
    cfg = Config(model=ModelConfig(**fields))
    cfg.data.max_length = 512
    return cfg


def random_requests(n: int, vocab: int, seed: int, prompt: tuple[int, int] = (8, 60),
                    completion: tuple[int, int] = (1, 30)) -> list[ScoreRequest]:
    """n requests of random token ids with prompt and completion lengths drawn from the ranges."""
    rng = random.Random(seed)
    return [ScoreRequest(tuple(rng.randrange(vocab) for _ in range(rng.randint(*prompt))),
                         tuple(rng.randrange(vocab) for _ in range(rng.randint(*completion)))) for _ in range(n)]


def mean_nll(score: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean completion-token NLL of a runner's score() output."""
    lp, n = score
    return float(-lp.sum() / n.sum())
