"""Rebuild the model at any logged step and save it HF-loadable. CPU only, no process group.

    python -m mezo_elastic.export --run runs/default --step 300 --out exported/
    python -m mezo_elastic.export --run runs/lora --out exported/ [--merge]    # a peft.method=lora run
    python -m mezo_elastic.export --run runs/default --step best --out exported/   # the best eval's step

A LoRA run exports its adapter (a peft adapter directory for the base model); with --merge, the base
model with the adapter merged in, HF-loadable without peft.

--out is never a directory export did not write: a new or empty directory, or a previous export (it
holds export.json, the list of what export wrote), which is replaced whole; anything else is refused.

A run is fully described by (base model, step log): the nearest checkpoint at or before the step
(or the base model itself) plus one replayed sweep per logged step gives the weights at that step.
So a whole run can be shipped as the base model plus steps.jsonl (about 150 bytes a step).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

from mezo_elastic.config import from_dict
from mezo_elastic.errors import CheckpointError, ConfigError, MezoError
from mezo_elastic.runners import gguf
from mezo_elastic.runners.hf.runner import HFRunner
from mezo_elastic.state import checkpoint
from mezo_elastic.training.metrics import BEST_KEYS, best_step
from mezo_elastic.zo.factory import make_optimizer
from mezo_elastic.zo.optimizer import use_master_weights

logger = logging.getLogger(__name__)
EXPORT_MARKER = "export.json"  # in every export: what it is and the files export wrote (the only ones it replaces)


def model_path_of(run_dir: Path, stored: str, source: dict | None = None) -> str:
    """The run's base model: run.json keeps it relative to the run directory when it lies inside it
    (the built-in model), else absolute. Runs written before that kept the launch directory's relative
    path: it is tried as given last. A run from a GGUF file (`source`: its path and sha256) loads the
    converted directory, converted again from the file where this machine has none.

    Raises:
        CheckpointError: no candidate is an HF model directory; the GGUF file is gone or changed.
    """
    if source:
        return gguf_base(run_dir, source)
    tried = [Path(stored)] if Path(stored).is_absolute() else [run_dir / stored, Path(stored)]
    for p in tried:
        if (p / "config.json").is_file():
            return str(p.resolve())  # absolute: a LoRA export's adapter_config.json names it
    raise CheckpointError(f"{run_dir}/run.json: base model {stored!r} not found (looked at "
                          f"{', '.join(str(p) for p in tried)}); copy the model there or fix model_path in run.json")


def gguf_base(run_dir: Path, source: dict) -> str:
    """The HF directory converted from the run's GGUF file, whose sha256 must be the one run.json recorded."""
    path = Path(source["path"])
    if not path.is_file():
        raise CheckpointError(f"{run_dir}/run.json: base model {str(path)!r} (a GGUF file, sha256 "
                              f"{source['sha256'][:12]}...) not found; copy it there or fix gguf.path in run.json")
    hf, sha = gguf.hf_dir_for(path)
    if sha != source["sha256"]:
        raise CheckpointError(f"{run_dir}/run.json: {path} has sha256 {sha[:12]}..., but the run trained from "
                              f"{source['sha256'][:12]}...: not the same model file")
    return str(hf)


def _check_gaps(run_dir: Path, gaps: list[tuple[int, int]], base: int, step: int) -> None:
    for lo, hi in gaps:
        if base < hi and lo < step:  # a record in [base, step) is lost
            raise CheckpointError(
                f"--step {step}: {run_dir}/steps.jsonl lost the records taking the run from {lo} to {hi} steps done (corrupt, skipped at "
                f"resume), so the weights after {lo + 1}..{hi - 1} steps cannot be rebuilt; export --step {lo} or "
                f"earlier, or a step at or after a checkpoint from step {hi} on (kept: "
                f"{sorted(s for s, _ in checkpoint.checkpoint_dirs(run_dir)) or 'none'})"
            )


def export(run_dir: Path, out: Path, step: int | None = None, merge: bool = False) -> int:
    """Write the weights after `step` steps (default: the last logged) to `out`; return the step.

    A LoRA run writes its adapter directory, or with `merge` the merged HF model.

    Raises:
        CheckpointError: no run.json, the log does not reach `step` or lost records before it, or the
            weights at `step` are not finite (nothing is written then).
        ConfigError: `merge` for a run without an adapter (peft.method=none).
    """
    run_dir, out = Path(run_dir), Path(out)
    if step is not None and step < 0:
        raise ConfigError(f"--step {step} is not allowed; give the number of steps done, >= 0 (0 = the base model)")
    check_target(out)
    if not (run_dir / "run.json").is_file():
        raise CheckpointError(f"{run_dir} has no run.json: not a mezo_elastic output directory")
    info = json.loads((run_dir / "run.json").read_text())
    cfg = from_dict({k: v for k, v in info["config"].items()})
    if merge and cfg.peft.method == "none":
        raise ConfigError(f"--merge: {run_dir} is a full-weight run (peft.method=none); its export is the whole "
                          f"model already, drop --merge")
    log = checkpoint.StepLog(run_dir / "steps.jsonl")
    records = log.read()
    last = records[-1].step + 1 if records else (log.gaps[-1][1] if log.gaps else 0)
    step = last if step is None else step
    ck = checkpoint.newest_valid_checkpoint(run_dir, at_most=step)
    base = ck[0] if ck else 0
    if step > last and base != step:
        raise CheckpointError(f"--step {step}: the step log of {run_dir} reaches step {last} only")
    _check_gaps(run_dir, log.gaps, base, step)
    runner = HFRunner(cfg, torch.device("cpu"), model_path_of(run_dir, info["model_path"], info.get("gguf")))
    master = use_master_weights(cfg.mezo, cfg.model.dtype, adapter=cfg.peft.method != "none")
    opt = make_optimizer(runner.segments(), cfg.mezo, master, cfg.seed)
    if ck:
        runner.load_hf_state_dict(ck[1])
        opt.load_master(ck[1])
    for rec in records:
        if base <= rec.step < step:
            opt.replay(rec)
    opt.clean()  # the last replayed step may have folded in the next perturbation: now theta
    if cfg.mezo.estimator == "zo_muon" and step > base:
        # its update's float64 matmuls sum in another order on a GPU than here (zo/lowrank.py)
        logger.warning("note: zo_muon steps %d-%d replayed on the CPU; where the run was made on a GPU its weights "
                       "may differ from these by rounding (about one float32 ulp of each tensor's largest weight; "
                       "its final/ and checkpoints are exact)", base + 1, step)
    bad = checkpoint.first_nonfinite(runner.model.named_parameters())
    if bad:
        raise CheckpointError(f"--step {step}: tensor {bad[0]!r} has {bad[1]} non-finite values (the run diverged "
                              f"by then); nothing written. Export an earlier step")
    _write_dir(out, runner.save_merged if merge else runner.save_pretrained,
               {"run": str(run_dir.resolve()), "step": step, "merge": merge})
    return step


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def check_target(out: Path) -> None:
    """--out must be a new or empty directory, or a previous export holding only what export wrote.

    Raises:
        ConfigError: naming the directory (and the files export did not write); nothing is touched.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the exported model")
    # export writes a temp sibling of `out` and renames it into place: the parent must take new files
    # (read-only, under a file, /proc), checked as training checks train.output_dir.
    checkpoint.check_output_dir(out, field="--out", writes_in=out.absolute().parent)
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = out / EXPORT_MARKER
    if not marker.is_file():
        raise ConfigError(f"--out {out} is not empty and is not a previous export (no {EXPORT_MARKER}); export never "
                          f"deletes what it did not write: give a new or empty directory")
    try:
        written = set(json.loads(marker.read_text())["files"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"--out {out}: {marker} is not export's (unreadable); give a new or empty directory") from None
    extra = [f for f in _files(out) if f not in written and f != EXPORT_MARKER]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ConfigError(f"--out {out} is a previous export but also holds files export did not write ({shown}); "
                          f"move them away or give another --out")


def _write_dir(out: Path, write, info: dict) -> None:
    """Write a model directory into a temp sibling with its export.json, then put it in `out`'s place.

    A previous export is renamed aside first and deleted only once the new one is in place, so a crash
    leaves the old or the new export (and at worst a hidden .NAME.old.PID folder), never neither.
    """
    tmp, old = (out.with_name(f".{out.name}.{os.getpid()}.{kind}") for kind in ("tmp", "old"))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        checkpoint.atomic_write_text(tmp / EXPORT_MARKER, json.dumps({**info, "files": _files(tmp)}, indent=1))
    except OSError as e:  # a disk that fills up, a mount gone read-only since check_target
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"--out {out}: writing the export failed ({e.strerror or e}"
                              f"{': ' + str(e.filename) if e.filename else ''}); nothing was replaced") from None
    if out.is_dir() and any(out.iterdir()):  # a previous export (check_target said so)
        os.rename(out, old)
    os.rename(tmp, out)  # onto a missing or empty directory
    checkpoint.fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """CLI: --run OUTPUT_DIR [--step N | --step best [--best-by KEY]] --out DIR [--merge]."""
    p = argparse.ArgumentParser(prog="python -m mezo_elastic.export", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="the run's train.output_dir")
    p.add_argument("--step", default=None, help="weights after this many steps (default: all logged); best = the "
                   "step of the best eval in metrics.jsonl")
    p.add_argument("--best-by", default="", help="with --step best: the eval key to pick by (highest; lowest for "
                   f"*_loss; default: the first present of {', '.join(BEST_KEYS)})")
    p.add_argument("--out", required=True, help="directory for the HF model (LoRA runs: the adapter)")
    p.add_argument("--merge", action="store_true", help="LoRA runs: write the base model with the adapter merged in")
    a = p.parse_args(argv)
    try:
        step = _step_arg(a)
        step = export(Path(a.run), Path(a.out), step, a.merge)
    except MezoError as e:
        print(f"mezo_elastic.export: error: {e}", file=sys.stderr)
        return 1
    print(f"exported step {step} of {a.run} to {a.out}")
    return 0


def _step_arg(a: argparse.Namespace) -> int | None:
    """--step as export() takes it: a number, None, or the best eval's step (printed with its metric)."""
    if a.step is None or a.step.lstrip("-").isdigit():
        if a.best_by:
            raise ConfigError(f"--best-by {a.best_by} picks a step only with --step best")
        return None if a.step is None else int(a.step)
    if a.step != "best":
        raise ConfigError(f"--step {a.step} is not allowed; give a number of steps done (>= 0) or best")
    step, key, value = best_step(Path(a.run), a.best_by)
    print(f"best eval: step {step}, {key}={value:.4f}")
    return step


if __name__ == "__main__":
    sys.exit(main())
