"""The MeZO loop end to end on the HF backend, with real torchrun processes on CPU."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import FAST, REPO, final_weights, max_abs_diff, train

from mezo_elastic.state.checkpoint import StepLog

pytestmark = pytest.mark.integration


def _metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_world_size_independence_one_vs_two_ranks(tmp_path):
    """Same global batches and seeds, so 1 and 2 ranks must take the same steps. Stated tolerance:
    per-step mean losses within 1e-12 (float64 sums of the same per-example values, summed in another
    order) and final fp32 weights within 1e-7; on this machine both come out exactly equal."""
    args = ["--train.steps=30", *FAST]
    train(tmp_path / "w1", *args, nproc=1)
    train(tmp_path / "w2", *args, nproc=2)
    a, b = StepLog(tmp_path / "w1" / "steps.jsonl").read(), StepLog(tmp_path / "w2" / "steps.jsonl").read()
    assert len(a) == len(b) == 30
    assert max(abs(x.loss - y.loss) for x, y in zip(a, b)) <= 1e-12
    assert max(abs(x.grads[0] - y.grads[0]) for x, y in zip(a, b)) <= 1e-9
    diff = max_abs_diff(final_weights(tmp_path / "w1"), final_weights(tmp_path / "w2"))
    print(f"max abs weight diff 1 vs 2 ranks: {diff:.3g}")
    assert diff <= 1e-7


def test_user_model_and_classification_data(tmp_path):
    """A user's HF causal LM (a GPT-2 built here from a config) on their own JSONL, classification."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mezo_elastic.data import builtin

    model_dir = tmp_path / "gpt2"
    builtin._save_tokenizer(model_dir)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(builtin.VOCAB), n_embd=32, n_layer=2, n_head=2, n_positions=64)
                    ).save_pretrained(model_dir)
    data = builtin.write_task(tmp_path / "train.jsonl", 200, seed=3, objective="classification")
    evald = builtin.write_task(tmp_path / "eval.jsonl", 64, seed=4, objective="classification")
    out = tmp_path / "run"
    train(out, f"--model.path={model_dir}", f"--data.path={data}", f"--data.eval_path={evald}",
          "--data.objective=classification", "--train.steps=20", "--train.batch_size=8", "--train.eval_every=10",
          "--train.progress=false", "--mezo.weight_decay=0.1", "--mezo.schedule=cosine", "--mezo.warmup_steps=5",
          "--model.trainable=^transformer\\.h\\.1\\.", nproc=2)
    m = _metrics(out)
    evals = [x for x in m if x["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 10, 20]
    assert all(0.0 <= e["eval_accuracy"] <= 1.0 for e in evals)
    trains = [x for x in m if x["type"] == "train"]
    assert trains and all({"step", "loss", "projected_grad", "lr"} <= t.keys() for t in trains)
    # only layer 1 was trained: everything else is bit-identical to the base model
    from safetensors.torch import load_file

    base, final = load_file(str(model_dir / "model.safetensors")), final_weights(out)
    changed = {k for k in base if not torch.equal(base[k], final[k])}
    assert changed and all(k.startswith("transformer.h.1.") for k in changed)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final")  # HF-loadable


def test_multi_seed_mode_logs_every_rank_and_replays_exactly(tmp_path):
    out = tmp_path / "ms"
    train(out, "--mezo.mode=multi_seed", "--train.steps=12", *FAST, nproc=2)
    recs = StepLog(out / "steps.jsonl").read()
    assert len(recs) == 12 and all(len(r.seeds) == 2 and len(r.grads) == 2 for r in recs)
    assert all(r.seeds[0] != r.seeds[1] for r in recs)
    from mezo_elastic.export import export

    export(out, tmp_path / "exp")  # base model + log, replayed on the fp32 master copy
    from safetensors.torch import load_file

    assert max_abs_diff(load_file(str(tmp_path / "exp" / "model.safetensors")), final_weights(out)) == 0.0


def test_bfloat16_master_weights_run(tmp_path):
    out = tmp_path / "bf16"
    train(out, "--model.dtype=bfloat16", "--mezo.master_weights=on", "--train.steps=10", *FAST)
    w = final_weights(out)
    assert all(t.dtype == torch.bfloat16 for t in w.values())


def test_bfloat16_master_checkpoints_are_fp32_theta_and_resume_exactly(tmp_path):
    """With an fp32 master, a checkpoint holds theta exactly (fp32, not the bf16 weights), so a run
    stopped at step 5 and continued to 10 ends where the uninterrupted run does, bit for bit."""
    from mezo_elastic.state.checkpoint import newest_valid_checkpoint

    args = ["--model.dtype=bfloat16", "--mezo.master_weights=on", *FAST, "--checkpoint.every=5"]  # later wins
    train(tmp_path / "a", *args, "--train.steps=10")
    train(tmp_path / "b", *args, "--train.steps=5")
    res = train(tmp_path / "b", *args, "--train.steps=10")
    assert "resumed after 5 steps" in res.stderr
    (sa, a), (sb, b) = newest_valid_checkpoint(tmp_path / "a"), newest_valid_checkpoint(tmp_path / "b")
    assert sa == sb == 10 and a.keys() == b.keys()
    assert any(t.dtype == torch.float32 for t in a.values())  # the trainable tensors: the master's values
    assert max_abs_diff(a, b) == 0.0 and max_abs_diff(final_weights(tmp_path / "a"), final_weights(tmp_path / "b")) == 0.0


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_rank_that_joined_a_group_skips_interpreter_finalization(tiny_inputs, tmp_path, nproc):
    """gloo objects aborted finished ranks while the interpreter shut down (docs/troubleshooting.md),
    so a worker that joined a group ends with os._exit after its teardown: its atexit handlers, the
    last Python stage of a normal exit, never run. A single process exits normally."""
    site, marks = tmp_path / "site", tmp_path / "marks"
    site.mkdir()
    marks.mkdir()
    (site / "sitecustomize.py").write_text(  # every Python process of the job registers a marker at exit
        "import atexit, os, sys\n"
        "def _mark():\n"
        "    kind = 'worker' if 'mezo_elastic.training.trainer' in sys.modules else 'other'\n"
        "    open(os.path.join(os.environ['MARK_DIR'], f'{kind}-{os.getpid()}'), 'w').close()\n"
        "atexit.register(_mark)\n")
    out = tmp_path / "run"
    train(out, *tiny_inputs, *FAST, "--train.steps=2", nproc=nproc,
          environ={"PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "MARK_DIR": str(marks)})
    assert (out / "final" / "model.safetensors").is_file()
    workers = sorted(p.name for p in marks.iterdir() if p.name.startswith("worker"))
    others = [p.name for p in marks.iterdir() if p.name.startswith("other")]
    if nproc == 1:
        assert len(workers) == 1, workers  # a normal exit: the handler ran (so the probe works)
    else:
        assert workers == [] and others, (workers, others)  # the agent exited normally; the ranks did not


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error; the GPU suite runs the backend")
def test_sglang_backend_without_a_gpu_is_one_clear_error_on_every_rank(tmp_path):
    """Through the real entry point under torchrun: the package's own error on both ranks, quickly,
    instead of SGLang's group or device assertions from deep inside its start-up."""
    import time

    t0 = time.monotonic()
    res = train(tmp_path / "sg", "--model.backend=sglang", "--model.dtype=bfloat16", nproc=2, timeout=120, check=False)
    assert res.returncode != 0 and time.monotonic() - t0 < 60
    for r in (0, 1):
        assert f"mezo_elastic: error (rank {r}): model.backend=sglang needs a CUDA GPU" in res.stderr, res.stderr[-3000:]
    for seed_error in ("world group is not initialized", "tensor model parallel group is not initialized"):
        assert seed_error not in res.stderr
