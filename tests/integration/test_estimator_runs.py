"""mezo.estimator and the shaped update rule through the real entry points (python -m mezo_elastic.train,
torchrun with gloo): fzoo, es, gv and zo_muon train, resume bit-exactly after a stop, are recorded in run.json and
export by replay; a shaped run made with the rule before issue 24 (a run.json without the key) still
exports exactly and continues only under its own rule."""

from __future__ import annotations

import json

import pytest
from helpers import FAST, final_weights, max_abs_diff, train, train_together
from safetensors.torch import load_file

from mezo_elastic.export import export
from mezo_elastic.state.checkpoint import StepLog

pytestmark = pytest.mark.integration
FZOO = [*FAST, "--mezo.estimator=fzoo", "--mezo.perturbations=4", "--mezo.distribution=rademacher"]
GV = [*FAST, "--mezo.estimator=gv", "--mezo.perturbations=4"]
# interval 3: the 3-step split run resumes into a new subspace; lr as ZO-Muon's scale (its README: 1e-2)
ZO_MUON = [*FAST, "--mezo.estimator=zo_muon", "--mezo.perturbations=4", "--mezo.zo_muon_rank=8",
           "--mezo.zo_muon_interval=3", "--mezo.lr=3e-2", "--mezo.zo_muon_vector_lr=1e-3"]
ES = [*FAST, "--mezo.estimator=es", "--mezo.perturbations=4", "--mezo.reward_shaping=zscore", "--mezo.lr=1e-2"]


@pytest.mark.parametrize("args, nproc", [(FZOO, 2), (ES, 1), (GV, 2), (ZO_MUON, 2)], ids=["fzoo", "es", "gv", "zo_muon"])
def test_estimator_resumes_bit_exactly_and_exports(tmp_path, args, nproc, caplog):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_together((whole, *args, "--train.steps=8", {"nproc": nproc}),
                   (split, *args, "--train.steps=3", {"nproc": nproc}))
    res = train(split, *args, "--train.steps=8", nproc=nproc)
    assert "resumed after 3 steps" in res.stderr
    assert max_abs_diff(final_weights(split), final_weights(whole)) == 0.0
    info = json.loads((whole / "run.json").read_text())
    assert info["trajectory"]["mezo.estimator"] == args[len(FAST)].split("=")[1]
    recs = StepLog(whole / "steps.jsonl").read()
    assert len(recs) == 8 and all(len(r.seeds) == 4 == len(r.grads) for r in recs)
    assert any(g != 0 for r in recs for g in r.grads)
    assert export(whole, tmp_path / "exported") == 8
    # zo_muon's note: a GPU run's CPU replay may move a float32 rounding (here the run was on the CPU: exact)
    assert ("steps 1-8 replayed on the CPU" in caplog.text) == (args is ZO_MUON)
    assert max_abs_diff(load_file(str(tmp_path / "exported" / "model.safetensors")), final_weights(whole)) == 0.0
    summary = json.loads((whole / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["final_eval_loss"] < summary["first_eval_loss"], summary


def _make_as_before_the_rule(out) -> None:
    """An output directory as a run made before mezo.shaped_update existed leaves it (per_eps is refused on
    a new run): `out`, started for 0 steps, its run.json without the keys added since."""
    info = json.loads((out / "run.json").read_text())
    for key in ("shaped_update", "estimator"):
        del info["trajectory"][f"mezo.{key}"], info["config"]["mezo"][key]
    (out / "run.json").write_text(json.dumps(info))


def test_a_run_made_with_the_old_shaped_rule_replays_and_keeps_its_rule(tmp_path):
    shaped = [*FAST, "--mezo.perturbations=2", "--mezo.reward_shaping=zscore", "--mezo.lr=1e-5"]
    old, new, whole = tmp_path / "old", tmp_path / "new", tmp_path / "whole"
    # independent jobs at once (two cores): old and whole both start as a run from before the rule
    train_together((old, *shaped, "--train.steps=0"), (whole, *shaped, "--train.steps=0"),
                   (new, *shaped, "--train.steps=3"))
    for out in (old, whole):
        _make_as_before_the_rule(out)
    train_together((old, *shaped, "--mezo.shaped_update=per_eps", "--train.steps=3"),
                   (whole, *shaped, "--mezo.shaped_update=per_eps", "--train.steps=5"))
    # the first step sees the same weights and batch: the same losses, g smaller by exactly 1/eps's factor
    g_old, g_new = StepLog(old / "steps.jsonl").read()[0].grads, StepLog(new / "steps.jsonl").read()[0].grads
    assert g_new == pytest.approx([g * 1e-3 for g in g_old], rel=1e-9)
    assert export(old, tmp_path / "exported") == 3
    assert max_abs_diff(load_file(str(tmp_path / "exported" / "model.safetensors")), final_weights(old)) == 0.0
    res = train(old, *shaped, "--train.steps=5", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "mezo.shaped_update: 'per_eps' -> 'es' (the run was made with it: set --mezo.shaped_update=per_eps" \
        in res.stderr, res.stderr[-2000:]
    train(old, *shaped, "--mezo.shaped_update=per_eps", "--train.steps=5")
    assert max_abs_diff(final_weights(old), final_weights(whole)) == 0.0
