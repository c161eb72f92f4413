"""Issue 22, "nothing lost: what a new user's second hour broke": each item through the real entry points.

The data-loss items (1-3) compare the sha256 of every file under the test's directory before and after.
Every new message is looked up in docs/troubleshooting.md as the run printed it (test_first_hour._quote).
Refused launches get their own TMPDIR: the staging folder of the built-in model must be gone afterwards.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAST, REPO, env, train, train_together
from test_first_hour import PREFIX, _done, _line, _quote, _start

from mezo_elastic.data import builtin
from mezo_elastic.state.checkpoint import StepLog

pytestmark = pytest.mark.integration
TRAIN = [sys.executable, "-m", "mezo_elastic.train"]
EXPORT = [sys.executable, "-m", "mezo_elastic.export"]


def tree_sha256(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (the lock and plots a test writes excepted)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tmp_path, tiny_inputs) -> Path:
    """A finished 6-step run (checkpoints at 3 and 6) under tmp_path/runs/run, beside a README of the user's."""
    run = tmp_path / "runs" / "run"
    train(run, *tiny_inputs, *FAST, "--train.batch_size=8", "--train.steps=6", "--checkpoint.every=3")
    (tmp_path / "runs" / "README.md").write_text("my runs\n")
    return run


def _refused(p: subprocess.Popen, words: str, tmp: Path, rc: int = 1) -> str:
    code, err = _done(p)
    assert code == rc and "Traceback" not in err, f"rc={code}\n{err[-3000:]}"
    line = _line(err, words)
    _quote(line, tmp)
    return line


# -- items 1 and 5: export never deletes what it did not write ----------------------------------------


def test_export_never_deletes_what_it_did_not_write(tmp_path, finished_run):
    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    before = tree_sha256(tmp_path)
    cases = {  # --out, --step, words of the refusal
        "the run itself": (finished_run, 3, "is not a previous export"),
        "the user's dir": (mine, 3, "is not a previous export"),
        "a negative step": (tmp_path / "new", -3, "--step -3 is not allowed"),
    }
    procs = {k: _start([*EXPORT, "--run", str(finished_run), "--step", str(step), "--out", str(out)])
             for k, (out, step, _) in cases.items()}
    for k, p in procs.items():
        _refused(p, cases[k][2], tmp_path)
    assert tree_sha256(tmp_path) == before and not (tmp_path / "new").exists()
    # a new directory gets an export marked by export.json; a second export replaces it whole
    out = tmp_path / "exported"
    for step in (3, 5):
        res = subprocess.run([*EXPORT, "--run", str(finished_run), "--step", str(step), "--out", str(out)],
                             env=env(), cwd=REPO, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stderr[-2000:]
        marker = json.loads((out / "export.json").read_text())
        assert marker["step"] == step and "model.safetensors" in marker["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "mydir", "runs"]  # no temp folder left
    assert {k: v for k, v in tree_sha256(tmp_path).items() if not k.startswith("exported/")} == before
    (out / "mine.txt").write_text("added by the user\n")
    kept = tree_sha256(tmp_path)
    _refused(_start([*EXPORT, "--run", str(finished_run), "--out", str(out)]), "files export did not write", tmp_path)
    assert tree_sha256(tmp_path) == kept


# -- items 2, 3, 4, 10: a refused launch writes nothing, anywhere ---------------------------------------


def test_refused_launches_leave_every_file_as_it_was(tmp_path, tiny_inputs, finished_run):
    model, data = tiny_inputs[0], tiny_inputs[1]
    mine = tmp_path / "mine"  # item 3: someone's files, named like a run's
    (mine / "final").mkdir(parents=True)
    (mine / "final" / "notes.txt").write_text("notes\n")
    (mine / "metrics.jsonl").write_text('{"mine": 1}\n')
    lm_rows = tmp_path / "lm.jsonl"
    lm_rows.write_text("".join(json.dumps({"prompt": "good day ->", "completion": "pos"}) + "\n" for _ in range(60)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lm_rows.read_text() + '{"prompt": "good ->"}\n')
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    run, new = str(finished_run), tmp_path / "new"
    cases = {  # name: (flags, words); the built-in model (no model.path) is staged and must vanish
        "resume_false": ([f"--train.output_dir={run}", model, data, "--checkpoint.resume=false"], "does not start over"),
        "past_target": ([f"--train.output_dir={run}", model, data, "--train.steps=2"], "past train.steps=2"),
        "foreign": ([f"--train.output_dir={mine}", model, data], "not a mezo_elastic run"),
        "bad_row": ([f"--train.output_dir={new / 'a'}", f"--data.path={bad}"], "field 'completion'"),
        "reward_rows": ([f"--train.output_dir={new / 'b'}", model, "--data.objective=reward",
                         f"--data.path={lm_rows}"], "every row is checked before training"),
        "reward_fn": ([f"--train.output_dir={new / 'c'}", model, "--data.objective=reward", "--data.reward=no_such:f"],
                      "cannot be imported"),
        "model": ([f"--train.output_dir={new / 'd'}", f"--model.path={no_model}"], "is not an HF model directory"),
        "lora": ([f"--train.output_dir={new / 'e'}", "--peft.method=lora", "--peft.targets=qkv"], "its linear modules"),
        "a_dir": ([f"--train.output_dir={new / 'f'}", model, f"--data.path={tmp_path}"],
                  "is a directory, not a JSONL file"),
    }
    before = tree_sha256(tmp_path)
    tmps = {k: tmp_path.parent / f"{tmp_path.name}-tmp-{k}" for k in cases}
    procs = {}
    for k, (flags, _) in cases.items():
        tmps[k].mkdir()
        procs[k] = _start(TRAIN + [*flags, *FAST], TMPDIR=str(tmps[k]))
    lines = {k: _refused(p, cases[k][1], tmp_path) for k, p in procs.items()}
    assert tree_sha256(tmp_path) == before and not new.exists()
    staged = [p for t in tmps.values() for p in t.iterdir() if p.name.startswith("mezo_elastic-builtin-")]
    assert not staged, staged  # (torch keeps its own cache there: torchinductor_<user>)
    assert f"{lm_rows}:1: data.reward=exact_match raised ValueError" in lines["reward_rows"]  # the first row
    assert "k_proj,lm_head,o_proj,q_proj,up_proj,v_proj" in lines["lora"] and f"{bad}:61:" in lines["bad_row"]
    assert "has done 6 steps" in lines["past_target"] and "holds a run (6 steps done)" in lines["resume_false"]


# -- item 9: "step" is steps done, in every message --------------------------------------------------


def test_stop_and_resume_count_steps_done(tmp_path, tiny_inputs):
    out = tmp_path / "run"
    args = [*tiny_inputs, *FAST, "--train.batch_size=4", "--checkpoint.every=4"]
    p = _start(TRAIN + [f"--train.output_dir={out}", *args, "--train.steps=100000", "--train.log_every=100000"])
    deadline = time.monotonic() + 120
    while len(StepLog(out / "steps.jsonl").read()) < 6:
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    rc, err = _done(p)
    done = len(StepLog(out / "steps.jsonl").read())
    assert rc == 128 + signal.SIGINT and f"stopped by SIGINT after {done} steps" in err, err[-2000:]
    _quote(_line(err, "stopped by SIGINT"), tmp_path)
    nock = tmp_path / "nock"  # a run without checkpoints resumes from the base model (its first 2 steps: meanwhile)
    res, _ = train_together((out, *args, f"--train.steps={done + 1}"), (nock, *tiny_inputs, *FAST, "--train.steps=2"))
    ck = (done - 1) // 4 * 4  # the stop comes before the checkpoint its own step would have saved
    assert f"resumed after {done} steps (checkpoint step-{ck} + {done - ck} replayed steps)" in res.stderr
    summary = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["type"] == "summary" and summary["step"] == done + 1
    res = train(nock, *tiny_inputs, *FAST, "--train.steps=3")
    _quote(_line(res.stderr, "resumed after"), tmp_path)
    assert "resumed after 2 steps (no checkpoint: the base model + 2 replayed steps)" in res.stderr


# -- items 7, 8, 14: messages, escapes, start-up --------------------------------------------------------


def test_messages_say_what_is_wrong(tmp_path, tiny_inputs):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("train:\n  steps: abc\n")
    cases = {  # flags, rc, words
        "proc": (["--train.output_dir=/proc/mezo_run"], 1, "does not take new files"),
        "bool": (["--train.progress=maybe"], 2, "is not a valid bool"),
        "yaml": ([f"--config={yaml}"], 2, "(in "),
        "escape": (["--generate.stop=a\\qb"], 2, "unknown escape"),
        "task": (["--data.task=sst2", "--data.objective=lm", "--data.path=x"], 2, "leave data.objective out"),
    }
    procs = {k: _start(TRAIN + [f"--train.output_dir={tmp_path / k}", *FAST, *flags]) for k, (flags, _, _) in cases.items()}
    lines = {k: _refused(p, cases[k][2], tmp_path, cases[k][1]) for k, p in procs.items()}
    assert not any((tmp_path / k).exists() for k in cases)
    assert lines["yaml"] == f"train.steps='abc' (in {yaml}) is not a valid int"
    # plot --out DIR: the PNG goes into DIR and the path printed is the file's
    run = tmp_path / "run"
    train(run, *tiny_inputs, *FAST, "--train.steps=2", "--train.log_every=1")
    pics = tmp_path / "pics"
    pics.mkdir()
    res = subprocess.run([sys.executable, "-m", "mezo_elastic.plot", str(run), "--out", str(pics)], env=env(),
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == str(pics / "metrics.png") and (pics / "metrics.png").is_file()


def test_reward_stop_escape_zero_reward_and_steps_zero(tmp_path):
    """--generate.stop='\\n' is a newline; a reward loss of 0 never prints as -0.0000; train.steps=0
    evaluates once. The built-in model and reward task, made on first use."""
    out = tmp_path / "reward"
    res = train(out, "--data.objective=reward", "--generate.stop=\\n", "--generate.max_new_tokens=2",
                "--train.steps=0", "--data.eval_examples=8", "--train.progress=false")
    assert json.loads((out / "run.json").read_text())["config"]["generate"]["stop"] == ["\n"]
    assert res.stderr.count("eval step 0") == 1 and "-0.0000" not in res.stderr and "=-0 " not in res.stderr
    assert sorted(p.name for p in (out / "builtin").iterdir()) == ["task-reward", "tiny-model"]


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    p = _start(TRAIN + [f"--train.output_dir={tmp_path / 'run'}"], TMPDIR=str(tmp_path))
    time.sleep(1.0)  # importing torch / building the built-in model (a few seconds on any machine)
    p.send_signal(signal.SIGINT)
    rc, err = _done(p)
    assert rc == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    _quote(_line(err, "interrupted"), tmp_path)
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("mezo_elastic-builtin-")]


def test_ctrl_c_that_breaks_an_import_is_still_one_line(tmp_path):
    # CI, 2026-12-08: the SIGINT landed inside numpy's import under torch's; numpy was left half-loaded and the
    # next import raised ImportError ("cannot load module more than once per process") with a traceback.
    code = ("import mezo_elastic.train as t\n"
            "def main():\n"
            "    t._INTERRUPTED.append(2)\n"
            "    raise ImportError('cannot load module more than once per process')\n"
            "t.main = main\n"
            "t.cli()\n")
    res = subprocess.run([sys.executable, "-c", code], env=env(), cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 130 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1].startswith("mezo_elastic: interrupted (SIGINT) during start-up")
    res = subprocess.run([sys.executable, "-c", code.replace("t._INTERRUPTED.append(2)", "pass")], env=env(),
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "ImportError" in res.stderr  # without a Ctrl-C the error is not hidden


def test_make_install_shows_pip_and_the_venv_hint(tmp_path):
    dry = subprocess.run(["make", "-n", "install"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "pip install" in dry.stdout and " -q " not in dry.stdout, dry.stdout
    fake = tmp_path / "pip"  # a pip that refuses as Debian's does
    fake.write_text("#!/bin/sh\necho 'error: externally-managed-environment' >&2\nexit 1\n")
    fake.chmod(0o755)
    res = subprocess.run(["make", "install", f"PIP={fake}", f"PYTHON={sys.executable}"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "python3 -m venv .venv && . .venv/bin/activate" in res.stdout, res.stdout
    assert "python3 -m venv .venv" in (REPO / "README.md").read_text()


# -- items 11, 12, 13 -----------------------------------------------------------------------------------


def test_lora_adapter_names_its_base_model_absolutely(tmp_path):
    launch = tmp_path / "launch"
    launch.mkdir()
    res = subprocess.run(TRAIN + ["--train.output_dir=runs/lora", "--peft.method=lora", "--train.steps=2", *FAST],
                         env=env(), cwd=launch, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    final = launch / "runs" / "lora" / "final"
    base = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str((launch / "runs" / "lora" / "builtin" / "tiny-model").resolve())
    load = ("import sys\nfrom peft import AutoPeftModelForCausalLM\n"
            "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1])\nprint(type(m).__name__)")
    res = subprocess.run([sys.executable, "-c", load, str(final)], env=env(), cwd="/", capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "PeftModelForCausalLM" in res.stdout, res.stderr[-3000:]


def test_rows_past_the_models_positions_warn_and_a_task_sets_its_objective(tmp_path, tiny_inputs):
    model = tmp_path / "model"  # the built-in model under this test's directory: messages name /scratch/model
    shutil.copytree(tiny_inputs[0].partition("=")[2], model)
    words = builtin.POSITIVE + builtin.NEUTRAL
    long = tmp_path / "long.jsonl"  # 80 words: past the built-in model's 64 positions, under data.max_length=128
    long.write_text("".join(json.dumps({"prompt": " ".join(words[(i + j) % len(words)] for j in range(80)) + " ->",
                                        "completion": "pos"}) + "\n" for i in range(10)))
    sst2 = tmp_path / "sst2.jsonl"  # 30 rows: too few for MeZO's 500 dev rows
    sst2.write_text("".join(json.dumps({"sentence": f"{builtin.POSITIVE[i % 8]} day ", "label": i % 2, "idx": i})
                            + "\n" for i in range(30)))
    jobs = {
        "long": _start(TRAIN + [f"--train.output_dir={tmp_path / 'long'}", f"--model.path={model}", f"--data.path={long}",
                                *FAST, "--train.batch_size=2", "--train.steps=1"]),
        "task": _start(TRAIN + [f"--train.output_dir={tmp_path / 'task'}", tiny_inputs[0], "--data.task=SST2",
                                f"--data.path={sst2}", f"--data.eval_path={sst2}", "--data.num_eval=8",
                                *FAST, "--train.batch_size=4", "--train.steps=1"]),
    }
    rc, err = _done(jobs["long"])
    assert rc == 0, err[-3000:]
    _quote(_line(err, "positions of"), tmp_path)
    assert "10 of the 10 rows" in err
    rc, err = _done(jobs["task"])
    assert rc == 0, err[-3000:]
    _quote(_line(err, "too few for MeZO's"), tmp_path)
    assert json.loads((tmp_path / "task" / "run.json").read_text())["config"]["data"]["objective"] == "classification"
    assert re.search(r"holding out 10 as dev", err), err[-2000:]
