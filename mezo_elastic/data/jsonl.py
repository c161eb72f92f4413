"""JSONL datasets, tokenisation, and the global batch schedule.

Schemas (one JSON object a line; blank lines are skipped):
  lm              {"prompt": str, "completion": str}
  classification  {"prompt": str, "candidates": [str, str, ...], "label": int}
                  optional "correct": [int, ...], every right candidate (eval accuracy; ReCoRD)
  reward          {"prompt": str, "answers": [str, ...], any other field}  (the whole row reaches the
                  reward function; answers may be empty for a reward that does not use them)

How a candidate (or completion) joins its prompt: by default a space goes between them (the files'
convention: {"prompt": "2+2 =", "completion": "4"} is the text "2+2 = 4"). With data.verbatim (and
always for data.task rows) prompt + candidate is the text as it stands, as MeZO's templates need
(CB's "...Yes, No, or Maybe?\n" + "Yes"); its tokens are then those of prompt + candidate after the
prompt's own, the option tokens of MeZO's encode_prompt.

The global batch of step t is a pure function of (data seed, t): example k of the run
(k = t * batch_size + j) is position k % N of the permutation of epoch k // N. Ranks take
contiguous slices of it, so the sequence of global batches does not depend on world size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from mezo_elastic.errors import DataError


@dataclass(frozen=True)
class Example:
    """A tokenised example: one prompt and its completion(s)."""

    prompt_ids: tuple[int, ...]
    candidates: tuple[tuple[int, ...], ...]  # lm: one entry (the completion)
    label: int = 0  # classification: index of the right candidate
    row: dict | None = field(default=None, compare=False, hash=False)  # reward: the JSONL row as read
    where: str = ""  # "file:line" of the row (for reward errors)
    index: int = 0  # position in its dataset (keys the sampling noise of generation)
    correct: tuple[int, ...] = ()  # every right candidate when there are several (ReCoRD); () = (label,)

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + sum(len(c) for c in self.candidates)


def _check(path: str, lineno: int, obj: Any, objective: str) -> None:
    where = f"{path}:{lineno}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if not isinstance(obj.get("prompt"), str):
        raise DataError(f"{where}: field 'prompt' must be a string (got {obj.get('prompt')!r})")
    if objective == "reward":
        answers = obj.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{where}: field 'answers' must be a list of strings (objective reward; got {answers!r})")
        return
    if objective == "lm":
        if not isinstance(obj.get("completion"), str) or not obj["completion"]:
            raise DataError(f"{where}: field 'completion' must be a non-empty string (objective lm)")
        return
    cands = obj.get("candidates")
    if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) and c for c in cands):
        raise DataError(f"{where}: field 'candidates' must be a list of >= 2 non-empty strings (objective classification)")
    label = obj.get("label")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(cands):
        raise DataError(f"{where}: field 'label' must be an integer in [0, {len(cands)}) (got {label!r})")
    correct = obj.get("correct", [label])
    if not isinstance(correct, list) or not correct or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(cands) for i in correct):
        raise DataError(f"{where}: field 'correct' must be a non-empty list of integers in [0, {len(cands)}) "
                        f"(got {correct!r})")


def read_jsonl(path: str, objective: str, where: list[str] | None = None) -> list[dict]:
    """Read and check a JSONL dataset; a malformed line raises DataError naming file:line and field.

    `where`, when given, receives "path:line" of every row returned, in order.
    """
    p = Path(path)
    if p.is_dir():
        raise DataError(f"data file {path!r} is a directory, not a JSONL file; give the file itself (a directory "
                        f"of a MeZO task's splits goes with data.task)")
    if not p.is_file():
        raise DataError(f"data file {path!r} does not exist")
    rows = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            _check(path, lineno, obj, objective)
            rows.append(obj)
            if where is not None:
                where.append(f"{path}:{lineno}")
    if not rows:
        raise DataError(f"data file {path!r} has no examples")
    return rows


def load_tokenizer(model_path: str, trust_remote_code: bool):
    """The model directory's tokenizer (transformers AutoTokenizer, local files only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code, local_files_only=True)


def _candidate_ids(tokenizer, prompt: str, n_prompt: int, text: str, verbatim: bool) -> tuple[int, ...]:
    if not verbatim:
        # A leading space makes BPE tokenizers produce the word as it appears after the prompt.
        return tuple(tokenizer(" " + text, add_special_tokens=False)["input_ids"])
    # MeZO's option tokens: those of the whole text past the prompt's count (encode_prompt's option_len).
    return tuple(tokenizer(prompt + text, add_special_tokens=True)["input_ids"][n_prompt:])


def tokenize(rows: list[dict], tokenizer, objective: str, max_length: int,
             where: Sequence[str] | None = None, verbatim: bool = False, limit: str = "",
             cut: list[int] | None = None) -> list[Example]:
    """Tokenise prompt and completions (no merges across the boundary; see the module docstring for
    verbatim), cut from the left.

    objective reward: the prompt only (max_length is what the prompt may use), the row kept whole.
    `limit` names where max_length comes from (for the error; default data.max_length); `cut`, when
    given, receives the index of every row that was cut.
    """
    limit = limit or f"data.max_length={max_length}"
    out = []
    for i, row in enumerate(rows):
        prompt = tuple(tokenizer(row["prompt"], add_special_tokens=True)["input_ids"])
        if not prompt:  # the first completion token would have nothing to be predicted from
            raise DataError(f"example {i}: prompt {row['prompt']!r} has no tokens (this tokenizer adds no BOS); "
                            f"give every example a non-empty prompt")
        if objective == "reward":
            if cut is not None and len(prompt) > max_length:
                cut.append(i)
            out.append(Example(prompt[-max_length:], (), 0, row, where[i] if where else f"example {i}", i))
            continue
        texts = [row["completion"]] if objective == "lm" else row["candidates"]
        cands = tuple(_candidate_ids(tokenizer, row["prompt"], len(prompt), t, verbatim) for t in texts)
        if not all(cands):
            raise DataError(f"example {i}: a candidate of {texts!r} has no tokens after the prompt {row['prompt']!r}")
        longest = max(len(c) for c in cands)
        if longest >= max_length:
            raise DataError(f"{where[i] if where else f'example {i}'}: a completion has {longest} tokens, not "
                            f"below {limit}")
        if cut is not None and len(prompt) + longest > max_length:
            cut.append(i)
        prompt = prompt[-(max_length - longest):]
        out.append(Example(prompt, cands, int(row.get("label", 0)), index=i, correct=tuple(row.get("correct", ()))))
    return out


def unknown_token_fraction(examples: Sequence[Example], unk_id: int | None) -> float:
    """Fraction of all prompt and candidate tokens that are the unknown token (0.0 without one)."""
    if unk_id is None:
        return 0.0
    total = unk = 0
    for ex in examples:
        for ids in (ex.prompt_ids, *ex.candidates):
            total += len(ids)
            unk += sum(1 for i in ids if i == unk_id)
    return unk / total if total else 0.0


def _seed_int(*parts: object) -> int:
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


class BatchSchedule:
    """Global batch indices of step t as a pure function of (seed, t)."""

    def __init__(self, n_examples: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        # a Python list: 16 indices cost 3 us against 24 us through int(tensor[i]) (host time in every step)
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(_seed_int("data", self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def global_batch(self, step: int) -> list[int]:
        """Indices of the examples of step `step`, in global order."""
        start = step * self.batch_size
        return [self._perm(k // self.n)[k % self.n] for k in range(start, start + self.batch_size)]


def rank_slice(items: Sequence, rank: int, world: int) -> list:
    """Rank r's contiguous share of items; the first len % world ranks get one more."""
    q, r = divmod(len(items), world)
    lo = rank * q + min(rank, r)
    return list(items[lo : lo + q + (1 if rank < r else 0)])
