"""Time to accuracy: wall-clock and forward passes until eval accuracy (reward) first reaches the reference's best.

    python bench/time_to_accuracy.py --smoke --out /tmp/tta             # CPU, built-in model, < 1 min
    python bench/time_to_accuracy.py --model $MEZO_REAL_GGUF --out $OUT/tta   # one GPU, the real model

The reference is MeZO as princeton-nlp/MeZO runs it (bench/bench_step.py's ReferenceMeZO: HF forwards,
torch.normal per tensor, 4 sweeps and 2 forwards a step, np.random step seeds), scoring each batch with
the task's loss (classification: cross-entropy over the candidates; reward: -exact_match of greedy HF
generations, MeZO's non-differentiable path). Its lr is the best of a small grid (--ref-lrs, eps
--eps) by best eval metric within the step budget on seed 0; that lr then runs on every seed. The
target is the median over seeds of the reference's best eval metric.

Ours is the trainer through its entry point (python -m mezo_elastic.train; --backend sglang on a GPU,
hf on the CPU) with each estimator of --estimators: spsa with the reference's lr and eps (the same
algorithm), fzoo with K = --fzoo-k Rademacher directions and lr = scale * lr_ref * median|g_ref| for
each --fzoo-scales value on seed 0 (FZOO's g is normalised by the losses' std, so its lr is MeZO's
times the size of MeZO's projected gradient; the median over the reference's nonzero g), the best
scale then on every seed.

Every method gets the reference's forward budget (fzoo: steps x 2 / (K + 1)) and evaluates as often in
forwards. Time counts training only (from metrics.jsonl: evaluation and start-up taken out, the same on
both sides); forwards = steps x forward passes a step (reference and spsa 2, fzoo K + 1). Per method the
median over seeds (a seed that never reaches the target counts as infinite). Prints a table, writes
OUT/tta.json. Tasks: bench/real_tasks.py (real model) or the built-in task (no --model).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests" / "gpu")]

from bench_step import ReferenceMeZO  # noqa: E402

from mezo_elastic.config import from_dict  # noqa: E402
from mezo_elastic.data import builtin  # noqa: E402
from mezo_elastic.data.jsonl import BatchSchedule  # noqa: E402
from mezo_elastic.objectives import make_objective  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402
from mezo_elastic.training.inputs import load_inputs  # noqa: E402

OBJECTIVE = {"cls": "classification", "reward": "reward"}
METRIC = {"cls": "accuracy", "reward": "reward"}


class TaskReference(ReferenceMeZO):
    """The reference step with the task's loss as zo_forward (MeZO's train_as_classification / non_diff)."""

    def __init__(self, runner: HFRunner, objective, eps: float, lr: float) -> None:
        super().__init__(runner.model, eps, lr)
        self.objective = objective

    def zo_forward(self, inputs) -> torch.Tensor:
        examples, step = inputs
        return torch.tensor(float(self.objective.losses(examples, step).mean()))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def task_config(args, task: str, seed: int, lr: float, paths: dict) -> dict:
    """The config (nested dict) both sides use for `task`: model, data, generation, batch, seeds."""
    smoke = args.smoke
    return {
        "seed": seed,
        "model": {"backend": "hf", "path": paths["model"], "dtype": args.dtype, "device": args.device},
        "data": {"objective": OBJECTIVE[task], "path": paths[f"{task}_train"], "eval_path": paths[f"{task}_eval"],
                 "seed": 1234 + seed, "verbatim": not smoke, "eval_examples": args.eval_examples,
                 "reward": "exact_match", "max_length": 128},
        "generate": {"max_new_tokens": 1 if smoke else 6},
        "mezo": {"lr": lr, "eps": args.eps},
        "train": {"steps": args.steps[task], "batch_size": args.batch_size},
    }


def run_reference(args, task: str, seed: int, lr: float, paths: dict) -> dict:
    """One reference run: eval curve [(step, train seconds, metric)] and the projected gradients."""
    cfg = from_dict(task_config(args, task, seed, lr, paths))
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    runner = HFRunner(cfg, device, paths["model"])
    tok, data, stage = load_inputs(cfg, True)  # model.path is set: nothing is staged
    stage.discard()
    objective = make_objective(cfg, runner, tok)
    ref = TaskReference(runner, objective, args.eps, lr)
    sched = BatchSchedule(len(data.train), args.batch_size, cfg.data.seed)
    np.random.seed(seed)  # the reference draws its step seeds from numpy

    def metric(step: int) -> float:
        sums = objective.eval_sums(data.eval, step)
        return sums["correct" if task == "cls" else "reward"] / len(data.eval)

    curve, grads, train_s = [(0, 0.0, metric(0))], [], 0.0
    for t in range(args.steps[task]):
        batch = [data.train[i] for i in sched.global_batch(t)]
        sync()
        t0 = time.perf_counter()
        ref.zo_step((batch, t))
        ref.zo_update()
        sync()
        train_s += time.perf_counter() - t0
        grads.append(abs(ref.projected_grad))
        if (t + 1) % args.eval_every == 0 or t + 1 == args.steps[task]:
            curve.append((t + 1, train_s, metric(t + 1)))
    runner.close()
    nonzero = [g for g in grads if g > 0]  # a greedy reward often moves no argmax: g = 0 on most steps
    return {"lr": lr, "eps": args.eps, "seed": seed, "curve": curve, "forwards_per_step": 2,
            "median_abs_grad": float(np.median(nonzero)) if nonzero else 1.0}


def train_seconds(lines: list[dict]) -> dict[int, float]:
    """Training seconds at each eval step of one run's metrics.jsonl: run_seconds less the start-up (up to the
    step-0 eval) and less every later eval (its line's run_seconds minus the train line's at the same step)."""
    train = {m["step"]: m["run_seconds"] for m in lines if m["type"] == "train"}
    evals = [m for m in lines if m["type"] == "eval"]
    start, spent, out = evals[0]["run_seconds"], 0.0, {0: 0.0}
    for m in evals[1:]:
        out[m["step"]] = train[m["step"]] - start - spent
        spent += m["run_seconds"] - train[m["step"]]
    return out


def run_ours(args, task: str, seed: int, estimator: str, lr: float, paths: dict, out: Path) -> dict:
    """One run of the trainer (python -m mezo_elastic.train), its eval curve read back from metrics.jsonl."""
    cfg = task_config(args, task, seed, lr, paths)
    fwd = {"spsa": 2, "fzoo": args.fzoo_k + 1}[estimator]
    # the reference's forward budget (2 a step), and evals as often in forwards, whatever the estimator
    every = max(1, round(args.eval_every * 2 / fwd))
    cfg["model"]["backend"] = args.backend
    cfg["train"].update(steps=every * -(-args.steps[task] // args.eval_every), eval_every=every, log_every=every,
                        save_final=False, progress=False, output_dir=str(out))
    cfg["checkpoint"] = {"every": 0}
    cfg["mezo"].update(estimator=estimator)
    if estimator == "fzoo":
        cfg["mezo"].update(perturbations=args.fzoo_k, distribution="rademacher")
    flags = [f"--{s}.{k}={v}" for s, sub in cfg.items() if isinstance(sub, dict) for k, v in sub.items()]
    flags.append(f"--seed={seed}")
    res = subprocess.run([sys.executable, "-m", "mezo_elastic.train", *flags], cwd=REPO, capture_output=True,
                         text=True, timeout=args.run_timeout)
    if res.returncode != 0:
        raise SystemExit(f"{estimator} run failed ({out}):\n{res.stderr[-3000:]}")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    secs = train_seconds(lines)
    key = f"eval_{METRIC[task]}"
    curve = [(m["step"], secs[m["step"]], m[key]) for m in lines if m["type"] == "eval"]
    return {"lr": lr, "eps": args.eps, "seed": seed, "curve": curve, "forwards_per_step": fwd}


def best(run: dict) -> float:
    return max(m for _, _, m in run["curve"])


def reach(run: dict, target: float) -> tuple[float, float, float]:
    """(steps, seconds, forwards) when the eval metric first reaches `target`; inf when it never does."""
    for step, secs, m in run["curve"]:
        if m >= target - 1e-9:
            return step, secs, step * run["forwards_per_step"]
    return (float("inf"),) * 3


def tune_then_seeds(make, values: list[float], seeds: list[int]) -> list[dict]:
    """Runs of the best value of a grid (by best eval metric on seeds[0]) on every seed."""
    first = [make(v, seeds[0]) for v in values]
    top = max(first, key=best)
    return [top] + [make(top["value"], s) for s in seeds[1:]]


def summarise(runs: list[dict], target: float) -> dict:
    """Median over seeds of (steps, seconds, forwards) to the target, and of the best metric."""
    hits = [reach(r, target) for r in runs]
    med = [statistics.median(h[i] for h in hits) for i in range(3)]
    return {"lr": runs[0]["lr"], "eps": runs[0]["eps"], "best_metric": statistics.median(best(r) for r in runs),
            "steps": med[0], "seconds": med[1], "forwards": med[2], "reached": sum(h[0] < float("inf") for h in hits),
            "runs": runs}


def bench_task(args, task: str, paths: dict, out: Path) -> dict:
    """The reference (grid, then seeds), the target, and ours with each estimator, for one task."""
    seeds = list(range(args.seeds))

    def ref(lr: float, seed: int) -> dict:
        return {**run_reference(args, task, seed, lr, paths), "value": lr}

    refs = tune_then_seeds(ref, args.ref_lrs, seeds)
    target = statistics.median(best(r) for r in refs)
    result = {"target": target, "reference": summarise(refs, target), "ours": {}}
    lr_ref = refs[0]["lr"]
    for est in args.estimators:
        if est == "spsa":
            runs = [run_ours(args, task, s, "spsa", lr_ref, paths, out / f"{task}-spsa-s{s}") for s in seeds]
        else:
            g = refs[0]["median_abs_grad"]

            def ours(scale: float, seed: int, est=est, g=g) -> dict:
                run = run_ours(args, task, seed, est, scale * lr_ref * g, paths, out / f"{task}-{est}-x{scale:g}-s{seed}")
                return {**run, "value": scale}

            runs = tune_then_seeds(ours, args.fzoo_scales, seeds)
        result["ours"][est] = summarise(runs, target)
    return result


def ensure_hf_model(model: str, out: Path) -> str:
    """An HF directory for `model`: itself, or a .gguf file (or a directory holding one) dequantized once
    through transformers into out/hf-model (shared/notes/gpu-real-model.md's recipe)."""
    p = Path(model)
    if p.is_dir() and (p / "config.json").is_file():
        return str(p)
    gguf = p if p.suffix == ".gguf" else next(iter(sorted(p.glob("*.gguf"))), None)
    if gguf is None or not gguf.is_file():
        raise SystemExit(f"--model {model}: neither an HF model directory nor a .gguf file")
    dst = out / "hf-model"
    if (dst / "config.json").is_file():
        return str(dst)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained; a fresh one does not
    fresh = type(src)(config)
    fresh.load_state_dict(src.state_dict())
    fresh.tie_weights()
    tmp = out / ".hf-model.tmp"
    fresh.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    tmp.rename(dst)
    return str(dst)


def task_paths(args, out: Path) -> dict:
    """Model and JSONL paths: the built-in model and task (--smoke / no --model) or the real model and
    bench/real_tasks.py's files."""
    if not args.model:
        root = out / "builtin"
        paths = {"model": str(builtin.ensure_tiny_model(root))}
        for task in ("cls", "reward"):
            paths[f"{task}_train"], paths[f"{task}_eval"] = map(str, builtin.ensure_task(root, OBJECTIVE[task]))
        return paths
    from real_tasks import write_tasks

    paths = {k: str(v) for k, v in write_tasks(out / "tasks").items()}
    paths["model"] = ensure_hf_model(args.model, out)
    return paths


def fmt(v: float, unit: str = "") -> str:
    return "not reached" if v == float("inf") else f"{v:.4g}{unit}"


def ratio(ref: float, ours: float) -> str:
    """ref / ours as 'N.NNx', or n/a where either side never reached the target (or took no time)."""
    finite = all(0 < v < float("inf") for v in (ref, ours))
    return f"{ref / ours:.2f}x" if finite else "n/a"


def table(result: dict) -> str:
    """Markdown: per task, the reference and ours side by side (medians over seeds)."""
    lines = [f"{result['card']}; torch {result['torch']}; {result['date']}; {result['seeds']} seeds; "
             f"backend {result['backend']}\n",
             "| task | method | lr | target | best (median) | seeds reaching | steps | forwards | train s | "
             "speed-up (s) | speed-up (forwards) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task, r in result["tasks"].items():
        ref = r["reference"]
        for name, s in [("reference MeZO", ref)] + [(f"ours, {k}", v) for k, v in r["ours"].items()]:
            lines.append(f"| {task} | {name} | {s['lr']:.3g} | {r['target']:.3f} | {s['best_metric']:.3f} | "
                         f"{s['reached']}/{result['seeds']} | {fmt(s['steps'])} | {fmt(s['forwards'])} | "
                         f"{fmt(s['seconds'])} | {ratio(ref['seconds'], s['seconds'])} | "
                         f"{ratio(ref['forwards'], s['forwards'])} |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory: tta.json, run directories, task files")
    p.add_argument("--smoke", action="store_true", help="CPU, built-in model and task, tiny budget (< 1 min)")
    p.add_argument("--model", default="", help="HF directory or .gguf (the real model); empty = built-in")
    p.add_argument("--tasks", default="cls,reward")
    p.add_argument("--estimators", default="spsa,fzoo")
    p.add_argument("--seeds", type=int, default=None, help="default 3 (smoke: 1)")
    p.add_argument("--backend", default="", help="ours: sglang or hf (default: sglang on CUDA, else hf)")
    p.add_argument("--ref-lrs", default="", help="reference lr grid (default: smoke 1e-3,3e-3; else 3e-6,1e-5,3e-5)")
    p.add_argument("--eps", type=float, default=None, help="default 1e-3 (smoke 1e-2: the tiny model's argmax)")
    p.add_argument("--fzoo-k", type=int, default=None, help="fzoo: directions a step (FZOO's N; default 8, smoke 4)")
    p.add_argument("--fzoo-scales", default="", help="fzoo lr = scale * lr_ref * median|g_ref| (default 2; smoke 2)")
    p.add_argument("--steps-cls", type=int, default=None, help="reference step budget (default 300; smoke 30)")
    p.add_argument("--steps-reward", type=int, default=None, help="reference step budget (default 150; smoke 20)")
    p.add_argument("--eval-every", type=int, default=None, help="default 25 (smoke 10)")
    p.add_argument("--eval-examples", type=int, default=None, help="default 200 (smoke 64)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--run-timeout", type=float, default=600)
    a = p.parse_args(argv)
    smoke = a.smoke or not a.model
    cuda = torch.cuda.is_available() and not a.smoke
    a.seeds = a.seeds or (1 if a.smoke else 3)
    a.backend = a.backend or ("sglang" if cuda else "hf")
    a.device, a.dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    a.ref_lrs = [float(x) for x in (a.ref_lrs or ("1e-3,3e-3" if smoke else "3e-6,1e-5,3e-5")).split(",")]
    a.fzoo_scales = [float(x) for x in (a.fzoo_scales or "2").split(",")]
    a.fzoo_k = a.fzoo_k or (4 if a.smoke else 8)
    a.eps = a.eps or (1e-2 if smoke else 1e-3)
    a.steps = {"cls": a.steps_cls or (30 if a.smoke else 300), "reward": a.steps_reward or (20 if a.smoke else 150)}
    a.eval_every = a.eval_every or (10 if a.smoke else 25)
    a.eval_examples = a.eval_examples or (64 if a.smoke else 200)
    a.tasks, a.estimators = a.tasks.split(","), a.estimators.split(",")
    a.smoke = smoke
    return a


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = task_paths(args, out)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU {platform.processor() or platform.machine()}"
    result = {"card": card, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "seeds": args.seeds,
              "backend": args.backend, "model": args.model or "built-in", "args": {k: v for k, v in vars(args).items()},
              "tasks": {}}
    for task in args.tasks:
        result["tasks"][task] = bench_task(args, task, paths, out)
        (out / "tta.json").write_text(json.dumps(result, indent=1, default=str))  # each task as it ends
    print(table(result))
    return result


if __name__ == "__main__":
    main()
