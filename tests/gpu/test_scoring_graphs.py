"""model.scoring_graphs on a GPU: the captured scoring forward equals the eager one, bit for bit, on both
backends, after in-place sweeps; and it scores what the per-call paths score, within bf16 (hf also in float32,
the dtype of the time-to-accuracy bench's reference, whose evals go through these graphs).

The graph scorer (runners/graph_scorer.py) replays a forward captured for a fixed-shape batch; every sweep
writes the weights in place, so each replay must score the swept weights. Eager here = the same slot's
forward run without the graph (slot.run()), which is what model.scoring_graphs=false runs.
Run: `python -m pytest -m gpu -s tests/gpu/test_scoring_graphs.py`.
"""

from __future__ import annotations

import random

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from sglang_models import TINY, random_requests, save_random_model, sglang_cfg, single_ctx  # noqa: E402

from mezo_elastic.config import Config, ModelConfig  # noqa: E402
from mezo_elastic.runners import scoring_plan as sp  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402
from mezo_elastic.zo.optimizer import MezoOptimizer  # noqa: E402
from mezo_elastic.zo.perturb import step_seed  # noqa: E402

NAME = "llama32_tied"
DEV = torch.device("cuda", 0)


def _choices(vocab: int, n: int, seed: int, lengths=(1, 1)):
    rng = random.Random(seed)
    prompts = [tuple(rng.randrange(vocab) for _ in range(rng.randint(5, 70))) for _ in range(n)]
    return prompts, [[tuple(rng.randrange(vocab) for _ in range(k)) for k in lengths] for _ in prompts]


def _graph_vs_eager(runner, scorer, plan) -> tuple[torch.Tensor, torch.Tensor]:
    before = scorer.replays
    graph = scorer.logprobs(plan)
    assert scorer.replays == before + 1, "the graph did not run"
    slot = scorer.slots[plan.shape]
    slot.refresh()
    eager = slot.run().cpu()
    return graph, eager


def _check_runner(runner, scorer, vocab: int) -> None:
    reqs = random_requests(11, vocab, seed=3, prompt=(4, 60), completion=(1, 6))
    opt = MezoOptimizer(runner.segments(), Config().mezo, master_weights=True)
    plan = sp.plan_score(reqs, cap=512)
    clean, _ = _graph_vs_eager(runner, scorer, plan)
    for sign in (+1.0, -1.0):
        opt.perturb(step_seed(5, 0), sign)
        graph, eager = _graph_vs_eager(runner, scorer, plan)
        print(f"\nsign {sign:+.0f}: max |graph - eager| {float((graph - eager).abs().max()):.3g}; "
              f"vs clean {float((graph - clean).abs().max()):.3g}")
        assert torch.equal(graph, eager)
        assert not torch.equal(graph, clean)  # the sweep is seen by the replay
    opt.clean()
    prompts, choices = _choices(vocab, 16, seed=4)
    plan = sp.plan_choices(prompts, choices, cap=512)
    graph, eager = _graph_vs_eager(runner, scorer, plan)
    assert torch.equal(graph, eager)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])  # float32: the time-to-accuracy reference's evals
def test_hf_scoring_graph_equals_eager_after_sweeps(tmp_path, dtype):
    path = save_random_model(TINY[NAME], tmp_path / NAME, seed=1)
    cfg = Config(model=ModelConfig(path=str(path), dtype=dtype, device="cuda"))
    runner = HFRunner(cfg, DEV, str(path))
    try:
        assert runner.graphs is not None and runner.graphs.capture
        _check_runner(runner, runner.graphs, TINY[NAME]["vocab_size"])
        # the runner's own calls go through the graphs, and give the old padded path's losses within bf16
        reqs = random_requests(8, TINY[NAME]["vocab_size"], seed=7, prompt=(4, 60), completion=(1, 6))
        before = runner.graphs.replays
        got, _ = runner.score(reqs)
        assert runner.graphs.replays == before + 1
        graphs, runner.graphs = runner.graphs, None
        want, n = runner.score(reqs)  # the left-padded path the runner takes without graphs (CPU's)
        runner.graphs = graphs
        print(f"\nhf {dtype} graph vs padded path: max |d| per token {float(((got - want) / n).abs().max()):.3g}")
        assert float(((got - want) / n).abs().max()) < (0.05 if dtype == "bfloat16" else 1e-3)
    finally:
        runner.close()


def test_hf_graphs_follow_weights_rebound_as_mezo_does(tmp_path):
    """princeton-nlp/MeZO updates with `param.data = param.data - lr * g * z`: new storage every step. A graph
    captured before reads the old storage; the scorer must notice and capture again. (The time-to-accuracy
    bench's reference scored its classification evals through these graphs, and every eval read the
    step-0 weights until this check existed: 2026-12-06, H100, a flat 0.485 over 800 steps.)"""
    path = save_random_model(TINY[NAME], tmp_path / NAME, seed=1)
    cfg = Config(model=ModelConfig(path=str(path), dtype="float32", device="cuda"))
    runner = HFRunner(cfg, DEV, str(path))
    try:
        scorer = runner.graphs
        reqs = random_requests(8, TINY[NAME]["vocab_size"], seed=7, prompt=(4, 60), completion=(1, 6))
        plan = sp.plan_score(reqs, cap=512)
        before, _ = _graph_vs_eager(runner, scorer, plan)
        gen = torch.Generator(device=DEV).manual_seed(0)
        for p in runner.model.parameters():  # MeZO's loop: rebind, never in place
            p.data = p.data + 1e-2 * torch.randn(p.shape, device=DEV, generator=gen, dtype=p.dtype)
        after = scorer.logprobs(plan)
        slot = scorer.slots[plan.shape]
        eager = slot.run().cpu()
        print(f"\nrebound weights: max |graph - eager| {float((after - eager).abs().max()):.3g}, "
              f"moved {float((after - before).abs().max()):.3g}, recaptures {scorer.recaptures}")
        assert scorer.recaptures == 1 and slot.graph is not None
        assert not torch.equal(after, before) and torch.equal(after, eager)
        replays = scorer.replays
        assert torch.equal(scorer.logprobs(plan), eager) and scorer.replays == replays + 1  # the new graph runs
    finally:
        runner.close()


@pytest.fixture(scope="module")
def sglang_runner(tmp_path_factory):
    pytest.importorskip("sglang", reason="needs sglang (pip install 'sglang==0.5.17')")
    from mezo_elastic.runners.sglang.runner import SGLangRunner

    path = save_random_model(TINY[NAME], tmp_path_factory.mktemp(NAME), seed=1)
    sg = SGLangRunner(single_ctx(), sglang_cfg(path), DEV, str(path))
    yield sg
    sg.close()
    print(f"\n{NAME}: {sg.freed_report().line()}")  # the memory numbers, in the suite log


def test_sglang_scoring_graph_equals_eager_after_sweeps(sglang_runner):
    assert sglang_runner.graphs is not None and sglang_runner.graphs.capture
    _check_runner(sglang_runner, sglang_runner.graphs, TINY[NAME]["vocab_size"])


def test_sglang_graph_scores_match_the_per_call_batches(sglang_runner):
    """The fixed-shape path against the engine's per-call EXTEND batches (logprob_sums, shared prompts)."""
    vocab = TINY[NAME]["vocab_size"]
    reqs = random_requests(9, vocab, seed=8, prompt=(4, 60), completion=(1, 6))
    got, n = sglang_runner.score(reqs)
    seqs = [list(r.prompt_ids) + list(r.completion_ids) for r in reqs]
    want = sglang_runner.engine.logprob_sums(seqs, [len(r.prompt_ids) - 1 for r in reqs])
    d = float(((got - want) / n).abs().max())
    print(f"\nsglang graph vs per-call: max |d| per token {d:.3g}")
    assert d < 0.05
    prompts, choices = _choices(vocab, 6, seed=9, lengths=(1, 2))
    got_c = sglang_runner.score_choices(prompts, choices)
    want_c = sglang_runner.engine.shared_prompt_sums(prompts, choices)
    assert max(float((g - w).abs().max()) for g, w in zip(got_c, want_c)) < 0.1
    # after the fixed-shape batches the per-call path (whose slots they reused) gives the same again
    again = sglang_runner.engine.logprob_sums(seqs, [len(r.prompt_ids) - 1 for r in reqs])
    assert torch.equal(again, want)
