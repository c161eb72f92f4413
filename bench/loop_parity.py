"""Ours' step loop against MeZO's own, step by step on the same z, seeds and batches: is ours' spsa the reference
algorithm, and from which step on do the two part?

    python bench/loop_parity.py --model SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/lp --steps 30   # real model, cls
    python bench/loop_parity.py --smoke --out /tmp/lp                                              # CPU, seconds
    python bench/loop_parity.py --model ... --ours hf:bfloat16 --device cuda --steps 300           # 16-bit's share

Why: ours' spsa (bf16 on SGLang, fp32 masters) fell back to chance past ~1600 steps on the real model's
classification task where the float32 reference MeZO climbed on (docs/benchmarks.md#time-to-accuracy). The two
runs drew different z (ours: the package's Philox; the reference: torch.normal), so their curves compare only
statistically. Here the reference loop (bench_step.ReferenceMeZO's order of operations: +eps z, -2 eps z, +eps z in
place, then w -= lr g z; float32) draws ours' z for ours' step seeds and trains on ours' batches, so a step of
ours in float32 on hf (--ours hf:float32, the default) and the reference's should give the same g up to float32
rounding (ours fuses restore, update and the next perturbation in one sweep: a few ulps a step). A g that parts
from the reference's within a few steps names a difference in the loop (a sign, a missed tensor, the batch, the
loss); one that stays within rounding clears ours' loop of the fall-back, leaving the numerics (--ours hf:bfloat16,
sglang:bfloat16: how far each 16-bit forward's g is from float32's along one trajectory, and how that grows).

Ours is `python -m mezo_elastic.train` (its step log's g and loss); the reference runs in this process, once per
settings: OUT/reference-s<seed>-<steps>.json serves every --ours after it. Output: the table (stdout and
OUT/loop_parity.md; with --eval-every, both sides' eval accuracy) and OUT/loop_parity.json (every step's g and loss
on both sides).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from first_order_top import task_files  # noqa: E402  (the real model's cls task, or the built-in's)
from g_noise import compare  # noqa: E402

from mezo_elastic.config import from_dict  # noqa: E402
from mezo_elastic.data.jsonl import BatchSchedule  # noqa: E402
from mezo_elastic.objectives import make_objective  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402
from mezo_elastic.state.checkpoint import StepLog, atomic_write_text  # noqa: E402
from mezo_elastic.training.inputs import load_inputs  # noqa: E402
from mezo_elastic.zo.cpu_sweep import z_values  # noqa: E402
from mezo_elastic.zo.optimizer import seeds_for_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory: loop_parity.md, .json, ours' run, task files")
    p.add_argument("--smoke", action="store_true", help="CPU, the built-in model and classification task")
    p.add_argument("--model", default="", help="HF directory or .gguf (the real model: bench/real_tasks.py's cls task)")
    p.add_argument("--ours", default="hf:float32", help="ours' backend:dtype (hf:float32, hf:bfloat16, sglang:bfloat16)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-5, help="both sides' lr (the classification verdict's)")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="the run seed (ours' step seeds; data seed 1234 + seed)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=0, help="eval accuracy on both sides every this many steps "
                   "(and at step 0; 0 = none): a long run's curve, ours' and the reference's on the same z")
    p.add_argument("--eval-examples", type=int, default=200, help="eval rows of each eval")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda where there is one; --smoke: cpu)")
    a = p.parse_args(argv)
    if not a.model and not a.smoke:
        p.error("--model is needed (an HF directory or .gguf), or --smoke for the built-in model")
    if a.ours.count(":") != 1:
        p.error(f"--ours {a.ours!r}: give backend:dtype, e.g. hf:float32")
    a.device = a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    return a


def config(a: argparse.Namespace, model: str, train: str, evl: str, verbatim: bool, lr: float,
           backend: str, dtype: str) -> dict:
    """The run's config (nested dict), as bench/tta/runners.base_config makes it; evals every --eval-every steps
    (0: only ours' trainer's at the start and end, on a few rows, unused)."""
    return {"seed": a.seed,
            "model": {"backend": backend, "path": model, "dtype": dtype, "device": a.device},
            "data": {"objective": "classification", "path": train, "eval_path": evl, "seed": 1234 + a.seed,
                     "verbatim": verbatim, "eval_examples": a.eval_examples if a.eval_every else 16},
            "mezo": {"lr": lr, "eps": a.eps},
            "train": {"steps": a.steps, "batch_size": a.batch_size, "eval_every": a.eval_every, "log_every": 1,
                      "save_final": False, "progress": False},
            "checkpoint": {"every": 0}}


def run_ours(cfg: dict, work: Path) -> tuple[list[tuple[float, float]], list[tuple[int, float]]]:
    """(g, loss) of every step of ours' trainer on `cfg`, from its step log; (step, eval accuracy) of its evals."""
    flags = [f"--{s}.{k}={v}" for s, sub in cfg.items() if isinstance(sub, dict) for k, v in sub.items()]
    flags += [f"--seed={cfg['seed']}", f"--train.output_dir={work}"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "mezo_elastic.train", *flags], cwd=REPO, env=env,
                         capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"ours' run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    evals = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    curve = [(e["step"], e["eval_accuracy"]) for e in evals if e["type"] == "eval"] if cfg["train"]["eval_every"] else []
    return [(rec.grads[0], rec.loss) for rec in StepLog(work / "steps.jsonl").read()], curve


def run_reference(cfg: dict, steps: int) -> tuple[list[tuple[float, float]], list[tuple[int, float]]]:
    """(g, loss) of every step of MeZO's loop (float32, in place, torch ops) with ours' z, seeds and batches; (step,
    eval accuracy) of its evals (train.eval_every, data.eval_examples rows, as ours' trainer takes them)."""
    c = from_dict(cfg)
    runner = HFRunner(c, torch.device(c.model.device), c.model.path)
    # MeZO's forwards: per-call batches; evals through the runner's scoring graphs where it has them (CUDA),
    # as bench/tta's reference does (the graphs capture again when the weights' storage moved: not here)
    graphs, runner.graphs = runner.graphs, None
    tok, data, stage = load_inputs(c, True)
    stage.discard()
    objective = make_objective(c, runner, tok)
    sched = BatchSchedule(len(data.train), c.train.batch_size, c.data.seed)
    named = [(seg.name, seg.tensor) for seg in runner.segments()]  # ours' trainable set: every weight, tied once
    out, curve = [], []

    def evaluate(step: int) -> None:
        runner.graphs = graphs
        try:
            curve.append((step, objective.eval_sums(data.eval, step)["correct"] / len(data.eval)))
        finally:
            runner.graphs = None

    every = c.train.eval_every
    with torch.inference_mode():
        if every:
            evaluate(0)
        for t in range(steps):
            seed = seeds_for_step(c.seed, t, "dp", 1)[0]
            zs = [z_values(seed, name, 0, w.numel(), c.mezo.distribution, w.device, None).view_as(w)
                  for name, w in named]
            batch = [data.train[i] for i in sched.global_batch(t)]

            def shift(scale: float) -> None:
                for (_, w), z in zip(named, zs):
                    w.copy_(w + scale * z * c.mezo.eps)  # MeZO: param.data = param.data + scaling_factor * z * eps

            shift(1.0)
            lp = float(objective.losses(batch, t).mean())
            shift(-2.0)
            lm = float(objective.losses(batch, t).mean())
            shift(1.0)
            g = (lp - lm) / (2 * c.mezo.eps)
            for (_, w), z in zip(named, zs):
                w.copy_(w - c.mezo.lr * (g * z))  # MeZO's zo_update, no weight decay
            out.append((g, (lp + lm) / 2))
            if every and ((t + 1) % every == 0 or t + 1 == steps):
                evaluate(t + 1)
    runner.graphs = graphs
    runner.close()
    return out, curve


def table(ours: list[tuple[float, float]], ref: list[tuple[float, float]], label: str) -> tuple[str, dict]:
    """Per step g and loss on both sides and |g_ours - g_ref| / rms(g_ref); the summary numbers."""
    rms = math.sqrt(sum(g * g for g, _ in ref) / len(ref)) or 1.0
    rel = [abs(go - gr) / rms for (go, _), (gr, _) in zip(ours, ref)]
    first_off = next((i for i, r in enumerate(rel) if r > 1e-3), None)
    lines = [f"| step | g reference | g ours ({label}) | \\|g_ours - g_ref\\| / rms(g_ref) | loss reference | loss ours |",
             "|---:|---:|---:|---:|---:|---:|"]
    every = 1 if len(rel) <= 60 else len(rel) // 40  # a long run: 40 rows, and the windows below
    for t, ((go, lo), (gr, lr_), r) in enumerate(zip(ours, ref, rel)):
        if t % every == 0 or t == len(rel) - 1:
            lines.append(f"| {t} | {gr:.5g} | {go:.5g} | {r:.2e} | {lr_:.6f} | {lo:.6f} |")
    if every > 1:  # where the two part: g's correlation and the mean train loss, a tenth of the run at a time
        lines += ["", "| steps | corr(g_ours, g_ref) | median rel | mean loss reference | mean loss ours |",
                  "|---|---:|---:|---:|---:|"]
        w = max(1, len(rel) // 10)
        for lo_ in range(0, len(rel), w):
            o, r_ = ours[lo_ : lo_ + w], ref[lo_ : lo_ + w]
            corr = compare([g for g, _ in o], [g for g, _ in r_])["corr"]
            lines.append(f"| {lo_}-{lo_ + len(o) - 1} | {corr:.3f} | "
                         f"{sorted(rel[lo_ : lo_ + w])[len(o) // 2]:.2e} | {sum(x for _, x in r_) / len(r_):.4f} | "
                         f"{sum(x for _, x in o) / len(o):.4f} |")
    summary = {"steps": len(rel), "rms_g_ref": rms, "max_rel": max(rel), "median_rel": sorted(rel)[len(rel) // 2],
               "first_step_over_1e-3": first_off,
               "sign_agreement": sum((go > 0) == (gr > 0) for (go, _), (gr, _) in zip(ours, ref)) / len(rel)}
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, train, evl, verbatim = task_files(a, out)
    lr = 1e-3 if a.smoke else a.lr  # the built-in preset's lr on the built-in model
    backend, dtype = a.ours.split(":")
    print(f"ours ({a.ours}): {a.steps} steps ...", flush=True)
    ours, ours_curve = run_ours(config(a, model, train, evl, verbatim, lr, backend, dtype),
                                out / f"ours-{backend}-{dtype}")
    # The reference depends on the settings only, not on --ours: kept in OUT, one run serves every --ours
    ref_cfg = config(a, model, train, evl, verbatim, lr, "hf", "float32")
    key = {k: ref_cfg[k] for k in ("seed", "data", "mezo", "train")}
    key["model"] = Path(model).name
    ref_file = out / f"reference-s{a.seed}-{a.steps}.json"
    stored = json.loads(ref_file.read_text()) if ref_file.is_file() else {}
    if stored.get("key") == json.loads(json.dumps(key)):
        print(f"reference (hf:float32, ours' z): {ref_file} (the same settings)", flush=True)
        ref, ref_curve = [tuple(x) for x in stored["steps"]], [tuple(x) for x in stored["curve"]]
    else:
        print(f"reference (hf:float32, ours' z): {a.steps} steps ...", flush=True)
        ref, ref_curve = run_reference(ref_cfg, a.steps)
        atomic_write_text(ref_file, json.dumps({"key": key, "steps": ref, "curve": ref_curve}))
    text, summary = table(ours, ref, a.ours)
    if ref_curve:
        acc = dict(ours_curve)
        text += ("\n\n| step | eval accuracy, reference | eval accuracy, ours |\n|---:|---:|---:|\n"
                 + "\n".join(f"| {t} | {v:.3f} | {acc[t]:.3f} |" if t in acc else f"| {t} | {v:.3f} | - |"
                              for t, v in ref_curve))
    name = Path(a.model).name if a.model else "the built-in tiny model"
    head = (f"{a.device}; torch {torch.__version__}; model {name}; classification, batch {a.batch_size}, "
            f"lr {lr}, eps {a.eps}, seed {a.seed}; ours {a.ours} against the reference loop in float32 with ours' z\n")
    tail = (f"\nmax |g_ours - g_ref| / rms(g_ref) = {summary['max_rel']:.2e} (median {summary['median_rel']:.2e}, "
            f"rms(g_ref) {summary['rms_g_ref']:.4g}); first step over 1e-3: {summary['first_step_over_1e-3']}; "
            f"sign agreement {summary['sign_agreement']:.2f}\n")
    print(head + "\n" + text + "\n" + tail)
    atomic_write_text(out / "loop_parity.md", head + "\n" + text + "\n" + tail)
    result = {"settings": {k: v for k, v in vars(a).items()}, "lr": lr, "summary": summary,
              "ours": ours, "reference": ref, "ours_curve": ours_curve, "reference_curve": ref_curve}
    atomic_write_text(out / "loop_parity.json", json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
