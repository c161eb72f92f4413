"""The hf backend's scoring on CUDA: fixed-shape plans (runners/scoring_plan.py) through CUDA graphs.

Each bucket's forward is the transformers model on right-padded rows without an attention mask (SDPA's
causal flash kernel; the padding follows every real token, so no real position sees it), then the
picks' log-probs. For the architectures in SPLIT_HEAD the LM head runs on the picked positions only
(their forward is exactly lm_head(final hidden states)); any other model runs its whole forward, so a
logit scale or soft-cap of its own stays in.
"""

from __future__ import annotations

import torch

from mezo_elastic.runners.graph_scorer import GraphScorer, Slot
from mezo_elastic.runners.scoring_plan import pick_logprobs

# model_type values whose CausalLM forward is logits = lm_head(decoder(...)) and nothing else.
SPLIT_HEAD = ("llama", "mistral", "qwen2", "qwen3")


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
            with kernels():
                if split:
                    hidden = body(input_ids=ids, use_cache=False).last_hidden_state
                    logits = head(hidden[picks[0], picks[1]])
                else:
                    logits = model(input_ids=ids, use_cache=False).logits[picks[0], picks[1]]
            return pick_logprobs(logits, picks[2])

        return Slot(ids=ids, picks=picks, run=run)

    return GraphScorer(make_slot, device, capture)
