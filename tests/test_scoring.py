"""Classification scoring with the prompt shared between candidates (hf backend, CPU, fp32).

The shared path must give the losses of the one-sequence-per-candidate path, and must really run
each prompt once: the model sees P + sum(L - 1) token positions per example, not k * (P + L).
"""

from __future__ import annotations

import random

import pytest
import torch
from gpu.sglang_models import save_random_model

from mezo_elastic.config import Config, ModelConfig
from mezo_elastic.data.jsonl import Example
from mezo_elastic.objectives.scoring import _candidate_scores, example_losses
from mezo_elastic.runners.hf.runner import HFRunner

SPECS = {  # tiny random models of two architectures (GQA, tied and untied, qkv bias)
    "llama": dict(model_type="llama", vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", vocab_size=1536, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


@pytest.fixture(scope="module", params=sorted(SPECS))
def runner(request, tmp_path_factory) -> HFRunner:
    out = save_random_model(SPECS[request.param], tmp_path_factory.mktemp(request.param), seed=0, dtype=torch.float32)
    cfg = Config(model=ModelConfig(path=str(out), dtype="float32", device="cpu"))
    return HFRunner(cfg, torch.device("cpu"), str(out))


def _examples(n: int, lengths: tuple[int, ...], seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    tok = lambda k: tuple(rng.randrange(3, 900) for _ in range(k))  # noqa: E731
    return [Example(tok(rng.randint(2, 24)), tuple(tok(L) for L in lengths), rng.randrange(len(lengths)))
            for _ in range(n)]


def _positions_seen(runner: HFRunner, fn) -> int:
    """Non-padding token positions the model was fed while fn ran."""
    seen = []
    hook = runner.model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(int(kw["attention_mask"][:, -kw["input_ids"].shape[1]:].sum())),
        with_kwargs=True)
    try:
        fn()
    finally:
        hook.remove()
    return sum(seen)


@pytest.mark.parametrize("lengths", [(1, 1), (1, 2, 4), (3, 3, 3, 3)], ids=["one-token", "mixed", "multi-token"])
@pytest.mark.parametrize("micro_batch", [64, 5])
def test_shared_prompt_scores_equal_separate_sequences(runner: HFRunner, lengths, micro_batch):
    exs = _examples(11, lengths)
    shared = _candidate_scores(runner, exs, micro_batch, share_prompt=True)
    separate = _candidate_scores(runner, exs, micro_batch, share_prompt=False)
    assert [s.shape for s in shared] == [(len(lengths),)] * len(exs)
    diff = max((a - b).abs().max().item() for a, b in zip(shared, separate))
    assert diff < 2e-4, diff  # fp32, sums of up to 4 log-probs of magnitude ~7
    ls, cs = example_losses(runner, exs, "classification", micro_batch, share_prompt=True)
    lu, cu = example_losses(runner, exs, "classification", micro_batch, share_prompt=False)
    assert torch.allclose(ls, lu, atol=1e-4) and torch.equal(cs, cu)


def test_each_prompt_runs_once(runner: HFRunner):
    exs = _examples(6, (1, 2, 4))
    prompts = sum(len(e.prompt_ids) for e in exs)
    shared = _positions_seen(runner, lambda: example_losses(runner, exs, "classification", 64, True))
    separate = _positions_seen(runner, lambda: example_losses(runner, exs, "classification", 64, False))
    assert shared == prompts + len(exs) * (0 + 1 + 3)  # each candidate's last token is only a target
    assert separate == 3 * prompts + len(exs) * (1 + 2 + 4)


def test_a_runner_without_score_choices_is_scored_per_sequence(runner: HFRunner):
    class Plain:  # a backend that only has score() (like sglang): the objective falls back
        def score(self, reqs):
            return runner.score(reqs)

    exs = _examples(4, (1, 3))
    a = example_losses(Plain(), exs, "classification", 64, share_prompt=True)[0]
    b = example_losses(runner, exs, "classification", 64, share_prompt=False)[0]
    assert torch.equal(a, b)


def test_sglang_saved_positions_counts_what_sharing_skips():
    """saved_positions (the sglang runner's rule for when to share) = positions of one sequence per
    candidate minus those of the two shared forwards (prompt - 1, then last prompt token + candidate)."""
    from mezo_elastic.runners.sglang.runner import saved_positions

    prompts = [[1] * 64, [2] * 7, [3], [4] * 20]
    choices = [[[5], [6]], [[5, 6, 7], [8], [9, 9]], [[5], [6]], [[5, 6]]]
    apart = sum(len(p) + len(c) for p, cs in zip(prompts, choices) for c in cs)
    shared = sum(len(p) - 1 + sum(len(c) + 1 for c in cs) for p, cs in zip(prompts, choices))
    assert saved_positions(prompts, choices) == apart - shared == 63 + 12 + 0 + 0


def test_sglang_chunks_respect_kv_request_and_logprob_limits():
    """SGLangRunner._chunks (pure bookkeeping, no engine needed): consecutive ranges whose KV tokens,
    request slots and log-prob rows fit; a single item too large for the KV pool is a clear error."""
    from types import SimpleNamespace

    import pytest

    from mezo_elastic.errors import BackendError
    from mezo_elastic.runners.base import ScoreRequest
    from mezo_elastic.runners.sglang.runner import SGLangRunner

    fake = SimpleNamespace(engine=SimpleNamespace(max_tokens=100, max_requests=5),
                           cfg=SimpleNamespace(model=SimpleNamespace(sglang_logprob_tokens=20)))
    chunks = lambda need: SGLangRunner._chunks(fake, need)  # noqa: E731
    assert chunks([(40, 1, 2)] * 5) == [(0, 2), (2, 4), (4, 5)]  # KV tokens: 2 x 40 fit, 3 do not
    assert chunks([(1, 2, 1)] * 5) == [(0, 2), (2, 4), (4, 5)]  # request slots: 2 x 2 of 5
    assert chunks([(1, 1, 8)] * 4) == [(0, 2), (2, 4)]  # log-prob rows: 2 x 8 of 20
    reqs = [ScoreRequest((1,) * 30, (2,) * 9)] * 3  # 39 tokens, 10 rows each
    assert chunks(reqs) == [(0, 2), (2, 3)]
    with pytest.raises(BackendError, match=r"request 1 has 101 tokens \(prompt \+ completion; prompt \+ generate.max_new_tokens when generating\) but the KV pool holds 100"):
        chunks([(1, 1, 1), (101, 1, 1)])
