"""Rebuild the model at any logged step and save it HF-loadable. CPU only, no process group.

    python -m mezo_elastic.export --run runs/default --step 300 --out exported/
    python -m mezo_elastic.export --run runs/lora --out exported/ [--merge]    # a peft.method=lora run

A LoRA run exports its adapter (a peft adapter directory for the base model); with --merge, the base
model with the adapter merged in, HF-loadable without peft.

A run is fully described by (base model, step log): the nearest checkpoint at or before the step
(or the base model itself) plus one replayed sweep per logged step gives the weights at that step.
So a whole run can be shipped as the base model plus steps.jsonl (about 150 bytes a step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from mezo_elastic import checkpoint
from mezo_elastic.config import from_dict
from mezo_elastic.errors import CheckpointError, ConfigError, MezoError
from mezo_elastic.mezo import MezoOptimizer, use_master_weights
from mezo_elastic.runners.hf import HFRunner


def export(run_dir: Path, out: Path, step: int | None = None, merge: bool = False) -> int:
    """Write the weights after `step` steps (default: the last logged) to `out`; return the step.

    A LoRA run writes its adapter directory, or with `merge` the merged HF model.

    Raises:
        CheckpointError: no run.json, or the log does not reach `step`.
        ConfigError: `merge` for a run without an adapter (peft.method=none).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise CheckpointError(f"{run_dir} has no run.json: not a mezo_elastic output directory")
    info = json.loads((run_dir / "run.json").read_text())
    cfg = from_dict({k: v for k, v in info["config"].items()})
    records = checkpoint.StepLog(run_dir / "steps.jsonl").read()
    if merge and cfg.peft.method == "none":
        raise ConfigError(f"--merge: {run_dir} is a full-weight run (peft.method=none); its export is the whole "
                          f"model already, drop --merge")
    last = records[-1].step + 1 if records else 0
    step = last if step is None else step
    ck = checkpoint.newest_valid_checkpoint(run_dir, at_most=step)
    base = ck[0] if ck else 0
    if step > last and base != step:
        raise CheckpointError(f"--step {step}: the step log of {run_dir} reaches step {last} only")
    runner = HFRunner(cfg, torch.device("cpu"), info["model_path"])
    master = use_master_weights(cfg.mezo, cfg.model.dtype, adapter=cfg.peft.method != "none")
    opt = MezoOptimizer(runner.segments(), cfg.mezo, master)
    if ck:
        runner.load_hf_state_dict(ck[1])
        opt.load_master(ck[1])
    for rec in records:
        if base <= rec.step < step:
            opt.replay(rec)
    opt.clean()  # the last replayed step may have folded in the next perturbation: now theta
    _write_dir(Path(out), runner.save_merged if merge else runner.save_pretrained)
    return step


def _write_dir(out: Path, write) -> None:
    """Write a model directory into a temp sibling, then rename it to `out` (replacing an old one)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    checkpoint.fsync_dir(out.parent)


def main(argv: list[str] | None = None) -> int:
    """CLI: --run OUTPUT_DIR [--step N] --out DIR [--merge]."""
    p = argparse.ArgumentParser(prog="python -m mezo_elastic.export", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="the run's train.output_dir")
    p.add_argument("--step", type=int, default=None, help="weights after this many steps (default: all logged)")
    p.add_argument("--out", required=True, help="directory for the HF model (LoRA runs: the adapter)")
    p.add_argument("--merge", action="store_true", help="LoRA runs: write the base model with the adapter merged in")
    a = p.parse_args(argv)
    try:
        step = export(Path(a.run), Path(a.out), a.step, a.merge)
    except MezoError as e:
        print(f"mezo_elastic.export: error: {e}", file=sys.stderr)
        return 1
    print(f"exported step {step} of {a.run} to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
