"""Reward functions: the built-ins on literal cases (the references' own edge cases included), the
safe arithmetic evaluator, MODULE:FUNCTION loading, and every error's exact one-line message."""

from __future__ import annotations

import builtins
import sys
import textwrap
import warnings
from fractions import Fraction

import pytest

from mezo_elastic.errors import ConfigError, RewardError
from mezo_elastic.objectives.rewards import (
    BUILTINS,
    Reward,
    blocks,
    compute_rewards,
    countdown,
    countdown_format,
    exact_match,
    last_number,
    load_reward,
    normalize_answer,
    numeric,
    safe_arithmetic,
    token_f1,
)

ALLOWED = ("a built-in ['countdown', 'exact_match', 'numeric', 'token_f1'] or MODULE:FUNCTION, "
           "a function (completion, example) -> float")


def ans(*answers: str, **fields) -> dict:
    return {"prompt": "q", "answers": list(answers), **fields}


# ---- SQuAD normalisation, exact_match and token_f1 (MeZO large_models/metrics.py) ----

@pytest.mark.parametrize("text, normalised", [
    ("The Cat, sat!", "cat sat"),
    ("  An   apple\tpie ", "apple pie"),
    ("the-end", "theend"),  # punctuation goes before articles: "the-end" is one word
    ("the end", "end"),
    ("theater", "theater"),  # articles only as whole words
    ("Don't", "dont"),
    ("a—b", "—b"),  # ASCII punctuation only: the em dash stays, and is a word boundary for "a"
    ("The.", ""),
])
def test_normalize_answer_is_squads(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize("completion, answers, f1", [
    ("the cat sat", ["a cat sat down"], 0.8),  # p = 1, r = 2/3
    ("x x y", ["x y y"], 2 / 3),  # token counts intersect: 1 x + 1 y
    ("Paris", ["the city of Paris"], 0.5),
    ("Paris", ["the city of Paris", "Paris"], 1.0),  # max over the answers
    ("London", ["Paris"], 0.0),
    ("The.", ["a"], 0.0),  # both empty after normalisation: MeZO gives 0 (SQuAD v2's script gives 1)
    ("", ["Paris"], 0.0),
    ("CANNOTANSWER", ["CANNOTANSWER"], 1.0),
    ("there is no answer", ["no answer"], 0.0),  # answers[0] "no answer": exact match, no partial F1
    ("No answer.", ["no answer"], 1.0),
    ("Paris", ["no answer", "Paris"], 0.0),  # only answers[0] is checked, against itself alone
    ("no answer", ["Paris", "no answer"], 1.0),  # not answers[0]: ordinary F1, max over answers
])
def test_token_f1_is_mezos(completion, answers, f1):
    assert token_f1(completion, ans(*answers)) == pytest.approx(f1, abs=1e-12)


@pytest.mark.parametrize("completion, answers, em", [
    ("The Eiffel Tower.", ["eiffel tower"], 1.0),
    ("Eiffel", ["Eiffel Tower"], 0.0),
    ("Paris", ["London", "paris!"], 1.0),
    ("The.", ["a"], 1.0),  # "" == ""
])
def test_exact_match(completion, answers, em):
    assert exact_match(completion, ans(*answers)) == em


# ---- numeric ----

@pytest.mark.parametrize("text, number", [
    ("5-3", "3"), ("it is -3", "-3"), ("(-4)", "-4"), ("1,234,567", "1234567"), ("1,2,3", "3"),
    ("The answer is 42.", "42"), ("-.5 and 2e3", "2000"), ("$1,000.50", "1000.5"), ("1e-3", "0.001"),
    ("2024-12-01", "1"), ("no digits", None),
])
def test_last_number(text, number):
    got = last_number(text)
    assert (got is None and number is None) or str(got.normalize()) == str(type(got)(number).normalize())


@pytest.mark.parametrize("completion, answer, reward", [
    ("so 3 + 4 = 7", "7", 1.0),
    ("The answer is 1,234.", "1234", 1.0),
    ("-3.50", "-3.5", 1.0),
    ("5-3", "-3", 0.0),
    ("5-3", "3", 1.0),
    ("7 apples, no wait, 8", "7", 0.0),  # the last number counts
    ("no number", "7", 0.0),
    ("2e3", "2,000", 1.0),
    ("0.33", "0.333", 0.0),  # exact decimals, no tolerance
    ("12345678901234567891", "12345678901234567890", 0.0),  # a float tolerance would call these equal
])
def test_numeric(completion, answer, reward):
    assert numeric(completion, ans(answer)) == reward


# ---- countdown (Qiu et al. 2025, VsonicV/es-fine-tuning-paper countdown_grader.py) ----

ROW = ans("98", numbers=[44, 19, 35], target=98)


@pytest.mark.parametrize("completion, reward", [
    ("I add them.</think>\n<answer>44 + 19 + 35</answer>", 0.1 * 1.0 + 1.0),
    ("I add them.</think>\n<answer>44 + 19 + 35</answer>\n", 0.1 * 1.0 + 1.0),  # re's $ allows one final \n
    ("x</think>\n<answer>44 + 19 - 35</answer>", 0.1),  # wrong value
    ("x</think>\n<answer>44 + 44 + 10</answer>", 0.1),  # 44 twice, 19 and 35 missing
    ("x</think>\n<answer>44 + 19</answer>", 0.1),  # each number exactly once: 35 missing
    ("x</think>\n<answer>44 + 19 + 35 + 0</answer>", 0.1),  # and no other number
    ("x</think>\n<answer>44 + 19 + 35 = 98</answer>", 0.1),  # "=" is not an equation character
    ("x</think> <answer>44+19+35</answer>", 0.1 * (0.1 + 0.5) + 1.0),  # no \n: think + answer credit
    ("<answer>44+19+35</answer>", 0.1 * 0.5 + 1.0),  # no </think>
    ("x</think>\n<answer>44+19+35</answer> done", 0.1 * (0.1 + 0.5) + 1.0),  # text after </answer>
    ("x</think>\nthe answer is 44+19+35", 0.1 * 0.1),
    ("x</think>\n<answer>1+2</answer><answer>35+19+44</answer>", 0.1 * 1.0 + 1.0),  # the last answer counts
    ("x</think>\n<answer>35+19+44</answer><answer>1+2</answer>", 0.1),
    ("x</think>\n<answer>  </answer>", 0.1),
    ("", 0.0),
])
def test_countdown(completion, reward):
    assert countdown(completion, ROW) == pytest.approx(reward, abs=1e-12)


@pytest.mark.parametrize("row, equation, answer_reward", [
    (ans("0.5", numbers=[6, 4, 3], target=0.5), "6/(4*3)", 1.0),
    (ans("27.4", numbers=[137, 5], target="27.4"), "137/5", 1.0),  # their dataset's targets are strings
    (ans("2", numbers=[5, 3, 3], target=2), "5/(3-3)", 0.0),  # division by zero: no answer
    (ans("8", numbers=[2, 3], target=8), "2**3", 0.0),  # ** is refused (their eval() accepts it)
    (ans("4", numbers=[8, 2], target=4), "8//2", 0.0),  # and //
    (ans("2", numbers=[1, 2], target=2), "(1)(2)", 0.0),  # a call
    (ans("7", numbers=[7, 1], target=7), "07*1", 0.0),  # leading zero: not Python syntax
    (ans("2", numbers=[3, 5], target=2), "-3+5", 1.0),  # unary minus, as their eval()
    (ans("98", nums=[44, 19, 35], target=98), "44+19+35", 1.0),  # TinyZero's field name
    (ans("98", numbers=[44, 19, 35]), "44+19+35", 1.0),  # no target: answers[0]
    (ans("1", numbers=[1], target=1), "9" * 5000 + "-" + "9" * 5000 + "+1", 0.0),  # too long, no crash
])
def test_countdown_answer(row, equation, answer_reward):
    assert countdown(f"x</think>\n<answer>{equation}</answer>", row) == pytest.approx(0.1 + answer_reward)


def test_countdown_matching_is_the_references_regexes():
    """The linear-time tag matching finds what the reference's regexes find, on random tag soup."""
    import random
    import re

    full = re.compile(r"^<think>.*?<\/think>\n<answer>.*?<\/answer>$", re.DOTALL)
    think, answer = re.compile(r"<think>.*?<\/think>", re.DOTALL), re.compile(r"<answer>(.*?)<\/answer>", re.DOTALL)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "\n", "x", " ", "</think>\n<answer>", "<ans", "wer>"]
    rng = random.Random(0)
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        ref = 1.0 if full.match(text) else (0.1 if think.search(text) else 0.0) + (0.5 if answer.search(text) else 0.0)
        assert countdown_format(text) == ref, text
        assert blocks(text, "<answer>", "</answer>") == answer.findall(text), text


@pytest.mark.parametrize("soup", ["<answer>", "<think>", "<think><answer>", "</think>\n<answer>x</answer>y"])
def test_countdown_is_linear_on_degenerate_text(soup):
    import time

    text = soup * (300_000 // len(soup))  # the regexes take minutes on this (0.5 s at 24k characters)
    t0 = time.perf_counter()
    countdown(text, ROW)
    assert time.perf_counter() - t0 < 5.0


def test_countdown_never_calls_eval(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("eval() was called")
    monkeypatch.setattr(builtins, "eval", boom)
    assert countdown("x</think>\n<answer>44 + 19 + 35</answer>", ROW) == pytest.approx(1.1)


# ---- the safe evaluator ----

@pytest.mark.parametrize("expr, value", [("(1+2)*3/4", 2.25), ("-3+5", 2), ("--3", 3), ("((((1))))", 1),
                                         (" 2.5 * 2 ", 5.0), ("+7", 7)])
def test_safe_arithmetic_values(expr, value):
    assert safe_arithmetic(expr) == value


REFUSED = " is not allowed in an arithmetic expression (numbers, + - * /, parentheses)"


@pytest.mark.parametrize("expr, message", [
    ("x", "Name" + REFUSED),
    ("abs(1)", "Call" + REFUSED),
    ("__import__('os').system('true')", "Call" + REFUSED),
    ("(1).real", "Attribute" + REFUSED),
    ("[1][0]", "Subscript" + REFUSED),
    ("2**3", "Pow" + REFUSED),
    ("9**9**9**9", "Pow" + REFUSED),
    ("10**10**10", "Pow" + REFUSED),
    ("8//2", "FloorDiv" + REFUSED),
    ("8%3", "Mod" + REFUSED),
    ("~1", "Invert" + REFUSED),
    ("1<2", "Compare" + REFUSED),
    ("lambda: 1", "Lambda" + REFUSED),
    ("True + 1", "the constant True" + REFUSED),
    ("'a' * 9", "the constant 'a'" + REFUSED),
    ("1j", "the constant 1j" + REFUSED),
    ("1 2", "not an arithmetic expression (invalid syntax)"),
    ("(" * 300 + "1" + ")" * 300, "not an arithmetic expression (too many nested parentheses)"),
    ("1+" * 4999 + "1", "expression nested too deeply"),
    ("1+" * 5000 + "1", "expression longer than 10000 characters"),
])
def test_safe_arithmetic_refuses(expr, message):
    with pytest.raises(ValueError) as e:
        safe_arithmetic(expr)
    assert str(e.value) == message


def test_safe_arithmetic_is_quiet_on_odd_input():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="IfExp is not allowed"):
            safe_arithmetic("1if 1 else 2")  # Python's parser warns "invalid decimal literal" on this one
    assert caught == []


def test_safe_arithmetic_computes_what_python_computes():
    """On random well-formed expressions (built here from digits, + - * /, unary minus, parentheses),
    the value, int or float, is Python's own, and so is a division by zero."""
    import random

    rng = random.Random(1)

    def expr(depth: int) -> str:
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(["0", "1", "7", "12", "250", "3.5"])
        if rng.random() < 0.15:
            return "-" + expr(depth - 1)
        e = f"{expr(depth - 1)} {rng.choice('+-*/')} {expr(depth - 1)}"
        return f"({e})" if rng.random() < 0.5 else e

    for _ in range(3000):
        e = expr(4)
        try:
            want = eval(e, {"__builtins__": {}}, {})  # noqa: S307 - our own generated arithmetic
        except ZeroDivisionError:
            with pytest.raises(ZeroDivisionError):
                safe_arithmetic(e)
            continue
        got = safe_arithmetic(e)
        assert got == want and type(got) is type(want), e


def test_safe_arithmetic_division_by_zero_is_pythons():
    with pytest.raises(ZeroDivisionError):
        safe_arithmetic("1/(2-2)")


# ---- load_reward ----

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """write(name, source) -> a module importable by `name` from a tmp dir on sys.path."""
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_builtins_load_by_name():
    for name in BUILTINS:
        r = load_reward(name)
        assert isinstance(r, Reward) and r.name == name
    assert load_reward("token_f1")("the cat sat", ans("a cat sat down")) == pytest.approx(0.8)


def test_user_function_loads_and_scores(user_module):
    user_module("my_rewards_ok", """
        class Scorer:
            @staticmethod
            def score(completion, example):
                return float(example["bonus"]) + len(completion)

        def shout(completion, example, scale=1.0):
            return scale * (completion.isupper())
    """)
    r = load_reward("my_rewards_ok:Scorer.score")
    assert r.name == "my_rewards_ok:Scorer.score"
    rows = [ans("x", bonus=2), ans("y", bonus=-1)]
    assert compute_rewards(r, ["ab", ""], rows, ["d.jsonl:1", "d.jsonl:2"]) == [4.0, -1.0]
    shout = load_reward("my_rewards_ok:shout")
    assert compute_rewards(shout, ["YES", "no"], [ans("a"), ans("b")], ["d:1", "d:2"]) == [1.0, 0.0]  # bool: 1.0/0.0


def test_user_function_gets_a_copy_of_the_row(user_module):
    user_module("my_rewards_mutating", """
        def grab(completion, example):
            example["answers"].append("again")
            return len(example["answers"])
    """)
    row = ans("a")
    grab = load_reward("my_rewards_mutating:grab")
    assert compute_rewards(grab, ["x", "y"], [row, row], ["d:1", "d:1"]) == [2.0, 2.0]
    assert row["answers"] == ["a"]


@pytest.mark.parametrize("spec, message", [
    ("f1", f"data.reward='f1' is not allowed; choose {ALLOWED}"),
    ("", f"data.reward='' is not allowed; choose {ALLOWED}"),
    ("Token_F1", f"data.reward='Token_F1' is not allowed; choose {ALLOWED}"),
    (None, f"data.reward=None is not allowed; choose {ALLOWED}"),
    (["token_f1"], f"data.reward=['token_f1'] is not allowed; choose {ALLOWED}"),
    ("a:b:c", "data.reward='a:b:c' is not MODULE:FUNCTION (dotted names, one colon, e.g. my_rewards:score); "
              f"choose {ALLOWED}"),
    (":score", "data.reward=':score' is not MODULE:FUNCTION (dotted names, one colon, e.g. my_rewards:score); "
               f"choose {ALLOWED}"),
    ("my_rewards:", "data.reward='my_rewards:' is not MODULE:FUNCTION (dotted names, one colon, "
                    f"e.g. my_rewards:score); choose {ALLOWED}"),
    ("my rewards:score", "data.reward='my rewards:score' is not MODULE:FUNCTION (dotted names, one colon, "
                         f"e.g. my_rewards:score); choose {ALLOWED}"),
    ("path/to.py:score", "data.reward='path/to.py:score' is not MODULE:FUNCTION (dotted names, one colon, "
                         f"e.g. my_rewards:score); choose {ALLOWED}"),
    ("no_such_module_xyz:score", "data.reward='no_such_module_xyz:score': module 'no_such_module_xyz' cannot be "
                                 "imported (ModuleNotFoundError: No module named 'no_such_module_xyz'); "
                                 "is it on PYTHONPATH?"),
])
def test_load_reward_errors(spec, message):
    with pytest.raises(ConfigError) as e:
        load_reward(spec)
    assert str(e.value) == message


@pytest.mark.parametrize("m, source, attr, message", [
    ("my_rewards_raising", "raise RuntimeError('boom\\n at import')", "score",
     "data.reward='{m}:score': module '{m}' cannot be imported (RuntimeError: boom at import); is it on PYTHONPATH?"),
    ("my_rewards_syntax", "def score(c, e) return 1.0", "score",
     "data.reward='{m}:score': module '{m}' cannot be imported (SyntaxError: expected ':' ({m}.py, line 1)); "
     "is it on PYTHONPATH?"),
    ("my_rewards_typo", "def score(c, e): return 1.0", "scor",
     "data.reward='{m}:scor': module '{m}' has no attribute 'scor'"),
    ("my_rewards_class", "class A: pass", "A.score",
     "data.reward='{m}:A.score': module '{m}' has no attribute 'A.score'"),
    ("my_rewards_const", "SCORE = 3", "SCORE",
     "data.reward='{m}:SCORE' is not callable (got int 3); it must be a function (completion, example) -> float"),
    ("my_rewards_arity", "def score(completion): return 1.0", "score",
     "data.reward='{m}:score' cannot be called as f(completion, example): too many positional arguments"),
    ("my_rewards_kwonly", "def score(completion, example, *, scale): return 1.0", "score",
     "data.reward='{m}:score' cannot be called as f(completion, example): missing a required argument: 'scale'"),
])
def test_load_reward_user_errors(user_module, m, source, attr, message):
    user_module(m, source)
    with pytest.raises(ConfigError) as e:
        load_reward(f"{m}:{attr}")
    assert str(e.value) == message.format(m=m)


# ---- compute_rewards: what a reward returns, and a reward that fails ----

NOT_A_NUMBER = "a reward must be a finite int, float or bool"


@pytest.mark.parametrize("body, message", [
    ("raise ValueError('bad\\n\\n  row')", "d.jsonl:7: data.reward={m}:f raised ValueError: bad row"),
    ("raise ValueError()", "d.jsonl:7: data.reward={m}:f raised ValueError"),
    ("class E(Exception):\n        def __str__(self): raise OSError\n    raise E()", "d.jsonl:7: data.reward={m}:f raised E"),
    ("return example['missing']", "d.jsonl:7: data.reward={m}:f raised KeyError: 'missing'"),
    ("return '1.0'", "d.jsonl:7: data.reward={m}:f returned '1.0' (str); " + NOT_A_NUMBER),
    ("return None", "d.jsonl:7: data.reward={m}:f returned None (NoneType); " + NOT_A_NUMBER),
    ("return [1.0]", "d.jsonl:7: data.reward={m}:f returned [1.0] (list); " + NOT_A_NUMBER),
    ("return 'x' * 500", "d.jsonl:7: data.reward={m}:f returned '" + "x" * 76 + "... (str); " + NOT_A_NUMBER),
    ("class R:\n        def __repr__(self): raise OSError\n    return R()",
     "d.jsonl:7: data.reward={m}:f returned <unprintable R> (R); " + NOT_A_NUMBER),
    ("return float('nan')", "d.jsonl:7: data.reward={m}:f returned nan; a reward must be a finite number"),
    ("return -float('inf')", "d.jsonl:7: data.reward={m}:f returned -inf; a reward must be a finite number"),
    ("return 10 ** 400", "d.jsonl:7: data.reward={m}:f returned " + ("1" + "0" * 79)[:77] + "...; "
                         "a reward must be a finite number"),
    ("return 10 ** 5000", "d.jsonl:7: data.reward={m}:f returned <unprintable int>; a reward must be a finite number"),
])
def test_a_failing_reward_is_one_line_naming_it_and_the_row(user_module, body, message):
    m = user_module("my_rewards_fail", f"def f(completion, example):\n    {body}\n")
    reward = load_reward(f"{m}:f")
    good = ans("a")
    with pytest.raises(RewardError) as e:
        compute_rewards(reward, ["bad"], [good], ["d.jsonl:7"])
    assert str(e.value) == message.format(m=m)
    assert "\n" not in str(e.value)


def test_the_first_failing_row_is_named(user_module):
    m = user_module("my_rewards_second", "def f(completion, example):\n    return 1 / len(completion)\n")
    with pytest.raises(RewardError) as e:
        compute_rewards(load_reward(f"{m}:f"), ["ok", "", ""], [ans("a")] * 3, ["d.jsonl:1", "d.jsonl:2", "d.jsonl:3"])
    assert str(e.value) == f"d.jsonl:2: data.reward={m}:f raised ZeroDivisionError: division by zero"


def test_number_types_are_accepted_as_floats(user_module):
    m = user_module("my_rewards_types", "from fractions import Fraction\n"
                    "def f(c, e):\n    return {'i': 3, 'b': False, 'q': Fraction(1, 4), 'f': -0.5}[c]\n")
    got = compute_rewards(load_reward(f"{m}:f"), ["i", "b", "q", "f"], [ans("a")] * 4, ["d:1"] * 4)
    assert got == [3.0, 0.0, float(Fraction(1, 4)), -0.5] and all(type(x) is float for x in got)


def test_numpy_scalars_are_numbers_and_a_tensor_is_not(user_module):
    pytest.importorskip("numpy")
    m = user_module("my_rewards_numpy", "import numpy as np\nimport torch\n"
                    "def f(c, e):\n    return {'f32': np.float32(0.5), 'i64': np.int64(2), 'b': np.bool_(True),"
                    " 't': torch.tensor(1.0)}[c]\n")
    reward = load_reward(f"{m}:f")
    assert compute_rewards(reward, ["f32", "i64", "b"], [ans("a")] * 3, ["d:1"] * 3) == [0.5, 2.0, 1.0]
    with pytest.raises(RewardError) as e:
        compute_rewards(reward, ["t"], [ans("a")], ["d:4"])
    assert str(e.value) == f"d:4: data.reward={m}:f returned tensor(1.) (Tensor); " + NOT_A_NUMBER


@pytest.mark.parametrize("spec, row, message", [
    ("numeric", ans("seven"), "d.jsonl:3: data.reward=numeric raised ValueError: answers[0]='seven' is not a number "
                              "(numeric needs e.g. '42', '-3.5', '1,000')"),
    ("token_f1", {"prompt": "q"}, "d.jsonl:3: data.reward=token_f1 raised ValueError: the row's 'answers' must be "
                                  "a non-empty list of strings (got None)"),
    ("countdown", ans("98", target=98), "d.jsonl:3: data.reward=countdown raised ValueError: the row's 'numbers' "
                                        "(or 'nums') must be a non-empty list of integers >= 0 (got None)"),
    ("countdown", ans("98", numbers=[1, "2"]), "d.jsonl:3: data.reward=countdown raised ValueError: the row's "
                                               "'numbers' (or 'nums') must be a non-empty list of integers >= 0 "
                                               "(got [1, '2'])"),
    ("countdown", ans("98", numbers=[1, 2], target="ninety"), "d.jsonl:3: data.reward=countdown raised ValueError: "
                                                              "the row's 'target' (else answers[0]) must be a "
                                                              "number (got 'ninety')"),
])
def test_a_bad_row_for_a_builtin_is_one_line(spec, row, message):
    with pytest.raises(RewardError) as e:
        compute_rewards(load_reward(spec), ["x"], [row], ["d.jsonl:3"])
    assert str(e.value) == message


def test_mismatched_lengths_are_a_caller_bug():
    with pytest.raises(ValueError, match="2 completions, 1 examples, 1 locations"):
        compute_rewards(load_reward("exact_match"), ["a", "b"], [ans("a")], ["d:1"])


# ---- docs/rewards.md quotes the messages word for word ----

def test_docs_quote_every_message(user_module, monkeypatch):
    from helpers import REPO

    doc = (REPO / "docs" / "rewards.md").read_text()
    produced = []
    for spec in ("f1", "path/to.py:score", "my_reward:score"):
        with pytest.raises(ConfigError) as e:
            load_reward(spec)
        produced.append(str(e.value))
    user_module("my_rewards", """
        import torch
        SCORE = 3
        def one_arg(completion): return 1.0
        def score(completion, example): return float(example["answer"] == completion)
        def maybe(completion, example): return None
        def as_tensor(completion, example): return torch.tensor(1.0)
        def ratio(completion, example): return float("nan")
    """)
    for spec in ("my_rewards:scor", "my_rewards:SCORE", "my_rewards:one_arg"):
        with pytest.raises(ConfigError) as e:
            load_reward(spec)
        produced.append(str(e.value))
    cases = [(f"my_rewards:{f}", ans("a")) for f in ("score", "maybe", "as_tensor", "ratio")]
    cases += [("numeric", ans("seven")), ("token_f1", {"prompt": "q"}), ("countdown", ans("98", target=98)),
              ("countdown", ans("98", numbers=[1, 2], target="ninety"))]
    for spec, row in cases:
        where = "train.jsonl:3" if ":" not in spec else "train.jsonl:7"
        with pytest.raises(RewardError) as e:
            compute_rewards(load_reward(spec), ["x"], [row], [where])
        produced.append(str(e.value))
    missing = [m for m in produced if f"    {m}\n" not in doc]
    assert not missing, "docs/rewards.md does not quote:\n" + "\n".join(missing)


# ---- what the user sees: `python -m mezo_elastic.train` with a bad reward ----

@pytest.mark.integration
@pytest.mark.parametrize("spec, line", [
    ("my_raising_reward:score", r"mezo_elastic: error \(rank 0\): \S+/task-reward/(train|eval)\.jsonl:\d+: "
                                r"data\.reward=my_raising_reward:score raised KeyError: 'answer' \(every row is "
                                r"checked before training: data\.reward is called on it with an empty completion\)"),
    ("my_raising_reward:scor", r"mezo_elastic: error \(rank 0\): data\.reward='my_raising_reward:scor': "
                               r"module 'my_raising_reward' has no attribute 'scor'"),
])
def test_train_stops_with_one_line_naming_the_reward(tmp_path, spec, line):
    import os
    import re

    from helpers import FAST, REPO, train

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "my_raising_reward.py").write_text("def score(completion, example):\n    return example['answer']\n")
    res = train(tmp_path / "run", "--data.objective=reward", f"--data.reward={spec}", "--train.steps=2", *FAST,
                check=False, environ={"PYTHONPATH": f"{REPO}{os.pathsep}{mods}"})
    errors = [ln for ln in res.stderr.splitlines() if "INFO" not in ln]
    assert res.returncode == 1 and len(errors) == 1 and re.fullmatch(line, errors[0]), res.stderr[-3000:]
