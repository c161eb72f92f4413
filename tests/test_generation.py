"""Generation pieces of the reward objective, in process: HF generate, seeded sampling, stop strings,
reward shaping, population seeds and the split population update."""

from __future__ import annotations

import math

import pytest
import torch

from mezo_elastic.config import Config, MezoConfig
from mezo_elastic.data import builtin
from mezo_elastic.data.jsonl import load_tokenizer
from mezo_elastic.objectives.generation import cut_at_stop, sample_seed
from mezo_elastic.runners.base import GenerateRequest, GenerationSettings
from mezo_elastic.runners.hf.runner import HFRunner
from mezo_elastic.runners.sampling import cut_at_eos, gumbel_argmax
from mezo_elastic.zo.optimizer import (
    SEEDS_PER_SWEEP,
    MezoOptimizer,
    StepRecord,
    seeds_for_step,
)
from mezo_elastic.zo.perturb import ParamSegment, step_seed
from mezo_elastic.zo.shaping import shape, shaped_pairs


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    path = builtin.ensure_tiny_model(tmp_path_factory.mktemp("tiny"))
    tok = load_tokenizer(str(path), False)
    return HFRunner(Config(), torch.device("cpu"), str(path)), tok


def _reqs(tok, texts, seed0=0):
    return [GenerateRequest(tuple(tok(t)["input_ids"]), seed=seed0 + i) for i, t in enumerate(texts)]


TEXTS = ["good bad the ->", "great ->", "sad dark cold film was ->", "it ->"]


def test_greedy_batch_equals_one_prompt_at_a_time(hf):
    runner, tok = hf
    reqs = _reqs(tok, TEXTS)
    s = GenerationSettings(max_new_tokens=6)
    batch = runner.generate(reqs, s)
    assert batch == [runner.generate([r], s)[0] for r in reqs]  # left padding changes nothing
    assert all(len(x) == 6 for x in batch)


def test_only_the_settings_eos_ends_a_completion(tmp_path):
    """The checkpoint's generation_config.json EOS is not the runner's: generate() used to fill it in
    when settings.eos_ids was empty, stop there and pad the rest with token 0 (seen on an H200 as
    HF-vs-SGLang divergences "0 vs 69")."""
    path = builtin.ensure_tiny_model(tmp_path / "tiny")
    tok = load_tokenizer(str(path), False)
    reqs, s = _reqs(tok, TEXTS[:2]), GenerationSettings(max_new_tokens=6)
    free = HFRunner(Config(), torch.device("cpu"), str(path)).generate(reqs, s)
    from transformers import GenerationConfig

    GenerationConfig(eos_token_id=free[0][1], pad_token_id=0).save_pretrained(path)  # greedy's 2nd token
    runner = HFRunner(Config(), torch.device("cpu"), str(path))
    again = runner.generate(reqs, s)
    assert again == free and all(len(x) == 6 for x in again)
    # ... and the model keeps the checkpoint's: save_pretrained writes it (issue 30: saved without EOS)
    assert runner.model.generation_config.eos_token_id == free[0][1]


def test_sampling_depends_on_the_request_seed_only(hf):
    runner, tok = hf
    s = GenerationSettings(max_new_tokens=8, temperature=1.0)
    a, b = runner.generate(_reqs(tok, TEXTS), s), runner.generate(_reqs(tok, TEXTS), s)
    assert a == b
    assert runner.generate(_reqs(tok, TEXTS, seed0=100), s) != a
    assert runner.generate(_reqs(tok, TEXTS[:1]), s)[0] == a[0]  # the batch's other rows do not matter


def test_eos_ends_a_completion(hf):
    runner, tok = hf
    s = GenerationSettings(max_new_tokens=40, temperature=1.0, eos_ids=(tok.eos_token_id,))
    out = runner.generate(_reqs(tok, TEXTS * 8), s)
    assert all(tok.eos_token_id not in x for x in out)
    assert any(len(x) < 40 for x in out)  # some row drew EOS and stopped there
    assert cut_at_eos([5, 6, 3, 7], (3,)) == (5, 6)


def test_gumbel_argmax_samples_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    seeds = torch.arange(20000, dtype=torch.int64) * 7919 + 13
    freq = torch.bincount(gumbel_argmax(logits, 0.5, seeds, 3), minlength=4).double() / 20000
    want = torch.softmax(logits[0].double() / 0.5, 0)
    assert torch.allclose(freq, want, atol=0.01), (freq, want)


def test_stop_strings_and_sample_seeds():
    assert cut_at_stop("pos neg\nmore", ["\n"]) == "pos neg"
    assert cut_at_stop("a STOP b END", ["END", "STOP"]) == "a "
    assert cut_at_stop("nothing", []) == "nothing"
    assert sample_seed(0, "train", 3, 5) == sample_seed(0, "train", 3, 5) != sample_seed(0, "train", 4, 5)
    assert sample_seed(0, "train", 3, 5) != sample_seed(0, "eval", 3, 5)


def test_shaping():
    assert shape([1.0, 2.0, 3.0], "none") == [1.0, 2.0, 3.0]
    z = shape([1.0, 2.0, 3.0, 6.0], "zscore")
    assert abs(sum(z)) < 1e-12 and abs(sum(v * v for v in z) / 4 - 1) < 1e-12
    assert shape([5.0, 5.0], "zscore") == [0.0, 0.0]
    assert shape([3.0, 1.0, 2.0, 2.0], "centered_rank") == [0.5, -0.5, 0.0, 0.0]  # ties share their rank
    assert all(math.isnan(v) for v in shape([1.0, float("nan")], "zscore"))
    fp, fm = shaped_pairs([0.0, 1.0], [2.0, 3.0], "centered_rank")  # the 2K values ranked together
    assert fp == pytest.approx([-0.5, -1 / 6]) and fm == pytest.approx([1 / 6, 0.5])


def test_population_seeds():
    dp = seeds_for_step(0, 7, "dp", world=4, perturbations=3)
    assert dp == [step_seed(0, 7, k) for k in range(3)] and dp[0] == step_seed(0, 7)  # K=1 is MeZO's seed
    ms = seeds_for_step(0, 7, "multi_seed", world=2, perturbations=3)
    assert ms == [step_seed(0, 7, slot) for slot in range(6)]  # slot r*K + k
    assert seeds_for_step(0, 7, "multi_seed", world=2) == [step_seed(0, 7, 0), step_seed(0, 7, 1)]


def test_a_large_population_update_is_split_the_same_way_live_and_in_replay():
    k = 3 * SEEDS_PER_SWEEP + 1
    w = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    seeds = [step_seed(1, 0, i) for i in range(k)]
    rec = StepRecord(step=0, seeds=seeds, grads=[0.1 * (i + 1) for i in range(k)], lr=1e-2, weight_decay=0.1)
    cfg = MezoConfig(perturbations=k, eps=1e-3)
    live = MezoOptimizer([ParamSegment(w.clone(), "w")], cfg, master_weights=True)
    live.perturb(seeds[0])
    live.update(rec, next_seed=step_seed(1, 1))
    live.clean()
    replay = MezoOptimizer([ParamSegment(w.clone(), "w")], cfg, master_weights=True)
    replay.replay(rec)
    assert torch.equal(live.segments[0].master, replay.segments[0].master)
    # and it is the update: theta (1 - lr wd) - lr/k sum g z, up to fp32 rounding
    from mezo_elastic.zo.perturb import z_range

    want = w.double() * (1 - 1e-3) - sum(1e-2 / k * g * z_range(s, "w", 0, 5000).double() for s, g in zip(seeds, rec.grads))
    assert float((replay.segments[0].master.double() - want).abs().max()) < 1e-5
