"""Fixed-shape scoring plans (runners/scoring_plan.py) and the graph scorer's forward, eagerly on the CPU.

On CUDA both backends score through these plans (captured as CUDA graphs; tests/gpu/test_scoring_graphs.py
checks graph == eager there). Here: the plans' buckets, picks and sums, and that the right-padded, maskless
forward with picks gives what the CPU's left-padded path gives (fp32, tiny random llama and qwen2 models).
"""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
from gpu.sglang_models import save_random_model

from mezo_elastic.config import Config, ModelConfig
from mezo_elastic.runners import scoring_plan as sp
from mezo_elastic.runners.base import ScoreRequest
from mezo_elastic.runners.hf.graphs import hf_graph_scorer
from mezo_elastic.runners.hf.runner import HFRunner

SPECS = {
    "llama": dict(model_type="llama", vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", vocab_size=1536, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "gpt2": dict(model_type="gpt2", vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128),
}


def test_buckets():
    assert [sp.next_pow2(n) for n in (0, 1, 2, 3, 16, 17)] == [1, 1, 2, 4, 16, 32]
    assert sp.bucket_width(1, 1000) == 32 and sp.bucket_width(33, 1000) == 64 and sp.bucket_width(64, 1000) == 64
    assert sp.bucket_width(60, 50) == 60  # never narrower than the batch; capped at the model's positions
    assert sp.bucket_width(40, 45) == 45


def test_plan_score_picks_every_completion_token():
    reqs = [ScoreRequest((5, 6, 7), (8, 9)), ScoreRequest((1,), (2,)), ScoreRequest((3, 4), (5, 6, 7))]
    plan = sp.plan_score(reqs, cap=1000, pad_id=0)
    assert plan.shape == (4, 32, 8) and (plan.n_rows, plan.n_picks, plan.n_out) == (3, 6, 3)
    assert plan.ids[0, :5].tolist() == [5, 6, 7, 8, 9] and plan.ids[0, 5:].eq(0).all() and plan.ids[3].eq(0).all()
    # position p predicts token p + 1: the completion's tokens, from the prompt's last position on
    assert plan.picks[:, :6].T.tolist() == [[0, 2, 8], [0, 3, 9], [1, 0, 2], [2, 1, 5], [2, 2, 6], [2, 3, 7]]
    assert plan.owner.tolist() == [0, 0, 1, 2, 2, 2]
    assert plan.sums(torch.arange(8, dtype=torch.float32)).tolist() == [0 + 1, 2, 3 + 4 + 5]
    assert sp.plan_score(reqs, cap=1000).key == plan.key
    with pytest.raises(ValueError, match="request 1: empty prompt_ids"):
        sp.plan_score([reqs[0], ScoreRequest((), (1,))], cap=1000)


def test_plan_choices_shares_rows_for_one_token_candidates():
    one = sp.plan_choices([(1, 2, 3), (4, 5)], [[(7,), (8,)], [(9,), (10,), (11,)]], cap=1000)
    assert one.n_rows == 2 and one.n_out == 5
    assert one.picks[:, :5].T.tolist() == [[0, 2, 7], [0, 2, 8], [1, 1, 9], [1, 1, 10], [1, 1, 11]]
    multi = sp.plan_choices([(1, 2, 3)], [[(7,), (8, 9)]], cap=1000)
    assert multi.n_rows == 2 and multi.ids[1, :5].tolist() == [1, 2, 3, 8, 9]
    assert multi.picks[:, :3].T.tolist() == [[0, 2, 7], [1, 2, 8], [1, 3, 9]] and multi.owner.tolist() == [0, 1, 1]
    scores = sp.split_choices(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64), [[1, 1], [1, 1, 1]])
    assert [s.tolist() for s in scores] == [[1.0, 2.0], [3.0, 4.0, 5.0]]


@pytest.fixture(scope="module", params=sorted(SPECS))
def runner(request, tmp_path_factory) -> HFRunner:
    out = save_random_model(SPECS[request.param], tmp_path_factory.mktemp(request.param), seed=0, dtype=torch.float32)
    cfg = Config(model=ModelConfig(path=str(out), dtype="float32", device="cpu"))
    return HFRunner(cfg, torch.device("cpu"), str(out))


def _tokens(rng: random.Random, k: int) -> tuple[int, ...]:
    return tuple(rng.randrange(3, 900) for _ in range(k))


def test_fixed_shape_forward_equals_the_padded_path(runner: HFRunner):
    """The graph scorer's forward (run eagerly here) against the runner's own CPU path: same log-probs."""
    rng = random.Random(1)
    scorer = hf_graph_scorer(runner.model, torch.device("cpu"), capture=False, kernels=contextlib.nullcontext)
    reqs = [ScoreRequest(_tokens(rng, rng.randint(1, 40)), _tokens(rng, rng.randint(1, 5))) for _ in range(7)]
    want, _ = runner.score(reqs)
    plan = sp.plan_score(reqs, cap=128)
    got = plan.sums(scorer.logprobs(plan))
    assert torch.allclose(got, want, atol=2e-4, rtol=1e-5), (got - want).abs().max()
    prompts = [_tokens(rng, rng.randint(2, 30)) for _ in range(5)]
    for lengths in ((1, 1), (1, 3)):
        choices = [[_tokens(rng, n) for n in lengths] for _ in prompts]
        want = runner.score_choices(prompts, choices)
        plan = sp.plan_choices(prompts, choices, cap=128)
        got = sp.split_choices(plan.sums(scorer.logprobs(plan)), choices)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=2e-4, rtol=1e-5), (g - w).abs().max()
    assert scorer.replays == 0 and len(scorer.slots) >= 2  # no CUDA here: eager runs of per-bucket slots


def test_same_plan_twice_skips_the_copy_and_sees_changed_weights(runner: HFRunner):
    """MeZO scores one batch at +eps and -eps: the second call reuses the buffers, yet scores the new weights."""
    rng = random.Random(2)
    scorer = hf_graph_scorer(runner.model, torch.device("cpu"), capture=False, kernels=contextlib.nullcontext)
    plan = sp.plan_score([ScoreRequest(_tokens(rng, 9), _tokens(rng, 3)) for _ in range(4)], cap=128)
    first = scorer.logprobs(plan)
    w = next(runner.model.parameters())
    saved = w.detach().clone()
    with torch.no_grad():
        w.mul_(1.01)
        second = scorer.logprobs(plan)
        w.copy_(saved)
    assert not torch.equal(first, second)
    assert torch.equal(scorer.logprobs(plan)[: plan.n_picks], first[: plan.n_picks])
