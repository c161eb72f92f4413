"""Engine.generate's prefill + decode loop over SGLang's ModelRunner (same pinned sglang as engine.py).

Split out of engine.py to keep Engine small; like engine.py it names SGLang internals (ForwardBatch,
ScheduleBatch.prepare_for_decode, ModelRunner.sample, the logits output's next_token_logits), and
only engine.py and this file do, so a new sglang release is adapted here and in engine.py only. It
builds its batches with the Engine's own helpers (_req, _prepare, _run, clear).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# `engine` below is an engine.Engine; not imported (even for typing) so the two files stay one-way:
# engine.py calls in here, this file only uses the Engine it is handed.


def next_tokens(engine: Any, out: Any, fb: Any, temperature: float, seeds: torch.Tensor | None, position: int,
                logits: list | None) -> torch.Tensor:
    """Next token of every row: the runner's sampler when greedy, else Gumbel-max keyed by seeds."""
    if logits is not None:
        logits.append(out.next_token_logits.float().clone())
    if temperature == 0:
        return engine.model_runner.sample(out, fb)
    from mezo_elastic.runners.sampling import gumbel_argmax

    vocab = engine.model_runner.model_config.vocab_size  # the LM head may be padded past it
    return gumbel_argmax(out.next_token_logits[:, :vocab], temperature, seeds, position)


@torch.no_grad()
def generate(engine: Any, prompts: Sequence[Sequence[int]], max_new: int, temperature: float = 0.0,
             seeds: Sequence[int] = (), eos_ids: Sequence[int] = (), eager: bool = False,
             logits: list | None = None) -> list[list[int]]:
    """Generate up to `max_new` tokens per prompt: one EXTEND (prefill) forward, then DECODE forwards.

    As one_batch.py's extend()/decode(): the batch keeps every row to the end (a finished row's
    tokens past its EOS are dropped by the caller), so each decode step has the batch size the
    decode CUDA graph was captured for; every 8 tokens one host sync checks whether all rows hit
    an EOS. The graph replays read the parameters' storage, which the sweeps update in place.
    `eager` runs every forward without the graphs (tests compare both); `logits`, when a list,
    receives each step's next-token logits. Every KV and request slot is free again on return.
    """
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

    if eager:
        with engine.eager():
            return generate(engine, prompts, max_new, temperature, seeds, eos_ids, logits=logits)
    mr = engine.model_runner
    engine.clear()
    try:
        seed_t = torch.tensor(list(seeds), dtype=torch.int64, device=mr.device) if temperature > 0 else None
        eos = torch.tensor(list(eos_ids) or [-1], dtype=torch.int64, device=mr.device)
        batch, fb = engine._prepare([engine._req(i, ids, None) for i, ids in enumerate(prompts)])
        nxt = next_tokens(engine, engine._run(fb), fb, temperature, seed_t, 0, logits)
        toks = [nxt]
        for pos in range(1, max_new):
            if eos_ids and pos % 8 == 0 and bool(torch.isin(torch.stack(toks, 1), eos).any(1).all()):
                break
            batch.input_ids = nxt.to(torch.int64)
            batch.prepare_for_decode()
            fb = ForwardBatch.init_new(batch, mr, return_hidden_states_before_norm=False)
            nxt = next_tokens(engine, engine._run(fb), fb, temperature, seed_t, pos, logits)
            toks.append(nxt)
        return torch.stack(toks, 1).cpu().tolist()
    finally:
        engine.clear()
