"""MeZO with LoRA (peft) end to end on the hf backend: real training processes on CPU.

Tolerance for "same adapter": 1e-6 max abs (fp32), as tests/integration/test_elastic.py states it
for full weights (a replay rounds differently from the live fused restore+update by a few ulps).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import REPO, max_abs_diff, train
from safetensors.torch import load_file

from mezo_elastic.data import builtin
from mezo_elastic.export import main as export_main
from mezo_elastic.state.checkpoint import StepLog

pytestmark = pytest.mark.integration
LORA = ["--peft.method=lora", "--train.batch_size=8", "--train.eval_every=0", "--train.progress=false",
        "--mezo.lr=1e-2", "--checkpoint.every=0"]
TOL = 1e-6  # the stated bound; with the adapter's fp32 master (auto for LoRA) it comes out 0.0 here
IDS = torch.tensor([[4, 5, 20, 28, 12, 6, 28]])


def _model_path(tiny_inputs: list[str]) -> Path:
    return Path(next(a for a in tiny_inputs if a.startswith("--model.path=")).partition("=")[2])


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_inputs) -> Path:
    """An undisturbed 40-step LoRA run, one process."""
    out = tmp_path_factory.mktemp("lora-ref") / "run"
    train(out, *tiny_inputs, *LORA, "--train.steps=40")
    return out


def test_stopped_at_20_resumed_to_40_on_another_world_size_equals_uninterrupted(tmp_path, tiny_inputs, reference):
    out, base = tmp_path / "resumed", _model_path(tiny_inputs)
    args = [*tiny_inputs, *LORA, "--checkpoint.every=15"]
    train(out, *args, "--train.steps=20", nproc=2)  # checkpoint 15 + 5 logged steps
    res = train(out, *args, "--train.steps=40", nproc=1)  # checkpoint 15, replay 15..19, train 20..39
    assert "resumed after 20 steps (checkpoint step-15 + 5 replayed steps)" in res.stderr
    diff = max_abs_diff(_adapter(out), _adapter(reference))
    print(f"LoRA stop at 20 (2 ranks) + resume to 40 (1 rank): max abs adapter diff = {diff:.3g}")
    assert diff <= TOL
    ck = out / "checkpoints" / "step-30" / "model.safetensors"
    assert set(load_file(str(ck))) == set(_adapter(reference))  # a checkpoint is the adapter only
    frac = ck.stat().st_size / (base / "model.safetensors").stat().st_size
    print(f"LoRA checkpoint: {ck.stat().st_size} bytes, {frac:.1%} of the base model's safetensors")
    assert frac < 0.1
    # export replays the reference's log from the seeded init (it has no checkpoint): = the live step-30 state
    assert export_main(["--run", str(reference), "--step", "30", "--out", str(tmp_path / "e30")]) == 0
    assert max_abs_diff(load_file(str(tmp_path / "e30" / "adapter_model.safetensors")), load_file(str(ck))) <= TOL


def test_final_is_a_peft_adapter_and_merge_export_gives_the_same_model(tmp_path, tiny_inputs, reference):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir = _model_path(tiny_inputs)
    before = load_file(str(base_dir / "model.safetensors"))
    final = reference / "final"
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 8
    assert any(v.any() for k, v in _adapter(reference).items() if "lora_B" in k)  # trained: B moved off 0
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(base_dir)(IDS).logits
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(final))
        peft_logits = peft_model(input_ids=IDS).logits
    assert (peft_logits - base_logits).abs().max() > 1e-4  # the adapter changes the model
    assert export_main(["--run", str(reference), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # plain transformers, no peft
    with torch.no_grad():
        diff = (merged(IDS).logits - peft_logits).abs().max().item()
    print(f"merged export vs base + peft adapter: max abs logit diff = {diff:.3g}")
    assert diff <= 1e-5
    weights = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert set(weights) == set(before) and (tmp_path / "merged" / "tokenizer.json").is_file()
    changed = {k for k in before if not torch.equal(weights[k], before[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    assert torch.equal(load_file(str(base_dir / "model.safetensors"))["model.embed_tokens.weight"],
                       before["model.embed_tokens.weight"])
    # a full-weight run has no adapter to merge: one line says so
    assert export_main(["--run", str(base_dir.parents[1]), "--out", str(tmp_path / "x"), "--merge"]) == 1


def test_classification_objective(tmp_path, tiny_inputs):
    data = builtin.write_task(tmp_path / "train.jsonl", 200, seed=3, objective="classification")
    evald = builtin.write_task(tmp_path / "eval.jsonl", 32, seed=4, objective="classification")
    out = tmp_path / "cls"
    train(out, tiny_inputs[0], f"--data.path={data}", f"--data.eval_path={evald}", "--data.objective=classification",
          *LORA, "--train.steps=10", "--train.eval_every=5")
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in lines if m["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 5, 10] and all(0 <= e["eval_accuracy"] <= 1 for e in evals)
    assert set(_adapter(out)) and (out / "final" / "adapter_config.json").is_file()


def test_reward_objective_generates_with_the_adapter(tmp_path, tiny_inputs):
    """The built-in reward task (greedy, one word, exact match): eps large enough that perturbing the
    adapter flips some generated answers, so projected gradients are non-zero."""
    out = tmp_path / "reward"
    train(out, "--config", str(REPO / "configs" / "reward_builtin.toml"), tiny_inputs[0], *LORA, "--train.steps=6",
          "--train.batch_size=16", "--data.eval_examples=16", "--mezo.eps=0.5")
    grads = [r.grads[0] for r in StepLog(out / "steps.jsonl").read()]
    assert len(grads) == 6 and any(g != 0.0 for g in grads), grads
    assert (out / "final" / "adapter_model.safetensors").is_file()


def test_resume_with_other_lora_settings_is_a_one_line_error(tiny_inputs, reference):
    res = train(reference, *tiny_inputs, *LORA, "--train.steps=40", "--peft.rank=4", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "other trajectory settings (peft.rank: 8 -> 4)" in res.stderr
