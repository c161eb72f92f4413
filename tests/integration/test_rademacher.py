"""--mezo.distribution=rademacher through the real entry point: it trains, resumes bit-exactly after a
stop, refuses a resume with another distribution, and export replays it (the distribution comes
from run.json's config). The quality comparison with gaussian is bench/progress_dist.py (too slow here)."""

from __future__ import annotations

import json

import pytest
from helpers import FAST, final_weights, max_abs_diff, train, train_together

from mezo_elastic.state.checkpoint import newest_valid_checkpoint

pytestmark = pytest.mark.integration
RAD = ["--mezo.distribution=rademacher", *FAST, "--checkpoint.every=5"]


def test_rademacher_trains_resumes_exactly_and_exports(tmp_path):
    from mezo_elastic.export import export

    a, b = tmp_path / "a", tmp_path / "b"
    train_together((a, *RAD, "--train.steps=10"), (b, *RAD, "--train.steps=5"))  # two cores: at once
    summary = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["final_eval_loss"] < summary["first_eval_loss"], summary
    assert json.loads((a / "run.json").read_text())["trajectory"]["mezo.distribution"] == "rademacher"
    # the resume, and a live 8-step run for the export below, at once
    res, _ = train_together((b, *RAD, "--train.steps=10"), (tmp_path / "c", *RAD, "--train.steps=8"))
    assert "resumed after 5 steps" in res.stderr
    assert max_abs_diff(final_weights(a), final_weights(b)) == 0.0
    # export at step 8: checkpoint 5 + 3 replayed rademacher steps == a live 8-step run
    assert export(a, tmp_path / "e8", step=8) == 8
    from safetensors.torch import load_file

    e8, live8 = load_file(str(tmp_path / "e8" / "model.safetensors")), final_weights(tmp_path / "c")
    step5, ck5 = newest_valid_checkpoint(a, at_most=8)
    # fp32 without a master: the live run's last update was not folded, the replay's was and is then
    # cleaned, so a few ulps (the tolerance of tests/integration/test_elastic.py); a replay with gaussian
    # z would be off by the 3 steps' whole movement, which is far larger.
    assert step5 == 5 and max_abs_diff(e8, live8) <= 1e-6
    assert max_abs_diff({k: ck5[k] for k in e8}, live8) > 1e-4


def test_resume_with_another_distribution_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    train(out, *FAST, "--train.steps=3")
    res = train(out, *FAST, "--train.steps=6", "--mezo.distribution=rademacher", check=False)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if "mezo.distribution: 'gaussian' -> 'rademacher'" in line]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
