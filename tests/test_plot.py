"""`python -m mezo_elastic.plot` on a real training run's output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, env, train

pytest.importorskip("matplotlib", reason="matplotlib is in the [dev] extra: pip install -e '.[dev]'")


def plot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mezo_elastic.plot", *args], env=env(), capture_output=True,
                          text=True, timeout=120, cwd=REPO)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(out, "--train.steps=30", "--train.log_every=1", "--train.eval_every=10", "--train.progress=false",
          "--checkpoint.every=0", "--train.save_final=false")
    return out


def test_plot_writes_png_from_real_run(run_dir: Path):
    import matplotlib.image

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "train" for r in rows) == 30 and any(r["type"] == "eval" for r in rows)
    r = plot(str(run_dir))
    assert r.returncode == 0, r.stderr
    png = run_dir / "metrics.png"
    assert r.stdout.strip() == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 500 and img.shape[1] > 800  # two panels at a readable size
    assert img[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_plot_out_flag_and_loader_match_metrics(run_dir: Path, tmp_path: Path):
    from mezo_elastic.plot import load_metrics

    r = plot(str(run_dir), "--out", str(tmp_path / "sub" / "p.png"))
    assert r.returncode == 0 and (tmp_path / "sub" / "p.png").stat().st_size > 10_000
    s = load_metrics(run_dir / "metrics.jsonl")
    assert sorted(s.train) == list(range(1, 31))  # train lines count steps done
    assert 0 in s.eval and 30 in s.eval and s.summary is not None


def test_plot_missing_dir_is_a_clear_error(tmp_path: Path):
    r = plot(str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "metrics.jsonl: no such file" in r.stderr and "train.output_dir" in r.stderr


def test_plot_without_matplotlib_names_the_pip_command(run_dir: Path):
    # sys.modules[name] = None is how Python itself marks a module as absent: the import raises ImportError.
    code = ("import sys; sys.modules['matplotlib'] = None; from mezo_elastic.plot import main; "
            f"sys.exit(main([{str(run_dir)!r}, '--out', {str(run_dir / 'x.png')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "pip install 'mezo_elastic[plot]'" in r.stderr
    assert not (run_dir / "x.png").exists()


def test_loader_keeps_last_of_repeated_steps_and_skips_torn_tail(tmp_path: Path):
    # A resumed run re-logs the steps after its last save, and a kill can tear the last line.
    from mezo_elastic.plot import load_metrics

    lines = [{"type": "train", "step": 0, "loss": 3.0, "lr": 1e-3}, {"type": "train", "step": 1, "loss": 2.0, "lr": 1e-3},
             {"type": "train", "step": 1, "loss": 1.5, "lr": 1e-3}, {"type": "eval", "step": 2, "eval_loss": 1.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"type": "tra')
    s = load_metrics(path)
    assert s.train[1]["loss"] == 1.5 and sorted(s.train) == [0, 1] and s.eval[2]["eval_loss"] == 1.0


def test_ema_is_per_step_not_per_logged_point():
    from mezo_elastic.plot import ema

    assert ema([0, 1], [5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0])  # debiased: a constant stays constant
    # Logged every 10 steps: each gap decays the average by 0.9**10, not by 0.9.
    d = 0.9**10
    expected = (d * (1 - d) + (1 - d)) / (d * d * 0.1 + d * (1 - d) + (1 - d))
    sparse = ema([0, 10, 20], [0.0, 1.0, 1.0], 0.9)
    assert sparse[-1] == pytest.approx(expected, rel=1e-12)
    assert sparse[-1] > 0.95  # a per-point EMA would still sit near 0.7 after two points
