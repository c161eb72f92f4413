import json

import pytest

from mezo_elastic.data.jsonl import BatchSchedule, rank_slice, read_jsonl, tokenize
from mezo_elastic.errors import DataError


def _write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


@pytest.mark.parametrize("objective, line, words", [
    ("lm", '{"prompt": "a"}', ["d.jsonl:2", "completion"]),
    ("lm", '{"prompt": 3, "completion": "x"}', ["d.jsonl:2", "prompt"]),
    ("lm", "{not json", ["d.jsonl:2", "not valid JSON"]),
    ("classification", '{"prompt": "a", "candidates": ["x"], "label": 0}', ["d.jsonl:2", "candidates", ">= 2"]),
    ("classification", '{"prompt": "a", "candidates": ["x", "y"], "label": 2}', ["d.jsonl:2", "label", "[0, 2)"]),
])
def test_malformed_line_names_file_line_and_field(tmp_path, objective, line, words):
    good = json.dumps({"prompt": "p", "completion": "c", "candidates": ["a", "b"], "label": 1})
    with pytest.raises(DataError) as e:
        read_jsonl(_write(tmp_path, [good, line]), objective)
    for w in words:
        assert w in str(e.value)


def test_an_empty_prompt_under_a_tokenizer_without_bos_is_an_error():
    """Nothing would precede the first completion token: one clear error, not a silently wrong loss."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "x": 2, "y": 3}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")  # no BOS added
    good = {"prompt": "a", "candidates": ["x", "y"], "label": 0}
    assert tokenize([good], tok, "classification", 16)[0].prompt_ids == (1,)
    with pytest.raises(DataError, match=r"example 1: prompt '' has no tokens"):
        tokenize([good, {**good, "prompt": ""}], tok, "classification", 16)


def test_missing_file():
    with pytest.raises(DataError, match="does not exist"):
        read_jsonl("/nonexistent/x.jsonl", "lm")


def test_global_batches_are_a_pure_function_of_seed_and_step():
    a, b = BatchSchedule(100, 16, seed=5), BatchSchedule(100, 16, seed=5)
    assert [a.global_batch(t) for t in range(20)] == [b.global_batch(t) for t in reversed(range(20))][::-1]
    assert a.global_batch(3) != BatchSchedule(100, 16, seed=6).global_batch(3)
    # an epoch is a permutation: every example once
    flat = sum((a.global_batch(t) for t in range(25)), [])
    assert sorted(flat[:100]) == list(range(100))


def test_rank_slices_cover_the_global_batch_whatever_the_world_size():
    batch = list(range(17))
    for world in (1, 2, 3, 5):
        parts = [rank_slice(batch, r, world) for r in range(world)]
        assert sum(parts, []) == batch
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
