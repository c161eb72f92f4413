"""The built-in tiny default: a small Llama and a synthetic task, made locally with fixed seeds.

No download anywhere. The task ("majority sentiment"): a prompt of words from positive, negative
and neutral lists, then "->"; the completion is "pos" if positive words outnumber negative ones,
else "neg". From a random init MeZO first learns that the answer is pos or neg (the loss falls
from about log(vocab) towards log 2), then the rule itself, so a default run visibly learns in
minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

POSITIVE = ["good", "great", "fine", "happy", "nice", "bright", "warm", "calm"]
NEGATIVE = ["bad", "awful", "poor", "sad", "grim", "dark", "cold", "harsh"]
NEUTRAL = ["the", "a", "day", "film", "food", "it", "was", "and"]
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
ANSWERS = ["pos", "neg"]
VOCAB = SPECIAL + POSITIVE + NEGATIVE + NEUTRAL + ["->"] + ANSWERS

TINY_LLAMA = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
    tie_word_embeddings=False, initializer_range=0.1,
)


def _atomic_dir(target: Path, build) -> Path:
    """Build a directory in a temp sibling and rename it into place; a concurrent builder loses quietly."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another rank renamed first: its content is identical (fixed seeds)
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _save_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(out)


def _save_model(out: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    cfg = LlamaConfig(vocab_size=len(VOCAB), pad_token_id=0, bos_token_id=2, eos_token_id=3, **TINY_LLAMA)
    # A config saved on its own (not through the model) has no `architectures`, and SGLang picks the model
    # class from it: without it the sglang backend cannot load the built-in model.
    cfg.architectures = [LlamaForCausalLM.__name__]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    # Not model.save_pretrained: under a process group transformers writes only on global rank 0,
    # and every rank (every node) may be the one building this directory.
    from safetensors.torch import save_file

    cfg.save_pretrained(out)
    # Written by hand (not GenerationConfig.save_pretrained): the same bytes on every rank and transformers
    # version. It carries the EOS, so a saved model that lost it (generating past </s>) shows in the tests.
    gen = {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})


def ensure_tiny_model(root: Path, seed: int = 0) -> Path:
    """Make (once) the built-in tiny Llama with its tokenizer under root/tiny-model; return its path."""

    def build(tmp: Path) -> None:
        _save_tokenizer(tmp)
        _save_model(tmp, seed)

    path = _atomic_dir(Path(root) / "tiny-model", build)
    _add_architectures(path)
    return path


def _add_architectures(path: Path) -> None:
    """A built-in model made before config.json carried `architectures` gets it (same bytes on every
    rank; replaced atomically), so a run directory from then also loads on the sglang backend."""
    config = path / "config.json"
    values = json.loads(config.read_text())
    if values.get("architectures"):
        return
    values["architectures"] = ["LlamaForCausalLM"]
    tmp = config.with_name(f".config.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, config)


def _example(rng: random.Random, objective: str) -> dict:
    n_sent = rng.choice([1, 3, 5])  # odd: no ties
    n_pos = sum(rng.random() < 0.5 for _ in range(n_sent))
    words = [rng.choice(POSITIVE) for _ in range(n_pos)] + [rng.choice(NEGATIVE) for _ in range(n_sent - n_pos)]
    words += [rng.choice(NEUTRAL) for _ in range(6 - n_sent)]
    rng.shuffle(words)
    label = 0 if 2 * n_pos > n_sent else 1
    prompt = " ".join(words) + " ->"
    if objective == "classification":
        return {"prompt": prompt, "candidates": list(ANSWERS), "label": label}
    if objective == "reward":
        return {"prompt": prompt, "answers": [ANSWERS[label]]}
    return {"prompt": prompt, "completion": ANSWERS[label]}


def write_task(path: Path, n: int, seed: int, objective: str) -> Path:
    """Write n examples of the built-in task as JSONL (atomically)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        for _ in range(n):
            f.write(json.dumps(_example(rng, objective)) + "\n")
    os.replace(tmp, path)
    return path


def ensure_task(root: Path, objective: str) -> tuple[Path, Path]:
    """Make (once) the built-in train/eval JSONL files for `objective`; return their paths."""
    d = Path(root) / f"task-{objective}"
    train, evalp = d / "train.jsonl", d / "eval.jsonl"
    if not train.exists():
        write_task(train, 2048, seed=1, objective=objective)
    if not evalp.exists():
        write_task(evalp, 256, seed=2, objective=objective)
    return train, evalp


def install_copy(src: Path, target: Path) -> Path:
    """Copy a built directory `src` to `target` atomically (temp sibling, rename); an existing complete
    `target` is kept (its content is the same: fixed seeds)."""
    return _atomic_dir(Path(target), lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))
