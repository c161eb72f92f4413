"""model.sglang_prefill_graphs for generation (the reward objective): a generation whose prefill replays
SGLang's prefill CUDA graph gives what an eager prefill gives, token for token and logit for logit.

The reward objective's step is two generations (at +eps and -eps) of the same prompts; with the option on
their prefill runs through SGLang's captured prefill graphs (1.5x the reward step on the real model, H100
2026-12-06). A graph reads the parameters' storage and every sweep writes the weights in place, so after
+eps and -eps sweeps a replayed prefill must see the swept weights exactly as an eager one does. Decode
graphs are on in both arms (their own test: test_sglang_generate.py), so the arms differ only in the
prefill. Its own file: one SGLang engine a process (docs/sglang.md). A trained toy model (peaked
next-token distributions), since random weights make greedy paths part at near-ties.
"""

from __future__ import annotations

import contextlib
import random

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("sglang", reason="needs sglang (pip install 'sglang==0.5.17')")

from sglang_models import TINY, TRAINED_VOCAB, save_trained_model, sglang_cfg, single_ctx  # noqa: E402

from mezo_elastic.config import Config  # noqa: E402
from mezo_elastic.runners.sglang.runner import SGLangRunner  # noqa: E402
from mezo_elastic.zo.optimizer import MezoOptimizer  # noqa: E402
from mezo_elastic.zo.perturb import step_seed  # noqa: E402

NAME = "llama32_tied"
NEW = 12


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path = save_trained_model(TINY[NAME], tmp_path_factory.mktemp(NAME), seed=3)
    cfg = sglang_cfg(path, sglang_prefill_graphs="on")
    cfg.data.objective, cfg.data.micro_batch = "reward", 16
    sg = SGLangRunner(single_ctx(), cfg, torch.device("cuda", 0), str(path))
    mr = sg.engine.model_runner
    assert mr.prefill_cuda_graph_runner is not None and mr.decode_cuda_graph_runner is not None
    yield sg
    sg.close()
    print(f"\n{NAME}: {sg.freed_report().line()}")


@contextlib.contextmanager
def eager_prefill(sg: SGLangRunner):
    """Prefill without SGLang's prefill graph; decode keeps its graphs."""
    mr = sg.engine.model_runner
    saved, mr.prefill_cuda_graph_runner = mr.prefill_cuda_graph_runner, None
    try:
        yield
    finally:
        mr.prefill_cuda_graph_runner = saved


def test_generation_with_a_prefill_graph_equals_eager_prefill_after_in_place_sweeps(runner):
    vocab = min(TRAINED_VOCAB, TINY[NAME]["vocab_size"])
    rng = random.Random(4)
    prompts = [tuple(rng.randrange(vocab) for _ in range(rng.randint(4, 24))) for _ in range(16)]
    opt = MezoOptimizer(runner.segments(), Config().mezo, master_weights=True)
    unswept: list = []
    runner.engine.generate(prompts, NEW, logits=unswept)
    for sign in (+1.0, -1.0):
        opt.perturb(step_seed(9, 0), sign)  # in place, after the capture
        before = runner.engine.graph_forwards
        graph: list = []
        tg = runner.engine.generate(prompts, NEW, logits=graph)
        replays = runner.engine.graph_forwards - before
        with eager_prefill(runner):
            before = runner.engine.graph_forwards
            eager: list = []
            te = runner.engine.generate(prompts, NEW, logits=eager)
            replays_eager = runner.engine.graph_forwards - before
        diff = max(float((g - e).abs().max()) for g, e in zip(graph, eager))
        moved = max(float((g - u).abs().max()) for g, u in zip(graph, unswept))
        print(f"\nsign {sign:+.0f}: graph replays {replays} (eager prefill: {replays_eager}); max |graph - eager| "
              f"logit {diff:.3g}; vs unswept {moved:.3g}")
        assert replays == replays_eager + 1, "the prefill graph did not run (or ran in the eager arm)"
        assert tg == te and diff == 0.0
        assert moved > 0.0  # the sweep is seen
    opt.clean()
