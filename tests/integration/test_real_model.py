"""A real pretrained model (SmolLM2-135M-Instruct, GGUF Q4_1; tests/real_model.py) through the real entry points
on CPU: GGUF in under torchrun (converted once by one of two ranks into a fresh cache), a few MeZO steps on a few
short examples, resume at another world size, export loading in transformers with the trained weights' logits,
and batched greedy generation against an unpadded referee. A 135M step costs seconds here, the conversion about
40 s: the conversion and the first run happen once for the module (about 3 minutes in all on 2 CPU cores)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO, env, excerpt, torchrun, train
from real_model import SHA256, chat, chat_prompts, referee_check
from safetensors.torch import load_file

from mezo_elastic.runners import gguf

pytestmark = pytest.mark.integration
ROWS = [("The film was wonderful.", 0), ("A dull, boring mess.", 1), ("I loved every minute.", 0),
        ("Awful acting.", 1), ("A delightful surprise.", 0), ("The worst movie this year.", 1)]
RUN = ["--data.objective=classification", "--train.batch_size=4", "--train.eval_every=0", "--train.progress=false",
       "--checkpoint.every=0", "--data.max_length=32", "--model.dtype=float32"]


@pytest.fixture(scope="module")
def real_run(real_gguf, tmp_path_factory):
    """(cache, data file, run directory, stderr) of a 2-rank torchrun job of 2 steps from the GGUF file, on an
    empty cache: the conversion happens inside it."""
    root = tmp_path_factory.mktemp("real-run")
    data = root / "cls.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Review: {t} Sentiment:", "candidates": ["positive", "negative"],
                                        "label": y}) + "\n" for t, y in ROWS))
    cache, out = root / "cache", root / "run"
    res = subprocess.run(torchrun(f"--train.output_dir={out}", f"--model.path={real_gguf}", f"--data.path={data}",
                                  f"--data.eval_path={data}", "--train.steps=2", *RUN, nproc=2),
                         env=env(MEZO_ELASTIC_CACHE=str(cache)), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, excerpt(res.stderr)
    return cache, data, out, res.stderr


def test_gguf_in_under_torchrun_converts_once_and_records_the_file(real_run, real_gguf):
    cache, _, out, stderr = real_run
    assert stderr.count("converting ") == 1, excerpt(stderr)  # one rank converted, the other waited on the lock
    converted = cache / "gguf" / f"{SHA256}{gguf.LAYOUT}"
    assert (converted / ".complete").is_file() and (converted / "config.json").is_file()
    assert json.loads((converted / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == [f"{SHA256}{gguf.LAYOUT}", f"{SHA256}.lock", "sha"]  # no temp dir left
    # the file's sha256, kept for the next launch's ranks (each rank wrote the same record, atomically)
    assert [json.loads(p.read_text())["sha256"] for p in (cache / "gguf" / "sha").iterdir()] == [SHA256]
    info = json.loads((out / "run.json").read_text())
    assert info["gguf"] == {"path": str(real_gguf.resolve()), "sha256": SHA256}
    assert info["model_path"] == str(converted) and info["trajectory"]["mezo.lr"] == 1e-6  # a user model's default
    summary = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["type"] == "summary" and summary["final_eval_accuracy"] >= 0.5, summary


def test_resume_at_another_world_size_then_export_has_the_trained_logits(real_run, real_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, data, out, _ = real_run
    environ = {"MEZO_ELASTIC_CACHE": str(cache)}
    model = str(cache / "gguf" / f"{SHA256}{gguf.LAYOUT}")
    res = train(out, f"--model.path={real_gguf}", f"--data.path={data}", f"--data.eval_path={data}",
                "--train.steps=3", *RUN, environ=environ)
    assert "resumed after 2 steps" in res.stderr and "converting" not in res.stderr, excerpt(res.stderr)  # cached
    assert len((out / "steps.jsonl").read_text().splitlines()) == 3
    exported = tmp_path / "exported"
    res = subprocess.run([sys.executable, "-m", "mezo_elastic.export", "--run", str(out), "--out", str(exported)],
                         env=env(**environ), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and f"exported step 3 of {out}" in res.stdout, excerpt(res.stderr)
    tok = AutoTokenizer.from_pretrained(exported)
    ids = torch.tensor([tok.encode(chat("Review: A delightful surprise. Sentiment?"))])
    with torch.no_grad():
        logits = {name: AutoModelForCausalLM.from_pretrained(path).eval()(input_ids=ids).logits
                  for name, path in (("export", exported), ("final", out / "final"))}
    assert torch.equal(logits["export"], logits["final"])  # the replayed log rebuilds the trained weights exactly
    base, trained = load_file(f"{model}/model.safetensors"), load_file(f"{exported}/model.safetensors")
    assert not torch.equal(base["model.norm.weight"], trained["model.norm.weight"])  # and training moved them


def test_missing_gguf_packages_and_ambiguous_directory_are_one_line_per_rank(tmp_path, real_gguf):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['gguf'] = None  # as if not installed\n")
    out = tmp_path / "run"
    res = subprocess.run(torchrun(f"--train.output_dir={out}", f"--model.path={real_gguf}", nproc=2),
                         env=env(PYTHONPATH=f"{block}:{REPO}"), cwd=REPO, capture_output=True, text=True, timeout=120)
    want = "is a GGUF file; reading it needs the package(s) gguf: pip install 'mezo_elastic[gguf]'"
    lines = [l for l in res.stderr.splitlines() if want in l]
    assert res.returncode != 0 and len(lines) == 2, excerpt(res.stderr)
    assert "Traceback" not in "\n".join(l for l in res.stderr.splitlines() if "torch.distributed" not in l) or \
        res.stderr.count("Traceback") <= 1
    assert not out.exists()
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"GGUF")
    (two / "b.gguf").write_bytes(b"GGUF")
    res = train(tmp_path / "run2", f"--model.path={two}", check=False)
    assert res.returncode == 1 and "holds 2 .gguf files (a.gguf, b.gguf); name one of them in model.path" in res.stderr
    assert "Traceback" not in res.stderr


def test_batched_greedy_generation_matches_an_unpadded_referee_on_cpu(real_run):
    """The check the GPU test makes at 64 prompts x 32 tokens in bf16 (defect 1 of issue 24), here in fp32 on a
    few prompts: every completion of the batched, left-padded hf runner is the referee's greedy one."""
    from transformers import AutoTokenizer

    from mezo_elastic.config import Config, ModelConfig
    from mezo_elastic.runners.base import GenerateRequest, GenerationSettings
    from mezo_elastic.runners.hf.runner import HFRunner

    cache = real_run[0]
    model = str(cache / "gguf" / f"{SHA256}{gguf.LAYOUT}")
    tok = AutoTokenizer.from_pretrained(model)
    runner = HFRunner(Config(model=ModelConfig(path=model, dtype="float32")), torch.device("cpu"), model)
    by_length = {len(ids): ids for ids in (tok.encode(p) for p in chat_prompts(64))}
    lengths = sorted(by_length)
    prompts = [by_length[lengths[i * (len(lengths) - 1) // 3]] for i in range(4)]  # 4 lengths: real left padding
    eos = {tok.convert_tokens_to_ids("<|im_end|>")}
    out = runner.generate([GenerateRequest(tuple(p), seed=i) for i, p in enumerate(prompts)],
                          GenerationSettings(max_new_tokens=8, temperature=0.0, eos_ids=tuple(eos)))
    # The referee: the same fp32 weights, one request at a time, unpadded (no second copy of the model).
    report = referee_check(runner.model, prompts, out, 8, eos)
    print(report.line("hf runner, fp32, CPU"))
    assert report.agree == len(prompts), report.line("hf runner, fp32, CPU")
