"""Which config keys a resume may change (docs/elastic.md's table): run.json's trajectory against a new config."""

from __future__ import annotations

import dataclasses

import pytest

from mezo_elastic.config import SECTIONS, Config, parse_args
from mezo_elastic.training.resume import TRAJECTORY_KEYS, _get, trajectory_diff
from test_troubleshooting_doc import assert_quoted


def _saved(argv: list[str]) -> tuple[dict, dict]:
    """(trajectory, config) as run.json records them for a run launched with `argv`."""
    cfg = parse_args(argv)
    return {k: _get(cfg, k) for k in TRAJECTORY_KEYS}, cfg.to_dict()


@pytest.mark.parametrize("flag, words", [
    ("--model.dtype=bfloat16", "model.dtype: 'float32' -> 'bfloat16'"),
    ("--model.sglang_load_format=dummy", "model.sglang_load_format: 'auto' -> 'dummy'"),
    ("--data.max_length=16", "data.max_length: 63 -> 16"),
    ("--mezo.grad_clip=1.0", "mezo.grad_clip: 0.0 -> 1.0"),
    ("--mezo.master_weights=on", "mezo.master_weights: 'auto' -> 'on'"),  # fp32: auto is off
    ("--mezo.distribution=rademacher32", "mezo.distribution: 'gaussian' -> 'rademacher32' (the run was made with "
                                         "it: set --mezo.distribution=gaussian to continue it)"),
])
def test_a_key_that_shapes_the_trajectory_is_named(flag, words):
    before, config = _saved([])
    assert trajectory_diff(before, parse_args([flag]), config) == [words]


@pytest.mark.parametrize("flag", [
    "--model.backend=sglang", "--model.device=cpu", "--data.micro_batch=3", "--data.eval_examples=8",
    "--data.share_prompt=false", "--train.eval_every=1", "--train.log_every=1", "--train.output_dir=elsewhere",
    "--mezo.chunk_elems=1000", "--mezo.fold_next_perturbation=false", "--mezo.max_nonfinite=0",
    "--checkpoint.every=1", "--dist.timeout_s=5", "--train.steps=7", "--mezo.min_lr_ratio=0.5",
])
def test_a_key_that_does_not_shape_it_may_change(flag):
    before, config = _saved([])
    assert trajectory_diff(before, parse_args([flag]), config) == []


def test_conditional_keys_count_where_they_act():
    before, config = _saved(["--model.dtype=bfloat16", "--mezo.schedule=cosine"])
    # master weights by what they resolve to: auto is on in bf16
    assert trajectory_diff(before, parse_args(["--model.dtype=bfloat16", "--mezo.schedule=cosine",
                                               "--mezo.master_weights=on"]), config) == []
    assert trajectory_diff(before, parse_args(["--model.dtype=bfloat16", "--mezo.schedule=cosine",
                                               "--mezo.master_weights=off"]), config) == [
        "mezo.master_weights: 'auto' -> 'off'"]
    # a decaying schedule spans train.steps and ends at lr * min_lr_ratio
    diff = trajectory_diff(before, parse_args(["--model.dtype=bfloat16", "--mezo.schedule=cosine",
                                               "--train.steps=900", "--mezo.min_lr_ratio=0.1"]), config)
    assert diff == ["mezo.min_lr_ratio: 0.0 -> 0.1",
                    "train.steps: 600 -> 900 (a cosine lr schedule decays over train.steps)"]


def test_a_run_json_from_before_a_key_reads_it_from_its_config():
    """Runs recorded before dtype (and the others added in issue 30) were trajectory keys keep the value their
    whole config recorded: a bf16 run resumed in fp32 is refused, as is a run from today."""
    before, config = _saved(["--model.dtype=bfloat16"])
    for k in ("model.dtype", "data.max_length", "mezo.grad_clip", "mezo.min_lr_ratio", "mezo.master_weights",
              "model.sglang_load_format", "train.steps"):
        del before[k]
    assert trajectory_diff(before, parse_args([]), config) == ["model.dtype: 'bfloat16' -> 'float32'"]
    assert trajectory_diff(before, parse_args(["--model.dtype=bfloat16"]), config) == []


def test_every_config_key_is_decided_in_docs():
    """docs/elastic.md's table names every key of the config once, and says 'yes' exactly for TRAJECTORY_KEYS
    (model.path and the data files are compared by content or path, not as keys)."""
    from helpers import REPO

    doc = (REPO / "docs" / "elastic.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0].strip("`")] = cells[1]
    keys = {"seed"} | {f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))}
    assert keys <= set(rows), sorted(keys - set(rows))
    shaping = {k for k in keys if rows[k].startswith("yes")}
    assert shaping - {"model.path", "data.path", "data.eval_path"} == set(TRAJECTORY_KEYS)


def test_data_content_hash_and_compare(tmp_path):
    from mezo_elastic.training import data_record

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "train").mkdir(parents=True)
        (d / "train" / "data-00000-of-00001.arrow").write_bytes(b"rows")
        (d / "dataset_dict.json").write_text("{}")
    (b / "train" / "cache-1234.arrow").write_bytes(b"a cache")  # datasets' own: not the data
    assert data_record.content_sha256(a) == data_record.content_sha256(b)
    rec = data_record.describe({"train": (str(a), str(a)), "eval": (str(a), str(a))})
    now = data_record.describe({"train": (str(b), str(b)), "eval": ("", "")})
    diffs, moves = data_record.compare(rec, now, str)
    assert moves == [f"data.path={b} has the content the run recorded at {a} (sha256 {rec['train']['sha256'][:12]}...)"]
    assert diffs == [f"data.eval_path: the run recorded {a} (sha256 {rec['eval']['sha256'][:12]}...), this launch "
                     f"gives no eval file"]
    assert data_record.compare(None, now, str) == ([], [])  # a run from before the hashes


def test_a_run_made_with_the_old_lr_default_is_told_how_to_continue():
    """An lr left out follows the estimator since 2026-12-07 (fzoo: FZOO's 1e-5): a fzoo run made at the old
    default, 1e-6, is refused on a resume that leaves lr out, with the flag that continues it."""
    fzoo = ["--model.path=/models/smol.gguf", "--mezo.estimator=fzoo", "--mezo.perturbations=8"]
    before, config = _saved([*fzoo, "--mezo.lr=1e-6"])
    diff = trajectory_diff(before, parse_args(fzoo), config)
    assert diff == ["mezo.lr: 1e-06 -> 1e-05 (the run was made with it: set --mezo.lr=1e-06 to continue it)"]
    assert_quoted(diff[0])
    assert trajectory_diff(before, parse_args([*fzoo, "--mezo.lr=1e-6"]), config) == []


def test_a_run_made_before_the_estimators_own_defaults_is_told_how_to_continue():
    """fzoo's z left out was gaussian before 2026-12-07 (now rademacher, FZOO's); zo_muon's population 1 (now 4)."""
    fzoo = ["--model.path=/models/smol.gguf", "--mezo.estimator=fzoo", "--mezo.perturbations=8", "--mezo.lr=1e-5"]
    before, config = _saved([*fzoo, "--mezo.distribution=gaussian"])
    assert trajectory_diff(before, parse_args(fzoo), config) == [
        "mezo.distribution: 'gaussian' -> 'rademacher' (the run was made with it: set --mezo.distribution=gaussian "
        "to continue it)"]
    muon = ["--model.path=/models/smol.gguf", "--mezo.estimator=zo_muon", "--mezo.lr=1e-2"]
    before, config = _saved([*muon, "--mezo.perturbations=1"])
    assert trajectory_diff(before, parse_args(muon), config) == [
        "mezo.perturbations: 1 -> 4 (the run was made with it: set --mezo.perturbations=1 to continue it)"]
