"""mezo.estimator=zo_muon on a GPU (hf backend, the built-in model): it learns, a stopped run resumes to the very
same weights, and the step log exported by replay on the CPU gives the GPU run's weights to within one float32
ulp on a few elements (zo/lowrank.py: Philox u and z, an elementwise float64 sum, float64 Newton-Schulz and
product rounded once to float32; the two devices' float64 matmuls sum in other orders, ~1e-15 relative, which
moves a float32 rounding where the exact value lies that close to a boundary: H100, 2026-12-07, 1.19e-7 after
10 steps). The replay takes no forwards, so such a difference never grows through the losses.
Run: `python -m pytest -m gpu -s tests/gpu/test_zo_muon_gpu.py`."""

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
    exported, run = load_file(str(tmp_path / "exported" / "model.safetensors")), final_weights(whole)
    ulps, differing, total = ulps_apart(exported, run)
    summary = json.loads((whole / "metrics.jsonl").read_text().splitlines()[-1])
    print(f"\nzo_muon on cuda: eval loss {summary['first_eval_loss']:.4f} -> {summary['final_eval_loss']:.4f}; "
          f"resume max |d| {d_resume:.3g}; CPU export vs GPU run: max {ulps} ulp, {differing} of {total} "
          f"elements differ (max |d| {max_abs_diff(exported, run):.3g})")
    assert d_resume == 0.0  # the device that made the run: bit for bit
    assert ulps <= 2 and differing <= total // 1000  # the CPU's replay: a rounding here and there, no drift
    assert summary["final_eval_loss"] < summary["first_eval_loss"]


def ulps_apart(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(the most float32 ulps between two same-keyed float32 state dicts, how many elements differ, elements):
    float32's bits read as a sign-magnitude integer order the floats, so their difference counts the floats
    between two values (+0 and -0 are 0 apart)."""
    assert a.keys() == b.keys()

    def order(t: torch.Tensor) -> torch.Tensor:
        i = t.float().contiguous().view(torch.int32).long()
        return torch.where(i >= 0, i, -(i & 0x7FFFFFFF))

    most = differing = total = 0
    for k in a:
        d = (order(a[k]) - order(b[k])).abs()
        most, differing, total = max(most, int(d.max())), differing + int((d > 0).sum()), total + d.numel()
    return most, differing, total
