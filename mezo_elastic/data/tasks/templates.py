"""MeZO's prompt templates (princeton-nlp/MeZO large_models/templates.py), one per task, and the rows they make.

Each task has MeZO's `encode` (the prompt without the answer) and `verbalize` (the prompt with one
candidate), written as MeZO writes them, and the candidates MeZO's tasks.py builds for a sample.
`render` turns one example of the dataset's own published schema into a row of this package:

  classification  {"prompt": P, "candidates": [c, ...], "label": i}  (ReCoRD adds "correct": [i, ...])
  generation      {"prompt": P, "answers": [str, ...]}             (SQuAD, DROP)

with P + c exactly MeZO's verbalize string. MeZO (utils.encode_prompt, no demonstrations when
training) strips spaces from both strings, prefixes nothing and left-strips the result; the model
sees verbalize(...).strip(' ').lstrip(), and the candidate's tokens are what follows the prompt's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mezo_elastic.errors import DataError

Example = dict[str, Any]


@dataclass(frozen=True)
class TaskSpec:
    """One MeZO task: its name, the HF dataset it was run on, its fields, and how it is scored."""

    name: str
    hf_name: str  # what MeZO's tasks.py passes to datasets.load_dataset
    fields: tuple[str, ...]  # fields of that schema the template reads
    metric: str  # MeZO's metric_name: accuracy, or f1 for the generation tasks
    encode: Callable[[Example], str]
    verbalize: Callable[[Example, Any], str] | None = None  # None: a generation task
    candidates: Callable[[Example], list] | None = None  # MeZO's Sample.candidates
    correct: Callable[[Example], Any] | None = None  # MeZO's Sample.correct_candidate
    # mezo.sh trains Copa and ReCoRD with --train_as_classification False: the NLL of the right
    # candidate's tokens (teacher forcing), not cross-entropy over the candidates.
    teacher_forced: bool = False

    @property
    def generation(self) -> bool:
        return self.verbalize is None


# -- MeZO's templates, as written there -------------------------------------------------------------

def _sst2_encode(ex: Example) -> str:
    return f"{ex['sentence'].strip()} It was"


def _sst2_verbalize(ex: Example, c: int) -> str:
    return f"{ex['sentence'].strip()} It was {({0: 'terrible', 1: 'great'})[c]}"


def _copa_prompt(ex: Example) -> str:  # CopaTemplate.get_prompt, capitalization "correct"
    premise = ex["premise"].rstrip()
    if premise.endswith("."):
        premise = premise[:-1]
    conj = {"effect": " so ", "cause": " because "}.get(ex["question"])
    if conj is None:
        raise DataError(f"Copa: field 'question' is {ex['question']!r}; the schema allows 'cause' or 'effect'")
    return premise + conj


def _copa_capitalize(c: str) -> str:
    words = c.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def _boolq_question(ex: Example) -> str:
    q = ex["question"]
    if not q:
        raise DataError("BoolQ: field 'question' is empty")
    if not q.endswith("?"):
        q = q + "?"
    return q[0].upper() + q[1:]


def _boolq_answer(ex: Example) -> bool:
    """boolq's bool field 'answer' (what MeZO loads); super_glue/boolq's 'label' (1 = true) also works."""
    if isinstance(ex.get("answer"), bool):
        return ex["answer"]
    if ex.get("label") in (0, 1):
        return ex["label"] == 1
    raise DataError(f"BoolQ: needs a bool field 'answer' (boolq) or a 0/1 field 'label' (super_glue/boolq); "
                    f"got answer={ex.get('answer')!r} label={ex.get('label')!r}")


def _boolq_encode(ex: Example) -> str:  # BoolQTemplateV3: BoolQDataset.get_template's default (version 2)
    return f"{ex['passage']} {_boolq_question(ex)}\n"


def _multirc_encode(ex: Example) -> str:
    return (f"{ex['paragraph']}\nQuestion: {ex['question']}\nI found this answer \"{ex['answer']}\". "
            f"Is that correct? Yes or No?\n")


def _cb_encode(ex: Example) -> str:
    return f"Suppose {ex['premise']} Can we infer that \"{ex['hypothesis']}\"? Yes, No, or Maybe?\n"


def _wic_encode(ex: Example) -> str:
    return (f"Does the word \"{ex['word']}\" have the same meaning in these two sentences? Yes, No?\n"
            f"{ex['sentence1']}\n{ex['sentence2']}\n")


def _wsc_encode(ex: Example) -> str:
    return (f"{ex['text']}\nIn the previous sentence, does the pronoun \"{ex['span2_text'].lower()}\" refer to "
            f"{ex['span1_text']}? Yes or No?\n")


def _record_passage(ex: Example) -> str:  # ReCoRDTemplateGPT3: ReCoRDDataset.get_template's only one
    return ex["passage"].replace("@highlight\n", "- ")


def _record_encode(ex: Example) -> str:
    return f"{_record_passage(ex)}\n-"


def _record_verbalize(ex: Example, c: str) -> str:
    return f"{_record_passage(ex)}\n- {ex['query'].replace('@placeholder', c)}"


def _rte_encode(ex: Example) -> str:
    return f"{ex['premise']}\nDoes this mean that \"{ex['hypothesis']}\" is true? Yes or No?\n"


def _squad_encode(ex: Example) -> str:
    return f"Title: {ex['title']}\nContext: {ex['context']}\nQuestion: {ex['question'].strip()}\nAnswer:"


def _drop_encode(ex: Example) -> str:
    return f"Passage: {ex['passage']}\nQuestion: {ex['question'].strip()}\nAnswer:"


def _words(encode: Callable[[Example], str], verbalizer: dict[int, str]) -> Callable[[Example, int], str]:
    """verbalize = encode + the label's word: MeZO's templates whose encode ends where the word goes."""
    return lambda ex, c: encode(ex) + verbalizer[c]


def _label(ex: Example) -> int:
    return ex["label"]


_YES_NO = {0: "No", 1: "Yes"}  # MultiRC, WIC, WSC
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("SST2", "glue/sst2", ("sentence", "label"), "accuracy", _sst2_encode, _sst2_verbalize,
             lambda ex: [0, 1], _label),
    TaskSpec("RTE", "super_glue/rte", ("premise", "hypothesis", "label"), "accuracy", _rte_encode,
             _words(_rte_encode, {0: "Yes", 1: "No"}), lambda ex: [0, 1], _label),
    TaskSpec("CB", "super_glue/cb", ("premise", "hypothesis", "label"), "accuracy", _cb_encode,
             _words(_cb_encode, {0: "Yes", 1: "No", 2: "Maybe"}), lambda ex: [0, 1, 2], _label),
    TaskSpec("BoolQ", "boolq", ("question", "passage"), "accuracy", _boolq_encode,
             lambda ex, c: _boolq_encode(ex) + c, lambda ex: ["Yes", "No"],
             lambda ex: "Yes" if _boolq_answer(ex) else "No"),
    TaskSpec("WSC", "super_glue/wsc.fixed", ("text", "span1_text", "span2_text", "label"), "accuracy", _wsc_encode,
             _words(_wsc_encode, _YES_NO), lambda ex: [0, 1], _label),
    TaskSpec("WIC", "super_glue/wic", ("word", "sentence1", "sentence2", "label"), "accuracy", _wic_encode,
             _words(_wic_encode, _YES_NO), lambda ex: [0, 1], _label),
    TaskSpec("MultiRC", "super_glue/multirc", ("paragraph", "question", "answer", "label"), "accuracy",
             _multirc_encode, _words(_multirc_encode, _YES_NO), lambda ex: [0, 1], _label),
    TaskSpec("Copa", "super_glue/copa", ("premise", "choice1", "choice2", "question", "label"), "accuracy",
             _copa_prompt, lambda ex, c: _copa_prompt(ex) + _copa_capitalize(c),
             lambda ex: [ex["choice1"], ex["choice2"]], lambda ex: ex[f"choice{ex['label'] + 1}"], True),
    TaskSpec("ReCoRD", "super_glue/record", ("passage", "query", "entities", "answers"), "accuracy", _record_encode,
             _record_verbalize, lambda ex: list(ex["entities"]), lambda ex: list(ex["answers"]), True),
    TaskSpec("SQuAD", "squad", ("title", "context", "question", "answers"), "f1", _squad_encode),
    TaskSpec("DROP", "drop", ("passage", "question", "answers_spans"), "f1", _drop_encode),
)}


def canonical_name(name: str) -> str:
    """MeZO's spelling of a task name given in any case (sst2 -> SST2); '' stays ''.

    Raises:
        ConfigError: not one of MeZO's tasks.
    """
    from mezo_elastic.errors import ConfigError

    if not name:
        return ""
    by_lower = {k.lower(): k for k in TASKS}
    if name.lower() not in by_lower:
        raise ConfigError(f"data.task={name!r} is not one of MeZO's tasks; choose one of {list(TASKS)} (any case)")
    return by_lower[name.lower()]


def _gold_answers(spec: TaskSpec, ex: Example) -> list[str]:
    answers = ex["answers"]["text"] if spec.name == "SQuAD" else ex["answers_spans"]["spans"]
    if not answers:  # MeZO asserts len(answers) > 0
        raise DataError(f"{spec.name}: the example has no gold answer")
    return list(answers)


def _check_label(spec: TaskSpec, ex: Example, n: int) -> None:
    label = ex.get("label")
    if spec.name in ("BoolQ", "ReCoRD"):
        return
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < n:
        hint = " (a test split has no labels: use the validation split)" if label == -1 else ""
        raise DataError(f"{spec.name}: field 'label' is {label!r}, not in [0, {n}){hint}")


def render(spec: TaskSpec, ex: Example) -> dict:
    """One example of the task's HF schema as this package's row (see the module docstring).

    Raises:
        DataError: a field of the wrong kind, a label out of range, an answer that is no candidate.
    """
    prompt = spec.encode(ex).strip(" ")
    if spec.generation:
        return {"prompt": prompt.lstrip(), "answers": _gold_answers(spec, ex)}
    cands = spec.candidates(ex)
    _check_label(spec, ex, len(cands))
    texts = []
    for c in cands:
        full = spec.verbalize(ex, c).strip(" ")
        if not full.startswith(prompt) or len(full) == len(prompt):
            raise DataError(f"{spec.name}: candidate {c!r} gives {full!r}, which does not extend the prompt {prompt!r}")
        texts.append(full[len(prompt):])
    if not cands:  # one is allowed: a ReCoRD query with a single entity (MeZO scores it too)
        raise DataError(f"{spec.name}: the example has no candidates")
    correct = spec.correct(ex)
    if not isinstance(correct, list):
        return {"prompt": prompt.lstrip(), "candidates": texts, "label": cands.index(correct)}
    # ReCoRD: every answer entity is right (MeZO: candidates.index(c) for each; it trains on the first).
    idx = [cands.index(a) for a in correct if a in cands]
    if not idx:
        raise DataError(f"{spec.name}: none of the answers {correct!r} is among the entities {cands!r}")
    return {"prompt": prompt.lstrip(), "candidates": texts, "label": idx[0], "correct": idx}
