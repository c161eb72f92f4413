"""One run of a method on a task: the reference MeZO in this process, ours through python -m mezo_elastic.train.

Both return the same record: {"task", "method", "lr", "eps", "seed", "forwards_per_step", "n_eval", "curve",
"settings", ...}, curve = [{"step", "seconds", "forwards", "metric"}] with step 0 first. Seconds count
training only (start-up and evaluation taken out, the same on both sides).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tta.curves import Rule, should_stop

REPO = Path(__file__).resolve().parents[2]
# The trainer's eval lines on CUDA (training/evaluation.py gpu_memory): the allocator's peak so far and the
# fp32 master copy's share; the reference's points carry the same keys (no master: 0).
MEMORY_KEYS = ("gpu_peak_gib", "master_gib")
METRIC_KEY = {"accuracy": "correct", "reward": "reward", "loss": "loss"}  # eval_sums key, per metric
DEFAULT_METRIC = {"classification": "accuracy", "reward": "reward", "lm": "loss"}


@dataclass(frozen=True)
class Task:
    """A task the bench runs: its objective, files, metric and the reference's step budget."""

    name: str
    objective: str  # classification | reward | lm
    train: str
    eval: str
    metric: str  # accuracy | reward | loss
    steps: int  # the reference's step budget (its forwards budget: 2 a step)
    reward: str = "exact_match"
    verbatim: bool = False
    max_new_tokens: int = 6


@dataclass(frozen=True)
class Method:
    """What a run of ours sets beyond the task: estimator, eps and the mezo settings of its population."""

    estimator: str  # spsa | fzoo | es | gv | zo_muon ("reference" for the reference)
    eps: float
    forwards_per_step: int
    mezo: tuple = ()  # extra (key, value) mezo settings
    model: tuple = ()  # extra (key, value) model settings (zo_muon: the hf backend, whatever --backend says)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def dtype_of(args, method: Method) -> str:
    """The weights' dtype of a method's runs: --ref-dtype for the reference (MeZO's own default, float32:
    princeton-nlp/MeZO's large_models/run.py loads float32 unless --load_float16/--load_bfloat16), --dtype for
    ours (bfloat16 on a GPU, with the fp32 master weights mezo.master_weights=auto keeps in 16-bit dtypes)."""
    return args.ref_dtype if method.estimator == "reference" else args.dtype


def base_config(args, task: Task, seed: int, lr: float, eps: float, model: str, dtype: str) -> dict:
    """The config (nested dict) both sides use: model, data, generation, batch, seeds."""
    return {
        "seed": seed,
        "model": {"backend": "hf", "path": model, "dtype": dtype, "device": args.device},
        "data": {"objective": task.objective, "path": task.train, "eval_path": task.eval, "seed": 1234 + seed,
                 "verbatim": task.verbatim, "eval_examples": args.eval_examples, "reward": task.reward,
                 "max_length": args.max_length},
        "generate": {"max_new_tokens": task.max_new_tokens},
        "mezo": {"lr": lr, "eps": eps},
        "train": {"steps": task.steps, "batch_size": args.batch_size},
    }


def file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def settings(args, task: Task, method: Method) -> dict:
    """What makes two runs of the same (task, method, lr, seed) comparable; a stored run with other
    settings is refused rather than mixed in. Files by content and the model by name, so an OUT copied to
    another machine (another path) still matches."""
    out = {"model": Path(args.model).name if args.model else "built-in", "objective": task.objective,
           "train": file_digest(task.train), "eval": file_digest(task.eval), "metric": task.metric,
           "reward": task.reward, "max_new_tokens": task.max_new_tokens, "ref_steps": task.steps,
           "eval_every": args.eval_every, "batch_size": args.batch_size, "eval_examples": args.eval_examples,
           "eps": method.eps, "mezo": dict(method.mezo), "dtype": dtype_of(args, method)}
    if method.estimator != "reference":  # the reference always runs its own budget on HF
        out.update(budget=args.budget, backend=args.backend)
        if getattr(args, "ours_set", None):
            out["ours_set"] = list(args.ours_set)  # only where given: runs stored before it still match
    return out


def run_reference(args, task: Task, seed: int, lr: float, model: str) -> dict:
    """One reference run (bench_step.ReferenceMeZO with the task's loss) over its step budget."""
    from bench_step import ReferenceMeZO

    from mezo_elastic.config import from_dict
    from mezo_elastic.data.jsonl import BatchSchedule
    from mezo_elastic.objectives import make_objective
    from mezo_elastic.runners.hf.runner import HFRunner
    from mezo_elastic.training.inputs import load_inputs

    class TaskReference(ReferenceMeZO):
        """The reference step with the task's loss as zo_forward (MeZO's train_as_classification / non_diff)."""

        def zo_forward(self, inputs) -> torch.Tensor:
            examples, step = inputs
            return torch.tensor(float(objective.losses(examples, step).mean()))

    t_launch = time.perf_counter()  # ready_s: the model's load, the data and the step-0 eval (imports not counted)
    cfg = from_dict(base_config(args, task, seed, lr, args.eps, model, args.ref_dtype))
    runner = HFRunner(cfg, torch.device(args.device), model)
    # The reference trains as MeZO does, on HF forwards of per-call batches (no graphs). Its evals are outside
    # the timed training: they go through the HF runner's scoring graphs where it has them (CUDA; graph ==
    # eager is tests/gpu/test_scoring_graphs.py's, float32 included), so a 1000-example eval costs device
    # time like one of ours (which score through their backend's graphs) rather than 63 per-call batches.
    # MeZO's update rebinds every weight (param.data = ...): the scorer sees the moved storage and captures
    # again at each eval (runners/graph_scorer.py); before it did, every eval scored the step-0 weights.
    graphs, runner.graphs = runner.graphs, None
    tok, data, stage = load_inputs(cfg, True)  # model.path is set: nothing is staged
    stage.discard()
    objective = make_objective(cfg, runner, tok)
    ref = TaskReference(runner.model, args.eps, lr)
    sched = BatchSchedule(len(data.train), args.batch_size, cfg.data.seed)
    np.random.seed(seed)  # the reference draws its step seeds from numpy
    key = METRIC_KEY[task.metric]

    def point(step: int, secs: float) -> dict:
        runner.graphs = graphs
        try:
            metric = objective.eval_sums(data.eval, step)[key] / len(data.eval)
        finally:
            runner.graphs = None
        mem = {"gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30, "master_gib": 0.0} if args.device == "cuda" else {}
        return {"step": step, "seconds": secs, "forwards": 2 * step, "metric": metric, **mem}

    curve, grads, grad_curve, train_s = [point(0, 0.0)], [], [], 0.0
    ready_s = time.perf_counter() - t_launch
    for t in range(task.steps):
        batch = [data.train[i] for i in sched.global_batch(t)]
        sync()
        t0 = time.perf_counter()
        ref.zo_step((batch, t))
        ref.zo_update()
        sync()
        train_s += time.perf_counter() - t0
        grads.append(abs(ref.projected_grad))
        if (t + 1) % args.eval_every == 0 or t + 1 == task.steps:
            curve.append(point(t + 1, train_s))
            grad_curve.append(grad_point(t + 1, grads[len(grads) - (t + 1 - curve[-2]["step"]):]))
    runner.graphs = graphs
    runner.close()
    nonzero = [g for g in grads if g > 0]  # a greedy reward often moves no argmax: g = 0 on most steps
    return {"forwards_per_step": 2, "n_eval": len(data.eval), "curve": curve, "stopped_early": False,
            "median_abs_grad": float(np.median(nonzero)) if nonzero else 1.0, "grad_curve": grad_curve,
            "ready_s": ready_s}


def grad_point(step: int, abs_grads: list[float]) -> dict:
    """|projected gradient| over the steps since the last eval, up to `step`: median and max (a run that
    diverges shows it here first: its |g| grows before its metric falls)."""
    return {"step": step, "median_abs_g": float(np.median(abs_grads)) if abs_grads else 0.0,
            "max_abs_g": float(max(abs_grads)) if abs_grads else 0.0}


def read_grad_curve(path: Path, eval_steps: list[int]) -> list[dict]:
    """grad_point at each eval step (after step 0) from an ours run's steps.jsonl: every |g| of each logged
    step (a population's K of them), skipped steps left out."""
    from mezo_elastic.state.checkpoint import StepLog

    if not path.is_file():
        return []
    by_step: dict[int, list[float]] = {}
    for rec in StepLog(path).read():
        if not rec.skipped:
            by_step[rec.step] = [abs(g) for g in rec.grads]
    out, prev = [], 0
    for step in eval_steps:
        if step == 0:
            continue
        out.append(grad_point(step, [g for t in range(prev, step) for g in by_step.get(t, [])]))
        prev = step
    return out


def train_seconds(lines: list[dict]) -> dict[int, float]:
    """Training seconds at each eval step of one run's metrics.jsonl: run_seconds less the start-up (up to the
    step-0 eval) and less every later eval (its line's run_seconds minus the train line's at the same step).
    An eval whose train line is not in yet (a file read while written) is left out."""
    train = {m["step"]: m["run_seconds"] for m in lines if m["type"] == "train"}
    evals = [m for m in lines if m["type"] == "eval"]
    if not evals:
        return {}
    start, spent, out = evals[0]["run_seconds"], 0.0, {0: 0.0}
    for m in evals[1:]:
        if m["step"] not in train:
            break
        out[m["step"]] = train[m["step"]] - start - spent
        spent += m["run_seconds"] - train[m["step"]]
    return out


def read_curve(path: Path, metric: str, forwards_per_step: int) -> list[dict]:
    """The eval curve in a (possibly still growing) metrics.jsonl; a torn last line is skipped."""
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            break
    secs = train_seconds(lines)
    return [{"step": m["step"], "seconds": secs[m["step"]], "forwards": m["step"] * forwards_per_step,
             "metric": m[f"eval_{metric}"], **{k: m[k] for k in MEMORY_KEYS if k in m}}
            for m in lines if m["type"] == "eval" and m["step"] in secs]


def eval_rows(task: Task, limit: int) -> int:
    """Examples an eval scores: the eval file's rows, at most `limit` (data.eval_examples)."""
    with open(task.eval) as f:
        return min(limit, sum(1 for line in f if line.strip()))


def ours_steps(args, task: Task, fwd: int) -> tuple[int, int]:
    """(step budget, eval every) of ours: up to --budget x the reference's forwards, evals as often in
    forwards as the reference's (every eval_every reference steps = 2 eval_every forwards)."""
    every = max(1, round(args.eval_every * 2 / fwd))
    evals = -(-args.budget * task.steps * 2 // (every * fwd))  # ceil: the budget's last eval is in
    return int(every * evals), every


def run_ours(args, task: Task, seed: int, method: Method, lr: float, model: str, work: Path,
             stop: tuple[float, Rule, float] | None) -> dict:
    """One run of the trainer (python -m mezo_elastic.train), its curve read back from metrics.jsonl.

    `stop` = (target, rule, the reference's median training seconds): end the run (SIGTERM: the trainer
    stops after the current step) once curves.should_stop says so; None = the whole budget.
    """
    cfg = base_config(args, task, seed, lr, method.eps, model, args.dtype)
    steps, every = ours_steps(args, task, method.forwards_per_step)
    cfg["model"]["backend"] = args.backend
    cfg["train"].update(steps=steps, eval_every=every, log_every=every, save_final=False, progress=False,
                        output_dir=str(work))
    cfg["checkpoint"] = {"every": 0}
    cfg["mezo"].update(estimator=method.estimator, **dict(method.mezo))
    cfg["model"].update(dict(method.model))
    flags = [f"--{s}.{k}={v}" for s, sub in cfg.items() if isinstance(sub, dict) for k, v in sub.items()]
    flags.append(f"--seed={seed}")
    flags += [f"--{kv}" for kv in getattr(args, "ours_set", [])]  # last: a user's setting wins over the bench's
    if work.exists():
        shutil.rmtree(work)  # an unfinished earlier attempt: its timings would not be one run's
    work.mkdir(parents=True)
    metrics = work / "metrics.jsonl"
    t_launch = time.time()  # ready_s: the trainer's whole start (imports, engine, graphs) and its step-0 eval
    with open(work.parent / f"{work.name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mezo_elastic.train", *flags], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        stopped, t_end = False, time.monotonic() + args.run_timeout
        while proc.poll() is None:
            time.sleep(0.5)
            if time.monotonic() > t_end:
                proc.kill()
                proc.wait()
                raise SystemExit(f"{method.estimator} run timed out after {args.run_timeout} s (log: {log.name})")
            if stop and not stopped and should_stop(read_curve(metrics, task.metric, method.forwards_per_step), *stop):
                proc.send_signal(signal.SIGTERM)
                stopped = True
    # a stop we sent: the trainer's exit code 128 + 15 after its current step, or -15 where the signal came
    # before its handlers were in (start-up) or after the step loop (the final eval): the curve is what is in
    if proc.returncode != 0 and not (stopped and proc.returncode in (128 + signal.SIGTERM, -signal.SIGTERM)):
        tail = Path(log.name).read_text()[-3000:]
        raise SystemExit(f"{method.estimator} run failed (exit {proc.returncode}, {work}):\n{tail}")
    curve = read_curve(metrics, task.metric, method.forwards_per_step)
    return {"forwards_per_step": method.forwards_per_step, "curve": curve, "stopped_early": stopped,
            "step_budget": steps, "eval_every_steps": every, "n_eval": eval_rows(task, args.eval_examples),
            "target_at_stop": stop[0] if stop else None,
            "grad_curve": read_grad_curve(work / "steps.jsonl", [p["step"] for p in curve]),
            "ready_s": ready_seconds(metrics, t_launch)}


def ready_seconds(path: Path, t_launch: float) -> float | None:
    """Seconds from the trainer's launch (unix time) to the end of its step-0 eval: its start-up as a user
    waits for it (imports, engine, CUDA graphs) plus one eval; None where metrics.jsonl has no eval line."""
    if not path.is_file():
        return None
    for raw in path.read_text().splitlines():
        try:
            m = json.loads(raw)
        except json.JSONDecodeError:
            break
        if m.get("type") == "eval":
            return m["time"] - t_launch
    return None
