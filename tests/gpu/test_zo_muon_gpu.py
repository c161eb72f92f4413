"""mezo.estimator=zo_muon on a GPU (hf backend, the built-in model): it learns, a stopped run resumes to the very
same weights, and the step log exported by replay on the CPU gives the GPU run's weights (zo/lowrank.py: Philox
u and z, an elementwise float64 sum, float64 Newton-Schulz and product rounded once to float32; two devices'
float64 matmuls could move a float32 rounding about once in 1e12 element-steps). Run: `python -m pytest -m gpu -s tests/gpu/test_zo_muon_gpu.py`."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from helpers import FAST, final_weights, max_abs_diff, train  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from mezo_elastic.export import export  # noqa: E402

ARGS = [*FAST, "--model.device=cuda", "--model.dtype=float32", "--mezo.estimator=zo_muon", "--mezo.perturbations=4",
        "--mezo.zo_muon_rank=8", "--mezo.zo_muon_interval=3", "--mezo.lr=3e-2", "--mezo.zo_muon_vector_lr=1e-3"]


def test_zo_muon_on_cuda_resumes_exactly_and_exports_on_the_cpu(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(whole, *ARGS, "--train.steps=10")
    train(split, *ARGS, "--train.steps=4")
    res = train(split, *ARGS, "--train.steps=10")
    assert "resumed after 4 steps" in res.stderr
    d_resume = max_abs_diff(final_weights(split), final_weights(whole))
    assert export(whole, tmp_path / "exported") == 10  # on the CPU
    d_export = max_abs_diff(load_file(str(tmp_path / "exported" / "model.safetensors")), final_weights(whole))
    summary = json.loads((whole / "metrics.jsonl").read_text().splitlines()[-1])
    print(f"\nzo_muon on cuda: eval loss {summary['first_eval_loss']:.4f} -> {summary['final_eval_loss']:.4f}; "
          f"resume max |d| {d_resume:.3g}; CPU export vs GPU run max |d| {d_export:.3g}")
    assert d_resume == 0.0 and d_export == 0.0
    assert summary["final_eval_loss"] < summary["first_eval_loss"]
