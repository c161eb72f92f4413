"""Issue 30, "a run is what it says", items 4-10 and 13-15: each through the real entry points
(python -m mezo_elastic.train | export | doctor | plot), one line, non-zero, no traceback.

The GGUF files are made here: a tiny Llama GGUF written with gguf-py's GGUFWriter (transformers reads it:
test_cache_directory_follows_the_umask converts it), then cut short or given other magic bytes. Every
new message is looked up in docs/troubleshooting.md as the run printed it (test_first_hour._quote;
DUMP_QUOTES=FILE collects them instead).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAST, REPO, env, final_weights, train, train_together
from test_first_hour import _done, _line, _quote, _read_only_dir, _start

pytestmark = pytest.mark.integration
TRAIN = [sys.executable, "-m", "mezo_elastic.train"]
EXPORT = [sys.executable, "-m", "mezo_elastic.export"]
DOCTOR = [sys.executable, "-m", "mezo_elastic.doctor", "--timeout=5"]


def write_tiny_gguf(path: Path) -> Path:
    """A whole Llama GGUF of 10k float32 parameters and a 64-token BPE vocabulary (about 42 kB)."""
    import numpy as np
    import gguf

    vocab, hidden, inter, heads, kv_heads = 64, 32, 48, 2, 1
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    # every merge's result must be a token of its own, or transformers' BPE refuses the vocabulary
    w.add_token_list([chr(ord("a") + i) for i in range(26)] + ["ab"] + [f"<t{i}>" for i in range(27, vocab)])
    w.add_token_types([1] * vocab)
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(0)
    kv = hidden // heads * kv_heads
    shapes = {"token_embd.weight": (vocab, hidden), "blk.0.attn_q.weight": (hidden, hidden),
              "blk.0.attn_k.weight": (kv, hidden), "blk.0.attn_v.weight": (kv, hidden),
              "blk.0.attn_output.weight": (hidden, hidden), "blk.0.ffn_gate.weight": (inter, hidden),
              "blk.0.ffn_up.weight": (inter, hidden), "blk.0.ffn_down.weight": (hidden, inter)}
    for name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"):
        w.add_tensor(name, np.ones(hidden, np.float32))
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, Path]:
    """A whole tiny GGUF and its broken copies: cut in the tensor data, cut in the header, other magic."""
    d = tmp_path_factory.mktemp("gguf")
    whole = write_tiny_gguf(d / "tiny.gguf")
    data = whole.read_bytes()
    files = {"whole": whole, "missing": d / "missing.gguf"}
    for name, blob in {"cut_data": data[: len(data) // 2], "cut_header": data[:200],
                       "not_gguf": b"PK\x03\x04" + data[4:]}.items():
        files[name] = d / f"{name}.gguf"
        files[name].write_bytes(blob)
    return files


def _refused(p: subprocess.Popen, words: str, tmp: Path, rc: int = 1) -> str:
    code, err = _done(p)
    assert code == rc and "Traceback" not in err, f"rc={code}\n{err[-3000:]}"
    line = _line(err, words)
    _quote(line.replace(str(tmp), "/scratch"), tmp)
    return line


# -- items 4 and 6: a truncated, corrupt or missing GGUF file is one line ------------------------------


def test_broken_or_missing_gguf_is_one_line(tmp_path, ggufs):
    d = ggufs["whole"].parent
    cases = {  # file, words of the refusal
        "cut_data": (ggufs["cut_data"], "is truncated: its GGUF header promises"),
        "cut_header": (ggufs["cut_header"], "is truncated: it ends inside its GGUF header"),
        "not_gguf": (ggufs["not_gguf"], "is not a GGUF file: it starts with b'PK\\x03\\x04'"),
        "missing": (ggufs["missing"], "does not exist; give an HF model directory or a GGUF file"),
    }
    procs = {k: _start(TRAIN + [f"--model.path={f}", f"--train.output_dir={tmp_path / k}", *FAST,
                                "--train.steps=1"], TMPDIR=str(tmp_path))
             for k, (f, _) in cases.items()}
    for k, p in procs.items():
        line = _refused(p, cases[k][1], d)
        assert f"({ggufs[k].stat().st_size} bytes)" in line if ggufs[k].exists() else "missing.gguf" in line
        assert not (tmp_path / k).exists()  # refused before anything was written
    staged = [n for n in os.listdir(tmp_path) if n.startswith("mezo_elastic-builtin-")]
    assert not staged, staged  # no staging folder of the built-in task left behind either


# -- item 5: export --out where nothing can be written ------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_inputs) -> Path:
    run = tmp_path_factory.mktemp("run") / "run"
    train(run, *tiny_inputs, *FAST, "--train.steps=3")
    return run


def test_export_to_an_unwritable_place_is_one_line(tmp_path, finished_run):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    cases = {  # --out, words of the refusal
        "under_a_file": (a_file / "sub", "cannot be made:"),
        "proc": (Path("/proc/mezo-export-test/out"), "does not take new files"),
    }
    ro = _read_only_dir(tmp_path)
    if ro:  # root: a real read-only mount (EROFS); others: chmod 555 (EACCES)
        cases["read_only"] = (ro[0] / "exported", "is not writable")
    try:
        procs = {k: _start([*EXPORT, "--run", str(finished_run), "--out", str(out)]) for k, (out, _) in cases.items()}
        for k, p in procs.items():
            _refused(p, cases[k][1], tmp_path)
        assert a_file.read_text() == "mine\n" and (not ro or not any(ro[0].iterdir()))
    finally:
        if ro:
            ro[1]()


def test_export_best_step_is_the_best_evals_weights_and_bad_steps_are_one_line(tmp_path, tiny_inputs):
    """A run past its best (an lr far too large: the eval loss climbs) says at its end which eval was best and
    how to export it; --step best exports that step's weights, the same bytes as --step N for that N; a wrong
    --step or --best-by is one line."""
    from safetensors.torch import load_file

    from mezo_elastic.export import best_step

    run = tmp_path / "run"
    res = train(run, *tiny_inputs, *FAST, "--train.steps=6", "--train.eval_every=2", "--mezo.lr=0.03")
    step, key, _ = best_step(run)
    assert step < 6, "the run was meant to pass its best"
    assert f"best eval: step {step}, {key}=" in res.stderr and "--step best --out DIR" in res.stderr
    p = subprocess.run([*EXPORT, "--run", str(run), "--step", "best", "--out", str(tmp_path / "best")], env=env(),
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"best eval: step {step}, {key}=" in p.stdout and f"exported step {step} of" in p.stdout
    p = subprocess.run([*EXPORT, "--run", str(run), "--step", str(step), "--out", str(tmp_path / "n")], env=env(),
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("best", "n"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    bad = {("--step", "soon"): "--step soon is not allowed",
           ("--step", "best", "--best-by", "eval_f1"): "has no eval with eval_f1",
           ("--step", "3", "--best-by", "eval_loss"): "picks a step only with --step best"}
    procs = {k: _start([*EXPORT, "--run", str(run), *k, "--out", str(tmp_path / "x")]) for k in bad}
    for k, p in procs.items():
        _refused(p, bad[k], tmp_path)
    assert not (tmp_path / "x").exists()


def test_early_stop_ends_a_run_past_its_best_and_a_relaunch_goes_on_only_when_asked(tmp_path, tiny_inputs):
    """train.early_stop_evals on 2 ranks: a run whose eval loss climbs (lr far too large) ends after 2 evals that
    did not beat step 0's, saves final/ and says so; the same command again trains nothing; with the option off
    the run continues bit-exactly: the same step log and final weights as a run never stopped."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    args = [*tiny_inputs, *FAST, "--train.steps=12", "--train.eval_every=2", "--mezo.lr=0.03"]
    res, _ = train_together((run, *args, "--train.early_stop_evals=2", {"nproc": 2}), (whole, *args, {"nproc": 2}))
    assert "early stop at step 4: 2 evals in a row without beating step 0's eval_loss=" in res.stderr, res.stderr[-3000:]
    assert "done: steps=4 stopped_early=1" in res.stderr and (run / "final" / "model.safetensors").is_file()
    log = (run / "steps.jsonl").read_text()
    assert len(log.splitlines()) == 4
    res = train(run, *args, "--train.early_stop_evals=2", nproc=2)
    assert "early stop at step 4, where the run is" in res.stderr and "nothing to train" in res.stderr, res.stderr[-3000:]
    assert (run / "steps.jsonl").read_text() == log
    train(run, *args, nproc=2)
    assert (run / "steps.jsonl").read_text() == (whole / "steps.jsonl").read_text()
    no_eval = [a for a in tiny_inputs if not a.startswith("--data.eval_path")]  # user data without an eval file
    res = train(tmp_path / "none", *no_eval, *FAST, "--train.eval_every=2", "--train.early_stop_evals=2", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "train.early_stop_evals=2 needs an eval set" in res.stderr and not (tmp_path / "none").exists()
    a, b = final_weights(run), final_weights(whole)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


# -- items 7 and 10: the launcher variables ----------------------------------------------------------


def test_invalid_world_size_and_lone_local_rank_are_named(tmp_path):
    cases = {  # environment, words
        "world0": ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE=0 is not allowed; it must be >= 1"),
        "world-1": ({"WORLD_SIZE": "-1", "RANK": "0"}, "WORLD_SIZE=-1 is not allowed; it must be >= 1"),
        "local5": ({"LOCAL_RANK": "5"}, "LOCAL_RANK=5 is set but RANK and WORLD_SIZE are not"),
    }
    procs = {k: _start(TRAIN + [f"--train.output_dir={tmp_path / k}", "--train.progress=false"], **e)
             for k, (e, _) in cases.items()}
    for k, p in procs.items():
        line = _refused(p, cases[k][1], tmp_path, rc=2)
        assert "LOCAL_RANK is not set" not in line
        assert not (tmp_path / k).exists()


# -- items 8, 9, 10: doctor ---------------------------------------------------------------------------


def _doctors(*calls: tuple[list[str], dict[str, str]]) -> list[subprocess.CompletedProcess]:
    """python -m mezo_elastic.doctor with each (arguments, environment), all at once (two cores; each only reads)."""
    procs = [subprocess.Popen([*DOCTOR, *args], env=env(**extra), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, extra in calls]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _problem(out: str, code: str) -> tuple[str, str]:
    """(message, fix) of the one problem `code` in doctor's report."""
    lines = out.splitlines()
    hits = [i for i, l in enumerate(lines) if l.startswith(f"ERROR [{code}]")]
    assert len(hits) == 1, out[-3000:]
    message = lines[hits[0]].split("): ", 1)[1]
    fix = lines[hits[0] + 1].strip()
    assert fix.startswith("fix: "), out[-3000:]
    return message, fix.removeprefix("fix: ")


def test_doctor_names_the_port_and_the_lone_local_rank(tmp_path):
    port, lone = _doctors(([f"--train.output_dir={tmp_path / 'run'}"], {"RANK": "0", "WORLD_SIZE": "1",
                                                                        "MASTER_PORT": "99999"}),
                          ([f"--train.output_dir={tmp_path / 'run'}"], {"LOCAL_RANK": "5"}))
    r = port
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout[-3000:] + r.stderr[-2000:]
    message, fix = _problem(r.stdout, "launch-env")
    assert message == "MASTER_PORT=99999 is outside 1..65535"
    assert "MASTER_PORT" in fix and "RANK" not in fix and "WORLD_SIZE" not in fix
    _quote(fix, tmp_path)
    r = lone
    assert r.returncode == 1 and "LOCAL_RANK=0" not in r.stdout, r.stdout[-3000:]
    message, fix = _problem(r.stdout, "launch-env")
    assert message.startswith("LOCAL_RANK=5 is set but RANK and WORLD_SIZE are not") and "unset LOCAL_RANK" in fix
    _quote(fix, tmp_path)
    assert not (tmp_path / "run").exists()


def test_doctor_reports_a_missing_or_truncated_gguf(tmp_path, ggufs):
    d = ggufs["whole"].parent
    names = ("missing", "cut_data", "whole")
    reports = dict(zip(names, _doctors(*(([f"--model.path={ggufs[name]}", f"--train.output_dir={tmp_path / 'run'}"], {})
                                         for name in names))))
    for name in ("missing", "cut_data"):
        r = reports[name]
        assert r.returncode == 1 and "OK, no problems found" not in r.stdout, r.stdout[-3000:]
        message, fix = _problem(r.stdout, "model-path")
        _quote(message.replace(str(d), "/scratch"), tmp_path)
        _quote(fix, tmp_path)
    r = reports["whole"]
    assert "[model-path]" not in r.stdout and f"model.path {ggufs['whole']}: usable" in r.stdout, r.stdout[-3000:]


# -- item 13: SIGTERM during a step longer than the grace period --------------------------------------

SLOW_REWARD = '''
import os, time

def slow(completion, example):
    """0 at once, until the test asks for a long step: then say so and sleep through the grace period."""
    if os.path.exists(os.environ["SLOW_FLAG"]):
        open(os.environ["SLOW_FLAG"] + ".sleeping", "w").close()
        time.sleep(120)
    return 0.0
'''


def test_sigterm_past_the_grace_period_says_why(tmp_path):
    (tmp_path / "slow_reward.py").write_text(SLOW_REWARD)
    flag, out = tmp_path / "slow", tmp_path / "run"
    p = _start(TRAIN + [f"--config={REPO / 'configs' / 'reward_builtin.toml'}", f"--train.output_dir={out}",
                        "--train.steps=100000", "--train.eval_every=0", "--train.progress=false",
                        "--checkpoint.every=0", "--data.reward=slow_reward:slow", "--train.stop_grace_s=2"],
               PYTHONPATH=f"{REPO}:{tmp_path}", SLOW_FLAG=str(flag))
    try:
        deadline = time.monotonic() + 120
        while not ((out / "steps.jsonl").is_file() and len((out / "steps.jsonl").read_text().splitlines()) >= 2):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
            time.sleep(0.2)
        flag.touch()
        while not Path(f"{flag}.sleeping").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
            time.sleep(0.05)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc, err = _done(p, timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    elapsed = time.monotonic() - t0
    assert rc == 128 + signal.SIGTERM and 2 <= elapsed < 30, f"rc={rc} after {elapsed:.1f} s\n{err[-3000:]}"
    assert "Traceback" not in err
    done = len((out / "steps.jsonl").read_text().splitlines())
    line = _line(err, "had not ended")
    assert f"SIGTERM arrived and step {done + 1} had not ended 2 s later (train.stop_grace_s)" in line, line
    assert f"the step log holds {done} steps done" in line and "a relaunch of the same command resumes" in line
    _quote(line, tmp_path)


# -- item 14: a run with one train line plots its point -----------------------------------------------


def test_plot_of_one_train_line_draws_its_point(tmp_path, tiny_inputs):
    pytest.importorskip("matplotlib")
    from matplotlib.lines import Line2D

    from mezo_elastic.plot import _title, draw, load_metrics

    run = tmp_path / "run"
    train(run, *tiny_inputs, *FAST, "--train.steps=1", "--train.log_every=1", "--train.save_final=false")
    series = load_metrics(run / "metrics.jsonl")
    assert len(series.train) == 1
    res = subprocess.run([sys.executable, "-m", "mezo_elastic.plot", str(run)], env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and (run / "metrics.png").stat().st_size > 10_000, res.stderr[-2000:]
    fig = draw(series, _title(run, series), 0.9)
    lines = [a for ax in fig.axes for a in ax.get_children() if isinstance(a, Line2D) and len(a.get_xdata()) == 1]
    # raw and smoothed train loss, and the lr: one point each, each drawn as a marker (a line of one
    # point draws nothing)
    assert len(lines) >= 3 and all(l.get_marker() not in (None, "None", "", " ") for l in lines), \
        [(l.get_label(), l.get_marker()) for l in lines]
    assert all(l.get_markersize() > 0 for l in lines)


# -- item 15: the GGUF cache follows the umask --------------------------------------------------------


def test_cache_directory_follows_the_umask(tmp_path, ggufs):
    from mezo_elastic.runners import gguf

    old = os.umask(0o022)
    try:
        hf, _ = gguf.hf_dir_for(ggufs["whole"], root=tmp_path / "cache")
    finally:
        os.umask(old)
    assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()  # transformers read it
    assert oct(hf.stat().st_mode & 0o777) == oct(0o755)  # mkdtemp's 0700 would shut a group out
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in hf.iterdir()} == \
        {p.name: oct(0o644) for p in hf.iterdir()}  # safetensors' own 0600 too
