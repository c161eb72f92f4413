"""LoRA on the hf backend, in process: names, init, what the sweeps touch, config checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mezo_elastic.config import parse_args
from mezo_elastic.data import builtin
from mezo_elastic.errors import BackendError, ConfigError
from mezo_elastic.runners import lora
from mezo_elastic.runners.base import GenerateRequest, GenerationSettings, ScoreRequest
from mezo_elastic.runners.hf.runner import HFRunner
from mezo_elastic.zo.optimizer import MezoOptimizer, StepRecord, use_master_weights

REQS = [ScoreRequest((4, 5, 20, 28), (29,)), ScoreRequest((12, 6, 28), (30,))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return builtin.ensure_tiny_model(tmp_path_factory.mktemp("lora-unit"))


def _runner(tiny: Path, *flags: str) -> HFRunner:
    cfg = parse_args([f"--model.path={tiny}", "--peft.method=lora", *flags])
    return HFRunner(cfg, torch.device("cpu"), str(tiny))


def test_segments_are_the_saved_adapter_tensors_initialised_from_the_seed(tiny):
    from peft import get_peft_model_state_dict

    r = _runner(tiny)
    saved = get_peft_model_state_dict(r.adapter.peft_model)  # the names peft writes to adapter_model.safetensors
    names = [s.name for s in r.segments()]
    assert names == list(saved) and len(names) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    for seg in r.segments():
        assert seg.tensor.data_ptr() == saved[seg.name].data_ptr()  # views of the live adapter, in place
        if seg.name.endswith("lora_B.weight"):
            assert not seg.tensor.any()  # B = 0: the adapted model starts as the base model
        else:
            bound = 1.0 / saved[seg.name].shape[1] ** 0.5
            assert 0 < seg.tensor.abs().max() <= bound and seg.tensor.abs().mean() > bound / 4
    again, other = _runner(tiny), _runner(tiny, "--seed=1")
    a = {s.name: s.tensor for s in r.segments()}
    assert all(torch.equal(a[s.name], s.tensor) for s in again.segments())  # a pure function of (seed, name)
    assert any(not torch.equal(a[s.name], s.tensor) for s in other.segments() if "lora_A" in s.name)
    base = HFRunner(parse_args([f"--model.path={tiny}"]), torch.device("cpu"), str(tiny))
    assert torch.equal(r.score(REQS)[0], base.score(REQS)[0])


def test_sweeps_move_the_adapter_and_never_the_base_weights(tiny):
    r = _runner(tiny)
    base_file = load_file(str(tiny / "model.safetensors"))
    opt = MezoOptimizer(r.segments(), parse_args([]).mezo, master_weights=False)
    before = r.score(REQS)[0]
    for t in range(3):
        opt.perturb(100 + t, +1.0)
        opt.perturb(100 + t, -1.0)
        opt.update(StepRecord(step=t, seeds=[100 + t], grads=[1.0], lr=0.5, weight_decay=0.0), 101 + t)
    opt.clean()
    live = dict(r.adapter.peft_model.named_parameters())
    base_now = {n: p for n, p in live.items() if ".lora_" not in n}
    assert len(base_now) == len(base_file)
    for n, p in base_now.items():  # peft's name for base weight X is base_model.model.X (.base_layer. for targets)
        hf_name = n.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(p, base_file[hf_name]), n
    assert any(s.tensor.any() for s in r.segments() if "lora_B" in s.name)
    assert not torch.equal(r.score(REQS)[0], before)


def test_state_dict_is_the_adapter_with_exact_master_values_and_loads_back(tiny):
    r = _runner(tiny, "--model.dtype=bfloat16")
    cfg = parse_args(["--model.dtype=bfloat16"]).mezo
    opt = MezoOptimizer(r.segments(), cfg, use_master_weights(cfg, "bfloat16"))
    opt.update(StepRecord(step=0, seeds=[7], grads=[3.0], lr=0.1, weight_decay=0.0), None)
    state = r.hf_state_dict(opt.master_state())
    assert set(state) == {s.name for s in r.segments()}
    assert all(v.dtype == torch.float32 for v in state.values())  # the fp32 master, not the bf16 copy
    assert all(torch.equal(state[s.name].view(-1), s.master) for s in r.segments())
    fresh = _runner(tiny, "--model.dtype=bfloat16")
    fresh.load_hf_state_dict(state)
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(r.segments(), fresh.segments()))
    with pytest.raises(BackendError, match="missing 1 tensor"):
        fresh.load_hf_state_dict(dict(list(state.items())[1:]))


def test_trainable_regex_filters_adapter_names_and_unknown_targets_fail(tiny):
    names = [s.name for s in _runner(tiny, "--model.trainable=lora_B").segments()]
    assert len(names) == 4 and all(n.endswith("lora_B.weight") for n in names)
    with pytest.raises(BackendError, match=r"peft.targets='nope_proj'"):
        _runner(tiny, "--peft.targets=nope_proj")


@pytest.mark.parametrize("argv, words", [
    (["--peft.method=qlora"], ["peft.method='qlora'", "['none', 'lora']"]),
    (["--peft.rank=0"], ["peft.rank=0", "> 0"]),
    (["--peft.alpha=-1"], ["peft.alpha=-1.0", "> 0"]),
    (["--peft.targets= , "], ["peft.targets=' , '", "q_proj,v_proj"]),
    (["--peft.targets=q_proj;v_proj"], ["peft.targets='q_proj;v_proj'"]),
])
def test_bad_peft_values_name_the_field(argv, words):
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_run_json_without_peft_keys_is_a_peft_none_run_and_other_lora_settings_differ():
    """A run.json written before the peft keys existed is a full-weight run: it resumes as one."""
    from mezo_elastic.training.resume import TRAJECTORY_KEYS, _get, trajectory_diff

    lora_cfg = parse_args(["--peft.method=lora"])
    saved = {k: _get(lora_cfg, k) for k in TRAJECTORY_KEYS}
    assert {"peft.method", "peft.rank", "peft.alpha", "peft.targets"} <= set(saved)
    assert trajectory_diff(saved, lora_cfg) == []
    assert trajectory_diff(saved, parse_args(["--peft.method=lora", "--peft.rank=4"])) == ["peft.rank: 8 -> 4"]
    old = {k: v for k, v in saved.items() if not k.startswith("peft.")}
    assert trajectory_diff(old, parse_args([])) == []
    assert trajectory_diff(old, lora_cfg) == ["peft.method: 'none' -> 'lora'"]


def test_master_weights_auto_is_on_for_an_adapter_in_any_dtype():
    auto, off = parse_args([]).mezo, parse_args(["--mezo.master_weights=off"]).mezo
    assert use_master_weights(auto, "float32", adapter=True) and not use_master_weights(auto, "float32")
    assert not use_master_weights(off, "float32", adapter=True)


def test_init_rejects_names_that_are_not_adapter_tensors():
    with pytest.raises(ValueError, match="not a LoRA adapter tensor name"):
        lora.init_tensor(0, "model.layers.0.self_attn.q_proj.weight", (4, 4))


def test_generate_runs_through_the_adapter(tiny):
    """The reward objective generates with the runner's model: at the init (B = 0) that is the base
    model's greedy output; a large B changes it."""
    r, base = _runner(tiny), HFRunner(parse_args([f"--model.path={tiny}"]), torch.device("cpu"), str(tiny))
    reqs, settings = [GenerateRequest(q.prompt_ids) for q in REQS] * 4, GenerationSettings(max_new_tokens=4)
    assert r.generate(reqs, settings) == base.generate(reqs, settings)
    from mezo_elastic.zo.perturb import SweepPlan, sweep

    sweep([s for s in r.segments() if "lora_B" in s.name], SweepPlan(post=[(3, 2.0)]))
    assert r.generate(reqs, settings) != base.generate(reqs, settings)
