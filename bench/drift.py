"""Restore drift of in-place perturbation in low precision, and the master-weights mode that removes it.

Runs the live sweep sequence of N MeZO steps (perturb +eps, flip to -eps, restore + update + fold)
with lr = 0, so the weights should end exactly where they started; whatever is left is drift from
rounding each sweep to the weight dtype. Prints a table. CPU is enough (built-in tiny model):

    python bench/drift.py [--steps 100 1000] [--eps 1e-3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from mezo_elastic.config import MezoConfig, parse_args
from mezo_elastic.data import builtin
from mezo_elastic.runners.hf.runner import HFRunner
from mezo_elastic.zo.optimizer import MezoOptimizer, StepRecord
from mezo_elastic.zo.perturb import step_seed


def drift(model_dir: Path, dtype: str, master: bool, steps: int, eps: float) -> tuple[float, float, int]:
    """(max abs drift, relative L2 drift, extra bytes held) after `steps` zero-lr steps."""
    cfg = parse_args([f"--model.dtype={dtype}", f"--mezo.eps={eps}"])
    runner = HFRunner(cfg, torch.device("cpu"), str(model_dir))
    before = {k: v.double() for k, v in runner.hf_state_dict().items()}
    opt = MezoOptimizer(runner.segments(), MezoConfig(eps=eps), master_weights=master)
    for t in range(steps):
        s = step_seed(0, t)
        opt.perturb(s, +1.0)
        opt.perturb(s, -1.0)
        opt.update(StepRecord(step=t, seeds=[s], grads=[0.0], lr=0.0, weight_decay=0.0), step_seed(0, t + 1))
    opt.clean()
    after = {k: v.double() for k, v in runner.hf_state_dict().items()}
    num = sum(((after[k] - before[k]) ** 2).sum() for k in before) ** 0.5
    den = sum((before[k] ** 2).sum() for k in before) ** 0.5
    worst = max((after[k] - before[k]).abs().max().item() for k in before)
    extra = sum(s.master.numel() * 4 for s in opt.segments if s.master is not None)
    return worst, float(num / den), extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--eps", type=float, default=1e-3)
    a = ap.parse_args()
    model = builtin.ensure_tiny_model(Path(tempfile.mkdtemp()))
    n = sum(v.numel() for v in HFRunner(parse_args([]), torch.device("cpu"), str(model)).hf_state_dict().values())
    print(f"built-in tiny Llama, {n} parameters, eps={a.eps}, lr=0 (weights should not move)\n")
    print("| dtype | mode | steps | max abs drift | relative L2 drift | extra memory |")
    print("|---|---|---|---|---|---|")
    for dtype in ("float32", "bfloat16", "float16"):
        for master in (False, True):
            for steps in a.steps:
                worst, rel, extra = drift(model, dtype, master, steps, a.eps)
                mode = "fp32 master" if master else "in place"
                print(f"| {dtype} | {mode} | {steps} | {worst:.3g} | {rel:.3g} | {extra / n:.0f} B/param |")


if __name__ == "__main__":
    main()
