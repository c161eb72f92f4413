"""Reward functions for the reward objective: a generated completion and its JSONL row -> a float.

`load_reward(spec)` turns the value of data.reward into a `Reward`: one of the built-ins below, or
"MODULE:FUNCTION", a user function imported by name (that runs the user's code at start-up, the
user's explicit choice, like model.trust_remote_code). `compute_rewards` scores a batch and stops
at the first reward that raises or returns anything but a finite number, naming it and file:line.

The row (`example`) is the whole JSON object: {"prompt": str, "answers": [str, ...], ...}; every
other field reaches the function untouched (Countdown's numbers and target).

Built-ins (docs/rewards.md has the details and the reference each one follows):
  exact_match  1.0 if the SQuAD-normalised completion equals a normalised answer, else 0.0
  token_f1     SQuAD token F1, max over the answers, exactly as MeZO's SQuAD objective
  numeric      1.0 if the last number in the completion equals answers[0] as a decimal, else 0.0
  countdown    Qiu et al. 2025's reward: 0.1 * format + answer (0.0 to 1.1); the equation is
               parsed with `ast` and evaluated by `safe_arithmetic`, never eval()
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import math
import numbers
import operator
import re
import string
import warnings
from collections import Counter
from decimal import Decimal
from typing import Any, Callable

from mezo_elastic.errors import ConfigError, RewardError

RewardFn = Callable[[str, dict], Any]


class Reward:
    """A named reward function: `reward(completion, example) -> float`.

    `name` is the built-in's name or "MODULE:FUNCTION", for messages. A user function gets a deep
    copy of the row, so one that modifies it cannot change what the next completion is scored on.
    """

    def __init__(self, name: str, fn: RewardFn, copy_example: bool = False):
        self.name = name
        self._fn = fn
        self._copy_example = copy_example

    def __call__(self, completion: str, example: dict) -> float:
        """The function's value, unchecked (`compute_rewards` checks it and names the row)."""
        return self._fn(completion, copy.deepcopy(example) if self._copy_example else example)

    def __repr__(self) -> str:
        return f"Reward({self.name!r})"


# ---- SQuAD answer normalisation and token F1 (MeZO large_models/metrics.py) ----

_PUNCTUATION = frozenset(string.punctuation)  # ASCII only, as SQuAD's script: "—" and "…" stay
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NO_ANSWER = ("CANNOTANSWER", "no answer")  # MeZO: such a gold answer gets exact match, not F1


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, then the articles a/an/the, then collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _answers(example: dict) -> list[str]:
    answers = example.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"the row's 'answers' must be a non-empty list of strings (got {answers!r})")
    return answers


def _token_f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:  # also when both are empty: MeZO scores that 0 (SQuAD v2's script scores it 1)
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(completion: str, example: dict) -> float:
    """MeZO's SQuAD F1: max token F1 over the answers; if answers[0] is CANNOTANSWER or "no answer",
    exact match against it instead."""
    answers = _answers(example)
    if answers[0] in _NO_ANSWER:
        return float(normalize_answer(answers[0]) == normalize_answer(completion))
    return max(_token_f1(completion, a) for a in answers)


def exact_match(completion: str, example: dict) -> float:
    """1.0 if the normalised completion equals any normalised answer (MeZO's "em"), else 0.0."""
    pred = normalize_answer(completion)
    return float(any(normalize_answer(a) == pred for a in _answers(example)))


# ---- numeric: the last number in the completion against answers[0] ----

# A minus is a sign only where it cannot be a binary operator: not after a letter, digit or ")"
# ("5-3" ends in 3, "is -3" in -3). Thousands separators are commas between groups of three digits
# ("1,234,567"; "1,2,3" is three numbers). Decimals, ".5" and exponents ("1e-3") are numbers too.
_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_RE = re.compile(r"(?:(?<![\w)])-)?" + _UNSIGNED)
_WHOLE_NUMBER_RE = re.compile(r"\s*[+-]?" + _UNSIGNED + r"\s*")


def _decimal(text: str) -> Decimal:
    return Decimal(text.replace(",", "").strip())


def last_number(text: str) -> Decimal | None:
    """The last number written in `text`, as an exact Decimal, or None if it has none."""
    found = _NUMBER_RE.findall(text)
    return _decimal(found[-1]) if found else None


def numeric(completion: str, example: dict) -> float:
    """1.0 if the last number in the completion equals answers[0] exactly as decimals, else 0.0.

    Exact, with no tolerance: "2.50" equals "2.5" and "1,000" equals "1000.0" (decimal, not binary
    floats), but "0.33" does not equal "0.333"; a tolerance would also merge large integers.
    """
    answer = _answers(example)[0]
    if not _WHOLE_NUMBER_RE.fullmatch(answer):
        raise ValueError(f"answers[0]={answer[:80]!r} is not a number (numeric needs e.g. '42', '-3.5', '1,000')")
    got = last_number(completion)
    return float(got is not None and got == _decimal(answer))


# ---- safe arithmetic: numbers, + - * /, unary +/-, parentheses; nothing else ----

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 10_000  # longer is no Countdown answer; bounds parse time and recursion


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # not bool, complex, str
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.Constant):
        what = f"the constant {_one_line(repr(node.value), 40)}"
    else:
        what = type(node.op).__name__ if isinstance(node, (ast.BinOp, ast.UnaryOp)) else type(node).__name__
    raise ValueError(f"{what} is not allowed in an arithmetic expression (numbers, + - * /, parentheses)")


def safe_arithmetic(expr: str) -> int | float:
    """Evaluate `expr` made of int/float literals, + - * /, unary + -, and parentheses.

    Parsed with `ast` and walked here; names, calls, attributes, subscripts, ** and // are refused,
    so no code runs and no exponent can make a huge number.

    Raises:
        ValueError: not such an expression (or longer than MAX_EXPRESSION_CHARS, or nested too deep).
        ZeroDivisionError, OverflowError: as Python's arithmetic raises them.
    """
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        with warnings.catch_warnings():  # "1if 1 else 2" warns "invalid decimal literal" on stderr: quiet
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expr.strip(), mode="eval")
        return _value(tree.body)
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression ({e.msg})") from None
    except (RecursionError, MemoryError):
        raise ValueError("expression nested too deeply") from None


# ---- countdown (Qiu et al. 2025, VsonicV/es-fine-tuning-paper, countdown_grader.py) ----

# The reference's regexes (re.DOTALL) are r"^<think>.*?</think>\n<answer>.*?</answer>$" for the full
# format, r"<think>.*?</think>" and r"<answer>(.*?)</answer>" for the blocks. Backtracking makes them
# quadratic on degenerate text ("<answer>" x 3000 takes 0.5 s), which a collapsing policy does write,
# so the same matches are found here with str.find in linear time (a test checks they agree).
_SEPARATOR = "</think>\n<answer>"
_EQUATION_CHARS = re.compile(r"^[0-9+\-*/() ]+$")


def blocks(text: str, open_tag: str, close_tag: str) -> list[str]:
    """What re.findall(open_tag + "(.*?)" + close_tag, text, re.DOTALL) returns, in linear time."""
    found, pos = [], 0
    while (start := text.find(open_tag, pos)) != -1:
        end = text.find(close_tag, start + len(open_tag))
        if end == -1:  # no close after this open, so none after any later open either
            break
        found.append(text[start + len(open_tag) : end])
        pos = end + len(close_tag)
    return found


def _has_block(text: str, open_tag: str, close_tag: str) -> bool:
    start = text.find(open_tag)
    return start != -1 and text.find(close_tag, start + len(open_tag)) != -1


def _full_format(text: str) -> bool:
    body = text[:-1] if text.endswith("\n") else text  # "$" also matches before one final newline
    if not (body.startswith("<think>") and body.endswith("</answer>")):
        return False
    sep = body.find(_SEPARATOR, len("<think>"))
    return sep != -1 and sep + len(_SEPARATOR) <= len(body) - len("</answer>")


def countdown_format(text: str) -> float:
    """1.0 for exactly <think>...</think>\\n<answer>...</answer>; else 0.1 if a think block is there
    plus 0.5 if an answer block is there."""
    if _full_format(text):
        return 1.0
    return (0.1 if _has_block(text, "<think>", "</think>") else 0.0) + \
        (0.5 if _has_block(text, "<answer>", "</answer>") else 0.0)


def countdown_answer(completion: str, nums: list[int], target: float) -> float:
    """1.0 if the last <answer> block uses each of `nums` exactly once (a multiset: no other number,
    none missing) with + - * / and parentheses, and its value is within 1e-5 of `target`."""
    answers = blocks(completion, "<answer>", "</answer>")
    content = answers[-1].strip() if answers else ""
    if not content or not _EQUATION_CHARS.match(content):
        return 0.0
    try:
        used = sorted(int(n) for n in re.findall(r"\d+", content))
    except ValueError:  # a number of over 4300 digits (Python's int limit): not one of the given
        return 0.0
    if used != sorted(nums):
        return 0.0
    try:
        return 1.0 if abs(float(safe_arithmetic(content)) - float(target)) < 1e-5 else 0.0
    except (ValueError, ArithmeticError):  # ** or //, "(1)(2)", 1/0, a float overflow: no answer
        return 0.0


def _countdown_fields(example: dict) -> tuple[list[int], float]:
    nums = example.get("numbers", example.get("nums"))
    if not isinstance(nums, list) or not nums or not all(type(n) is int and n >= 0 for n in nums):
        raise ValueError(f"the row's 'numbers' (or 'nums') must be a non-empty list of integers >= 0 (got {nums!r})")
    target = example["target"] if "target" in example else _answers(example)[0]
    try:
        if isinstance(target, bool):
            raise ValueError
        return nums, float(target)
    except (TypeError, ValueError):
        raise ValueError(f"the row's 'target' (else answers[0]) must be a number (got {target!r})") from None


def countdown(completion: str, example: dict) -> float:
    """0.1 * format + answer, as the reference. The prompt is expected to end with "<think>" (the
    reference's prompts do), so the format is checked on "<think>" + completion."""
    nums, target = _countdown_fields(example)
    return 0.1 * countdown_format("<think>" + completion) + countdown_answer(completion, nums, target)


# ---- loading and batch scoring ----

BUILTINS: dict[str, RewardFn] = {"countdown": countdown, "exact_match": exact_match,
                                 "numeric": numeric, "token_f1": token_f1}
_USER_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_ALLOWED = f"a built-in {sorted(BUILTINS)} or MODULE:FUNCTION, a function (completion, example) -> float"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exception(e: BaseException) -> str:
    """"Type: message" on one line (just "Type" when the message is empty or cannot be printed)."""
    try:
        msg = _one_line(e)
    except Exception:
        msg = ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _import_user(spec: str) -> RewardFn:
    module_name, attr = spec.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module itself raising at import time
        raise ConfigError(f"data.reward={spec!r}: module {module_name!r} cannot be imported "
                          f"({_exception(e)}); is it on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"data.reward={spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"data.reward={spec!r} is not callable (got {type(obj).__name__} "
                          f"{_one_line(repr(obj), 40)}); it must be a function (completion, example) -> float")
    try:
        inspect.signature(obj).bind("", {})
    except TypeError as e:
        raise ConfigError(f"data.reward={spec!r} cannot be called as f(completion, example): {e}") from None
    except ValueError:  # no signature to read (some C functions): find out when it is called
        pass
    return obj


def load_reward(spec: str) -> Reward:
    """The reward function data.reward names.

    Args:
        spec: a built-in name (exact_match, token_f1, numeric, countdown) or "MODULE:FUNCTION"
            (FUNCTION may be dotted, e.g. "my_rewards:Scorer.score"), imported with importlib:
            the module's code runs in every rank's process, as the user chose.
    Raises:
        ConfigError: unknown built-in, malformed spec, module not importable, attribute missing,
            not callable, or not callable with two positional arguments.
    """
    if not isinstance(spec, str) or ":" not in spec:
        if isinstance(spec, str) and spec in BUILTINS:
            return Reward(spec, BUILTINS[spec])
        raise ConfigError(f"data.reward={spec!r} is not allowed; choose {_ALLOWED}")
    if not _USER_SPEC.fullmatch(spec):
        raise ConfigError(f"data.reward={spec!r} is not MODULE:FUNCTION (dotted names, one colon, "
                          f"e.g. my_rewards:score); choose {_ALLOWED}")
    return Reward(spec, _import_user(spec), copy_example=True)


def _repr(value: Any, limit: int = 80) -> str:
    try:
        return _one_line(repr(value), limit)
    except Exception:  # a user type's broken __repr__, an int past Python's 4300-digit str limit
        return f"<unprintable {type(value).__name__}>"


def _checked(reward: Reward, value: Any, where: str) -> float:
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")  # not a Real
    if not (isinstance(value, numbers.Real) or numpy_bool):  # int, float, bool (True = 1.0), numpy, Fraction
        raise RewardError(f"{where}: data.reward={reward.name} returned {_repr(value)} "
                          f"({type(value).__name__}); a reward must be a finite int, float or bool")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise RewardError(f"{where}: data.reward={reward.name} returned {_repr(value)}; "
                          f"a reward must be a finite number")
    return out


def compute_rewards(reward: Reward, completions: list[str], examples: list[dict], where: list[str]) -> list[float]:
    """reward(completions[i], examples[i]) for each i, as floats.

    Args:
        where: where[i] is "file:line" of example i, for the error.
    Raises:
        RewardError: (one line naming reward.name and where[i]) the first reward that raises an
            Exception, or returns a non-number or a non-finite number.
    """
    if not len(completions) == len(examples) == len(where):
        raise ValueError(f"compute_rewards: {len(completions)} completions, {len(examples)} examples, "
                         f"{len(where)} locations; they must be as many")
    out = []
    for completion, example, loc in zip(completions, examples, where):
        try:
            value = reward(completion, example)
        except Exception as e:  # the user's code: any failure becomes one line naming it and the row
            raise RewardError(f"{loc}: data.reward={reward.name} raised {_exception(e)}") from e
        out.append(_checked(reward, value, loc))
    return out
