"""MeZO's tasks: every template's strings against MeZO's, written out by hand from its templates.py
(encode/verbalize) and tasks.py (candidates); the three input formats; MeZO's sampling; the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, env

from mezo_elastic.config import DataConfig
from mezo_elastic.data.tasks import TASKS, canonical_name
from mezo_elastic.data.tasks.protocol import (
    Protocol,
    eval_indices,
    render_rows,
    sample_subset,
    train_dev_indices,
)
from mezo_elastic.errors import ConfigError, DataError

MEZO = Protocol.of(DataConfig())  # the config's defaults: MeZO's 1000 / 500 (100 for CB, Copa) / 1000, seed 0

# One example per task in the dataset's own published HF schema, and the row MeZO's template makes of
# it. The expected strings are MeZO's encode (prompt) and verbalize minus encode (candidates), derived
# by reading large_models/templates.py, after encode_prompt's .strip(' ').
FIXTURES = {
    "SST2": ({"sentence": "a gripping , funny film ", "label": 1, "idx": 0},
             {"prompt": "a gripping , funny film It was", "candidates": [" terrible", " great"], "label": 1}),
    "RTE": ({"premise": "The cat sat.", "hypothesis": "A cat sat.", "idx": 0, "label": 1},
            {"prompt": "The cat sat.\nDoes this mean that \"A cat sat.\" is true? Yes or No?\n",
             "candidates": ["Yes", "No"], "label": 1}),
    "CB": ({"premise": "It rained all day.", "hypothesis": "The ground is wet", "idx": 0, "label": 2},
           {"prompt": "Suppose It rained all day. Can we infer that \"The ground is wet\"? Yes, No, or Maybe?\n",
            "candidates": ["Yes", "No", "Maybe"], "label": 2}),
    "BoolQ": ({"question": "is the sky blue", "answer": False, "passage": "The sky is grey."},
              {"prompt": "The sky is grey. Is the sky blue?\n", "candidates": ["Yes", "No"], "label": 1}),
    "WSC": ({"text": "Mark told Pete many lies. He fell for it.", "span1_index": 2, "span2_index": 5,
             "span1_text": "Pete", "span2_text": "He", "idx": 0, "label": 1},
            {"prompt": "Mark told Pete many lies. He fell for it.\nIn the previous sentence, does the pronoun "
                       "\"he\" refer to Pete? Yes or No?\n", "candidates": ["No", "Yes"], "label": 1}),
    "WIC": ({"word": "bank", "sentence1": "He sat on the bank.", "sentence2": "She robbed the bank.",
             "start1": 14, "start2": 15, "end1": 18, "end2": 19, "idx": 0, "label": 0},
            {"prompt": "Does the word \"bank\" have the same meaning in these two sentences? Yes, No?\n"
                       "He sat on the bank.\nShe robbed the bank.\n", "candidates": ["No", "Yes"], "label": 0}),
    "MultiRC": ({"paragraph": "Sam has two dogs.", "question": "How many dogs?", "answer": "Two",
                 "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 1},
                {"prompt": "Sam has two dogs.\nQuestion: How many dogs?\nI found this answer \"Two\". "
                           "Is that correct? Yes or No?\n", "candidates": ["No", "Yes"], "label": 1}),
    "Copa": ({"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
              "choice2": "I got a hole in my sock.", "question": "cause", "idx": 0, "label": 0},
             {"prompt": "The man broke his toe because",
              "candidates": [" he dropped a hammer on his foot.", " I got a hole in my sock."], "label": 0}),
    "ReCoRD": ({"passage": "Obama met Merkel in Berlin.\n@highlight\nTalks went well",
                "query": "@placeholder said the talks went well.", "entities": ["Obama", "Merkel", "Berlin"],
                "entity_spans": {"text": ["Obama", "Merkel", "Berlin"], "start": [0, 10, 20], "end": [5, 16, 26]},
                "answers": ["Merkel", "Berlin"], "idx": {"passage": 0, "query": 0}},
               {"prompt": "Obama met Merkel in Berlin.\n- Talks went well\n-",
                "candidates": [" Obama said the talks went well.", " Merkel said the talks went well.",
                               " Berlin said the talks went well."], "label": 1, "correct": [1, 2]}),
    "SQuAD": ({"id": "5733be28", "title": "Berlin", "context": "Berlin is the capital of Germany.",
               "question": " What is Berlin? ",
               "answers": {"text": ["the capital of Germany", "capital"], "answer_start": [10, 14]}},
              {"prompt": "Title: Berlin\nContext: Berlin is the capital of Germany.\nQuestion: What is Berlin?\n"
                         "Answer:", "answers": ["the capital of Germany", "capital"]}),
    "DROP": ({"section_id": "nfl_1", "query_id": "q1", "passage": "The Bears scored 3 touchdowns.",
              "question": "How many touchdowns?", "answers_spans": {"spans": ["3"], "types": ["number"]}},
             {"prompt": "Passage: The Bears scored 3 touchdowns.\nQuestion: How many touchdowns?\nAnswer:",
              "answers": ["3"]}),
}
# MeZO's full verbalize strings for a few, as the model sees them (prompt + candidate).
VERBALIZED = {
    "SST2": "a gripping , funny film It was great",
    "CB": "Suppose It rained all day. Can we infer that \"The ground is wet\"? Yes, No, or Maybe?\nMaybe",
    "Copa": "The man broke his toe because he dropped a hammer on his foot.",
    "ReCoRD": "Obama met Merkel in Berlin.\n- Talks went well\n- Merkel said the talks went well.",
}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_fixtures_cover_every_task():
    assert set(FIXTURES) == set(TASKS)


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_render_equals_mezo_template_strings(tmp_path, task):
    example, expected = FIXTURES[task]
    rows = render_rows(task, _jsonl(tmp_path / "t.jsonl", [example]), "all", MEZO)
    assert rows == [expected]
    if task in VERBALIZED:
        row = rows[0]
        assert row["prompt"] + row["candidates"][row["label"] if task != "CB" else 2] == VERBALIZED[task]


def test_copa_effect_and_superglue_boolq_schema(tmp_path):
    copa = {"premise": "It was cold", "choice1": "We lit a fire.", "choice2": "I went swimming.",
            "question": "effect", "idx": 1, "label": 0}
    assert render_rows("copa", _jsonl(tmp_path / "c.jsonl", [copa]), "all", MEZO)[0] == {
        "prompt": "It was cold so", "candidates": [" we lit a fire.", " I went swimming."], "label": 0}
    sg = {"question": "is water wet?", "passage": "Water is wet.", "idx": 0, "label": 1}  # super_glue/boolq
    assert render_rows("BOOLQ", _jsonl(tmp_path / "b.jsonl", [sg]), "all", MEZO)[0] == {
        "prompt": "Water is wet. Is water wet?\n", "candidates": ["Yes", "No"], "label": 0}


def test_record_with_one_entity_still_renders(tmp_path):
    ex = {"passage": "Paris is big.", "query": "@placeholder is big.", "entities": ["Paris"], "answers": ["Paris"]}
    assert render_rows("record", _jsonl(tmp_path / "r.jsonl", [ex]), "all", MEZO) == [
        {"prompt": "Paris is big.\n-", "candidates": [" Paris is big."], "label": 0, "correct": [0]}]


def test_parquet_and_save_to_disk_inputs_give_the_same_rows(tmp_path):
    import datasets

    example, expected = FIXTURES["SQuAD"]
    ds = datasets.Dataset.from_list([example, example])
    ds.to_parquet(str(tmp_path / "train.parquet"))
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    ds.save_to_disk(str(tmp_path / "one"))
    for path in (tmp_path / "train.parquet", tmp_path / "dd", tmp_path / "one"):
        assert render_rows("squad", str(path), "all", MEZO) == [expected, expected]
    assert render_rows("squad", str(tmp_path / "dd"), "eval", MEZO) == [expected]  # its 'validation'


def test_sampling_is_mezos():
    """MeZO's Dataset.sample_subset under utils.temp_seed, run as it is written there."""
    def mezo_sample_subset(n, seed, num):
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            return np.random.permutation(n).tolist()[:num]
        finally:
            np.random.set_state(state)

    assert sample_subset(10, 10, 0) == [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
    for n, num, seed in ((67349, 1500, 0), (250, 1100, 0), (3000, 1000, 3)):
        assert sample_subset(n, num, seed) == mezo_sample_subset(n, seed, num)
    # run.py: train+dev sampled together, dev = the last num_dev; eval from the validation split.
    perm = mezo_sample_subset(5000, 0, 1500)
    assert train_dev_indices(5000, "SST2", MEZO) == (perm[:1000], perm[1000:])
    cb_train, cb_dev = train_dev_indices(250, "CB", MEZO)  # mezo.sh: DEV=100 for CB and Copa
    assert (len(cb_train), len(cb_dev)) == (150, 100) and cb_train + cb_dev == mezo_sample_subset(250, 0, 250)
    assert eval_indices(872, MEZO) == mezo_sample_subset(872, 0, 1000)
    assert eval_indices(5, Protocol(1000, -1, 0, 0)) == [0, 1, 2, 3, 4]
    # a split too small for MeZO's 500 dev rows: num_dev=-1 scales 1000:500 to it (an explicit one is refused)
    rte_train, rte_dev = train_dev_indices(400, "RTE", MEZO)
    assert (len(rte_train), len(rte_dev)) == (267, 133) and rte_train + rte_dev == mezo_sample_subset(400, 0, 400)
    with pytest.raises(DataError, match="data.num_dev=500"):
        train_dev_indices(400, "RTE", Protocol(1000, 500, 1000, 0))


def test_protocol_splits_of_a_file(tmp_path):
    rows = [{"sentence": f"s{i}", "label": i % 2, "idx": i} for i in range(30)]
    path = _jsonl(tmp_path / "sst2.jsonl", rows)
    p = Protocol(num_train=10, num_dev=5, num_eval=4, seed=0)
    perm = sample_subset(30, 30, 0)
    assert [r["prompt"] for r in render_rows("sst2", path, "train", p)] == [f"s{i} It was" for i in perm[:10]]
    assert [r["prompt"] for r in render_rows("sst2", path, "dev", p)] == [f"s{i} It was" for i in perm[10:15]]
    assert [r["prompt"] for r in render_rows("sst2", path, "eval", p)] == [f"s{i} It was" for i in perm[:4]]


@pytest.mark.parametrize("task, example, words", [
    ("SST2", {"text": "x", "label": 0}, ["reads the fields", "missing ['sentence']"]),
    ("CB", {"premise": "a", "hypothesis": "b", "label": -1}, ["row 0", "label", "-1", "validation split"]),
    ("ReCoRD", {"passage": "p", "query": "@placeholder q", "entities": ["A", "B"], "answers": ["C"]},
     ["row 0", "none of the answers"]),
])
def test_bad_examples_name_file_row_and_field(tmp_path, task, example, words):
    with pytest.raises(DataError) as e:
        render_rows(task, _jsonl(tmp_path / "bad.jsonl", [example]), "all", MEZO)
    for w in words:
        assert w in str(e.value)


def test_task_names_any_case_and_config_checks():
    from mezo_elastic.config import parse_args

    assert canonical_name("sst2") == "SST2" and canonical_name("RECORD") == "ReCoRD" and canonical_name("") == ""
    cfg = parse_args(["--data.task=multirc", "--data.objective=classification", "--data.path=x"])
    assert (cfg.data.task, cfg.data.num_train, cfg.data.num_dev, cfg.data.num_eval, cfg.data.sample_seed) == (
        "MultiRC", 1000, -1, 1000, 0)
    # a task sets the objective (and the reward) it implies when they are not given (issue 22, item 13)
    implied = [parse_args(["--data.task=" + t, "--data.path=x"]).data for t in ("wsc", "DROP", "squad")]
    assert [(d.objective, d.reward) for d in implied] == [("classification", "exact_match"),
                                                          ("reward", "token_f1"), ("reward", "token_f1")]
    for argv, words in ((["--data.task=wsc", "--data.objective=lm", "--data.path=x"],
                         ["data.task=WSC", "data.objective=classification", "leave data.objective out"]),
                        (["--data.task=DROP", "--data.objective=classification", "--data.path=x"],
                         ["data.task=DROP", "data.objective=reward"]),
                        (["--data.task=squad", "--data.reward=exact_match", "--data.path=x"],
                         ["data.task=SQuAD", "data.reward=token_f1", "'exact_match'"]),
                        (["--data.task=sst-2"], ["'sst-2'", "SST2"])):
        with pytest.raises(ConfigError) as e:
            parse_args(argv)
        for w in words:
            assert w in str(e.value)


def test_verbatim_tokenize_takes_mezos_option_tokens():
    """prompt + candidate as one text; the candidate's tokens are those after the prompt's (CB's '\\nYes')."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mezo_elastic.data.jsonl import tokenize

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "Maybe?": 1, "Yes": 2, "No": 3}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    row = {"prompt": "Maybe?\n", "candidates": ["Yes", "No"], "label": 1, "correct": [1]}
    ex = tokenize([row], tok, "classification", 16, verbatim=True)[0]
    assert ex.prompt_ids == (1,) and ex.candidates == ((2,), (3,)) and ex.correct == (1,)


def test_render_cli_prints_one_json_object_a_line(tmp_path):
    example, expected = FIXTURES["CB"]
    path = _jsonl(tmp_path / "cb.jsonl", [example] * 3)
    r = subprocess.run([sys.executable, "-m", "mezo_elastic.tasks", "render", "cb", "--path", path, "--n", "2"],
                       env=env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [expected, expected]
    bad = subprocess.run([sys.executable, "-m", "mezo_elastic.tasks", "render", "CB", "--path", str(tmp_path / "no")],
                         env=env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr


def test_tokens_are_mezos_for_every_classification_task(tmp_path):
    """With a byte-level BPE tokenizer (GPT-2/OPT's kind, trained here on the fixtures' text), the tokens
    of prompt + candidate are MeZO's encoding of its verbalize string, and the candidate's tokens are its
    option tokens (utils.encode_prompt: option_len = len(encode(verbalized)) - len(encode(encoded)))."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    from mezo_elastic.data.jsonl import tokenize

    rows = {t: render_rows(t, _jsonl(tmp_path / f"{t}.jsonl", [ex]), "all", MEZO)[0]
            for t, (ex, _) in FIXTURES.items() if not TASKS[t].generation}
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    texts = [r["prompt"] + c for r in rows.values() for c in r["candidates"]]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    core.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 0)])  # OPT's BOS
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="</s>")
    for task, row in rows.items():
        ex = tokenize([row], tok, "classification", 4096, verbatim=True)[0]
        encoded = tok.encode(row["prompt"])
        for cand, ids in zip(row["candidates"], ex.candidates):
            verbalized = tok.encode(row["prompt"] + cand)
            option_len = len(verbalized) - len(encoded)
            assert ids == tuple(verbalized[-option_len:]), task
            assert ex.prompt_ids + ids == tuple(verbalized), task
        assert tok.decode(ex.prompt_ids + ex.candidates[ex.label], skip_special_tokens=True) == \
            row["prompt"] + row["candidates"][row["label"]]
