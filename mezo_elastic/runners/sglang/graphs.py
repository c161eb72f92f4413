"""The sglang backend's scoring through CUDA graphs: a fixed EXTEND batch per bucket, captured once.

SGLang's own prefill graphs (model.sglang_prefill_graphs) break the graph at every attention layer and
rebuild the batch on the host for every forward. Scoring needs less: a bucket (scoring_plan.Plan.shape)
is `rows` requests of exactly `width` tokens (right-padded: causal attention keeps the padding out of
every real position), so the ScheduleBatch, ForwardBatch, KV slots and attention metadata of a bucket
never change; only the token ids do. The bucket's batch is prepared once, its whole forward (SGLang's
decoder with its triton attention and fused kernels, then the picks' log-probs) captured once, and
each scoring call copies the ids in and replays it.

The triton backend keeps some metadata (qo_indptr, kv_indptr) in buffers that every forward rewrites,
so the slot's `refresh` re-runs init_forward_metadata on its own batch before each replay.
Used at tp_size 1 without LoRA (a TP forward's LM head is vocab-parallel; LoRA batches carry adapter
state); elsewhere the runner keeps its per-call batches.
"""

from __future__ import annotations

import torch

from mezo_elastic.runners import lm_head
from mezo_elastic.runners.graph_scorer import GraphScorer, Slot
from mezo_elastic.runners.scoring_plan import pick_logprobs


def fits(engine, shape: tuple[int, int, int], context_length: int) -> bool:
    """Whether a bucket's batch fits the engine's request and KV pools and its context length."""
    rows, width, _ = shape
    return rows <= engine.max_requests and rows * width <= engine.max_tokens and width <= context_length


def sglang_graph_scorer(engine, vocab_size: int, device: torch.device, capture: bool,
                        fp32_head: bool = False) -> GraphScorer:
    """A GraphScorer over a started Engine (runners/sglang/engine.py) whose model has `.model` (the
    decoder) and `.lm_head`; `vocab_size` cuts the LM head's padded rows off; `fp32_head`: float32 logits
    (model.fp32_lm_head, runners/lm_head.py)."""
    from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

    mr = engine.model_runner
    ctx = ForwardContext(attn_backend=mr.attn_backend)

    def make_slot(shape: tuple[int, int, int]) -> Slot:
        rows, width, n_picks = shape
        engine.clear()  # the bucket's slots; later forwards may reuse them: each replay rewrites its own KV
        batch, fb = engine._prepare([engine._req(i, [0] * width, None) for i in range(rows)])
        if hasattr(mr, "_prepare_eager_forward_batch"):
            mr._prepare_eager_forward_batch(fb)
        picks = torch.zeros((3, n_picks), dtype=torch.long, device=device)
        head = mr.model.lm_head.weight[:vocab_size]
        if fp32_head:
            lm_head.prepare(head)  # its capability probe before any capture

        def refresh() -> None:
            with forward_context(ctx):
                mr.attn_backend.init_forward_metadata(fb)

        def run() -> torch.Tensor:
            with forward_context(ctx):
                hidden = mr.model.model(fb.input_ids, fb.positions, fb)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            rows = hidden[picks[0] * width + picks[1]]
            logits = lm_head.fp32_logits(rows, head) if fp32_head else torch.matmul(rows, head.t())
            return pick_logprobs(logits, picks[2])

        return Slot(ids=fb.input_ids, picks=picks, run=run, refresh=refresh, keep=(batch, fb))

    return GraphScorer(make_slot, device, capture)
