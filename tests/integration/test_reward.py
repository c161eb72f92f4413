"""The reward objective through the real entry points (python -m mezo_elastic.train, torchrun, gloo).

The built-in reward task learns; a user reward function (MODULE:FUNCTION) runs and a raising one stops
every rank with one line naming it; a population of K seeds logs K seeds a step and resumes bit-exactly
after a stop; a worker SIGKILLed under torchrun --max-restarts=1 ends on the undisturbed run's weights.
"""

from __future__ import annotations

import json
import signal

import pytest
from helpers import REPO, final_weights, max_abs_diff, train
from test_elastic import _finish, _launch, _wait_for_steps, _workers

from mezo_elastic.state.checkpoint import StepLog

pytestmark = pytest.mark.integration
PRESET = f"--config={REPO / 'configs' / 'reward_builtin.toml'}"
QUICK = [PRESET, "--train.batch_size=16", "--train.eval_every=0", "--train.progress=false", "--checkpoint.every=0",
         "--data.eval_examples=64"]
USER_REWARD = '''
def first_word_is_pos(completion, example):
    """1 when the completion starts with the row's first answer."""
    return float(completion.split()[:1] == example["answers"][:1])


def broken(completion, example):
    raise KeyError("no_such_field")
'''


@pytest.fixture
def user_module(tmp_path):
    (tmp_path / "my_rewards.py").write_text(USER_REWARD)
    return {"PYTHONPATH": f"{REPO}:{tmp_path}"}


def _summary(out) -> dict:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]


def test_builtin_reward_task_learns(tmp_path):
    out = tmp_path / "run"
    train(out, PRESET, "--train.steps=300", "--train.eval_every=0", "--train.progress=false",
          "--checkpoint.every=0", timeout=400)
    s = _summary(out)
    print(f"built-in reward task, 300 steps: eval reward {s['first_eval_reward']:.3f} -> {s['final_eval_reward']:.3f}")
    assert s["type"] == "summary"
    assert s["final_eval_reward"] > s["first_eval_reward"] + 0.15
    assert 0 <= s["final_eval_accuracy"] <= 1  # exact_match is 0/1: accuracy is reported too


def test_user_reward_and_population_of_four(tmp_path, user_module):
    out = tmp_path / "run"
    train(out, *QUICK, "--train.steps=4", "--data.reward=my_rewards:first_word_is_pos", "--mezo.perturbations=4",
          "--mezo.reward_shaping=centered_rank", nproc=2, environ=user_module)
    recs = StepLog(out / "steps.jsonl").read()
    assert [r.step for r in recs] == [0, 1, 2, 3]
    assert all(len(r.seeds) == 4 and len(r.grads) == 4 for r in recs)
    assert len({s for r in recs for s in r.seeds}) == 16
    assert "final_eval_reward" in _summary(out)


def test_raising_reward_stops_every_rank_naming_it(tmp_path, user_module):
    res = train(tmp_path / "run", *QUICK, "--train.steps=4", "--data.reward=my_rewards:broken", nproc=2,
                environ=user_module, check=False)
    assert res.returncode != 0
    lines = [l for l in res.stderr.splitlines() if "mezo_elastic: error" in l]
    assert len(lines) == 2, res.stderr[-3000:]  # one line from each rank
    assert all("my_rewards:broken" in l and "KeyError" in l and ".jsonl:" in l for l in lines), lines
    assert f'File "{REPO / "mezo_elastic"}' not in res.stderr  # no traceback through the package (torchrun's
    # agent prints its own ChildFailedError summary when a worker exits non-zero)


def test_population_resume_after_stop_is_bit_exact(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    args = [*QUICK, "--mezo.perturbations=3", "--mezo.reward_shaping=zscore", "--mezo.lr=1e-4"]
    train(whole, *args, "--train.steps=12")
    train(split, *args, "--train.steps=5")  # stops after step 5 (final save), then the same command to 12
    train(split, *args, "--train.steps=12")
    assert max_abs_diff(final_weights(split), final_weights(whole)) == 0.0


def test_sigkill_worker_with_reward_objective_ends_on_the_same_weights(tmp_path):
    args = [*QUICK, "--train.steps=30", "--checkpoint.every=10", "--dist.init_timeout_s=30"]
    reference = tmp_path / "ref"
    train(reference, *args, nproc=2)
    out = tmp_path / "killed"
    agent = _launch(out, "--max-restarts=1", args=args)
    _wait_for_steps(agent, out, 15)  # past the step-10 checkpoint
    _workers(agent)[1].send_signal(signal.SIGKILL)
    rc, err = _finish(agent)
    assert rc == 0, err[-3000:]
    assert "resumed after" in err
    diff = max_abs_diff(final_weights(out), final_weights(reference))
    print(f"reward objective, SIGKILL + restart: max abs diff vs undisturbed = {diff:.3g}")
    assert diff <= 1e-6


def test_multi_seed_population_logs_k_seeds_per_rank_and_exports_the_same_weights(tmp_path):
    """multi_seed with K=2 on 2 ranks: 4 seeds a step (rank r's are slots 2r, 2r+1); replaying the log
    (export) gives the run's final weights."""
    out = tmp_path / "run"
    train(out, *QUICK, "--train.steps=5", "--mezo.mode=multi_seed", "--mezo.perturbations=2",
          "--mezo.reward_shaping=centered_rank", "--mezo.lr=1e-4", nproc=2)
    recs = StepLog(out / "steps.jsonl").read()
    assert len(recs) == 5 and all(len(r.seeds) == 4 and len(r.grads) == 4 for r in recs)
    from mezo_elastic.export import main as export_main

    assert export_main(["--run", str(out), "--out", str(tmp_path / "exported")]) == 0
    from safetensors.torch import load_file

    assert max_abs_diff(load_file(str(tmp_path / "exported" / "model.safetensors")), final_weights(out)) == 0.0
