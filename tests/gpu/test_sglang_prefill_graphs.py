"""model.sglang_prefill_graphs: scoring forwards through SGLang's prefill CUDA graphs equal eager ones.

(With model.scoring_graphs=false: this package's own scoring graphs, tests/gpu/test_scoring_graphs.py, take
the scoring calls before SGLang's prefill graphs would.)

A captured graph reads the parameters' storage, and every sweep writes the weights in place, so after
+eps and -eps sweeps a graph replay must score what an eager forward scores on the swept weights: for
plain scoring, for the kept batch (MeZO's second forward of the same tokens) and for shared-prompt
classification scoring. The graphs must also really run (Engine.graph_forwards counts replays).
Not yet run on a GPU (written 2026-12-01 when this session's device time was spent): run with
`python -m pytest -m gpu -s tests/gpu/test_sglang_prefill_graphs.py`.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("sglang", reason="needs sglang (pip install 'sglang==0.5.17')")

from sglang_models import (  # noqa: E402
    TINY,
    random_requests,
    save_random_model,
    sglang_cfg,
    single_ctx,
)

from mezo_elastic.config import Config  # noqa: E402
from mezo_elastic.runners.sglang.runner import SGLangRunner  # noqa: E402
from mezo_elastic.zo.optimizer import MezoOptimizer  # noqa: E402
from mezo_elastic.zo.perturb import step_seed  # noqa: E402

NAME = "llama32_tied"  # one engine a process (see docs/sglang.md); the other shapes via -k on a copy


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path = save_random_model(TINY[NAME], tmp_path_factory.mktemp(NAME), seed=1)
    sg = SGLangRunner(single_ctx(), sglang_cfg(path, sglang_prefill_graphs="on", scoring_graphs=False), torch.device("cuda", 0), str(path))
    assert sg.engine.model_runner.prefill_cuda_graph_runner is not None
    yield sg
    sg.close()
    print(f"\n{NAME}: {sg.freed_report().line()}")  # the memory numbers, in the suite log


def test_scoring_through_the_prefill_graph_equals_eager_after_in_place_sweeps(runner):
    reqs = random_requests(8, TINY[NAME]["vocab_size"], seed=3, prompt=(4, 12), completion=(1, 6))
    opt = MezoOptimizer(runner.segments(), Config().mezo, master_weights=True)
    clean = runner.score(reqs)[0]
    for sign in (+1.0, -1.0):
        opt.perturb(step_seed(5, 0), sign)
        before = runner.engine.graph_forwards
        graph = runner.score(reqs)[0]
        kept = runner.score(reqs)[0]  # the kept batch: the same ForwardBatch again
        assert runner.engine.graph_forwards == before + 2, "the prefill graph did not run"
        with runner.engine.eager():
            eager = runner.score(reqs)[0]
        print(f"\nsign {sign:+.0f}: max |graph - eager| {float((graph - eager).abs().max()):.3g}; "
              f"vs clean {float((graph - clean).abs().max()):.3g}")
        assert torch.equal(graph, eager) and torch.equal(kept, eager)
        assert not torch.equal(graph, clean)  # the sweep is seen
    opt.clean()


def test_shared_prompt_scoring_through_the_prefill_graph_equals_eager(runner):
    vocab = TINY[NAME]["vocab_size"]
    prompts = [tuple(range(7 + i, 40 + i)) for i in range(4)]
    choices = [[(vocab - 1,), (vocab - 2, vocab - 3)] for _ in prompts]
    opt = MezoOptimizer(runner.segments(), Config().mezo, master_weights=True)
    opt.perturb(step_seed(6, 0), +1.0)
    old = runner.cfg.model.sglang_share_min_tokens
    runner.cfg.model.sglang_share_min_tokens = 0  # always share here
    try:
        graph = runner.score_choices(prompts, choices)
        with runner.engine.eager():
            eager = runner.score_choices(prompts, choices)
    finally:
        runner.cfg.model.sglang_share_min_tokens = old
        opt.clean()
    assert all(torch.equal(g, e) for g, e in zip(graph, eager))
