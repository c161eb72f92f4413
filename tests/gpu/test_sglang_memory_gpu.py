"""model.mem_fraction_static too small on the sglang backend: one line with the minimum, and that minimum works.

Through the real entry point on one GPU:
    PYTHONPATH=. python -m pytest -q -m gpu tests/gpu/test_sglang_memory_gpu.py
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import FAST, train

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("sglang", reason="needs sglang (pip install 'sglang==0.5.17')")

from sglang_models import TINY, save_random_model  # noqa: E402


def test_too_small_fraction_is_one_line_and_its_minimum_trains(tmp_path, tiny_inputs):
    model = save_random_model(TINY["llama_untied"], tmp_path / "model", seed=0)  # vocab 1000 >= the 31 words
    builtin = Path(tiny_inputs[0].split("=", 1)[1])
    for f in builtin.glob("tokenizer*"):
        shutil.copy(f, model / f.name)
    args = [f"--model.path={model}", *tiny_inputs[1:], *FAST, "--model.backend=sglang", "--model.dtype=bfloat16",
            "--train.steps=2", "--data.max_length=64"]
    res = train(tmp_path / "small", *args, "--model.mem_fraction_static=0.0001", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-4000:]
    (line,) = [l for l in res.stderr.splitlines() if "is too small" in l]
    need = float(re.search(r"--model\.mem_fraction_static=([0-9.]+) or more", line).group(1))
    assert 0.0001 < need < 1
    ok = train(tmp_path / "enough", *args, f"--model.mem_fraction_static={need}", check=False)
    assert ok.returncode == 0, f"the suggested minimum {need} did not train:\n{ok.stderr[-4000:]}"
