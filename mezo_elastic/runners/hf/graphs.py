"""The hf backend's scoring on CUDA: fixed-shape plans (runners/scoring_plan.py) through CUDA graphs.

Each bucket's forward is the transformers model on right-padded rows without an attention mask (SDPA's
causal flash kernel; the padding follows every real token, so no real position sees it), then the
picks' log-probs. For the architectures in SPLIT_HEAD the LM head runs on the picked positions only
(their forward is exactly lm_head(final hidden states)); any other model runs its whole forward, so a
logit scale or soft-cap of its own stays in.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from mezo_elastic.runners.graph_scorer import GraphScorer, Slot
from mezo_elastic.runners.scoring_plan import pick_logprobs

# model_type values whose CausalLM forward is logits = lm_head(decoder(...)) and nothing else.
SPLIT_HEAD = ("llama", "mistral", "qwen2", "qwen3")
CAUSAL_SDPA = "mezo_causal_sdpa"  # the attention implementation registered with transformers below


@functools.cache
def _register_causal_sdpa() -> None:
    """Register CAUSAL_SDPA with transformers' attention and mask interfaces (once a process)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        kwargs.pop("is_causal", None)  # right-padded rows: causal is the whole mask
        return sdpa_attention_forward(module, query, key, value, None, *args, is_causal=True, **kwargs)

    AttentionInterface.register(CAUSAL_SDPA, attention)
    AttentionMaskInterface.register(CAUSAL_SDPA, lambda *args, **kwargs: None)


@contextlib.contextmanager
def causal_sdpa(model: torch.nn.Module):
    """Within the block `model` attends through CAUSAL_SDPA (its other forwards keep their own)."""
    _register_causal_sdpa()
    saved = model.config._attn_implementation
    model.config._attn_implementation = CAUSAL_SDPA
    try:
        yield
    finally:
        model.config._attn_implementation = saved


def hf_graph_scorer(model: torch.nn.Module, device: torch.device, capture: bool, kernels) -> GraphScorer:
    """A GraphScorer over `model` (a transformers causal LM on `device`); `kernels()` is the SDPA
    kernel context the runner's other forwards use."""
    split = getattr(model.config, "model_type", "") in SPLIT_HEAD
    body, head = (model.get_decoder(), model.get_output_embeddings()) if split else (None, None)

    def make_slot(shape: tuple[int, int, int]) -> Slot:
        rows, width, n_picks = shape
        ids = torch.zeros((rows, width), dtype=torch.long, device=device)
        picks = torch.zeros((3, n_picks), dtype=torch.long, device=device)

        def run() -> torch.Tensor:
            with kernels(), causal_sdpa(model):
                if split:
                    hidden = body(input_ids=ids, use_cache=False).last_hidden_state
                    logits = head(hidden[picks[0], picks[1]])
                else:
                    logits = model(input_ids=ids, use_cache=False).logits[picks[0], picks[1]]
            return pick_logprobs(logits, picks[2])

        return Slot(ids=ids, picks=picks, run=run)

    # The weights' addresses: a user's loop may rebind them (param.data = ...), which a graph would not see.
    # The Parameter objects are listed once: walking the modules every forward costs ~0.5 ms (272 tensors).
    params = list(model.parameters())
    return GraphScorer(make_slot, device, capture, storage=lambda: tuple(p.data_ptr() for p in params))
