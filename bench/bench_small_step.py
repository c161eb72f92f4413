"""A small model's MeZO step on one GPU: steps/s of ours (sglang, hf; scoring graphs on and off) beside
the reference MeZO loop, and how busy the GPU is during our step (issue 29).

    python bench/bench_small_step.py --out $OUT/step                    # SmolLM2-135M's shape, random weights
    python bench/bench_small_step.py --model /tmp/m/model.gguf --out $OUT/step   # the real model

The task is bench/real_tasks.py's classification task (chat-templated reviews, two one-token labels) at
batch 16, bf16. Ours is the trainer through its entry point (python -m mezo_elastic.train, no evals, no
checkpoints); steps/s is the median rate between its train lines (metrics.jsonl). The reference is
bench_step.ReferenceMeZO (MeZO's loop: HF forwards, torch.normal z per tensor, 4 sweeps a step) scoring
the same batches with the same classification loss through the hf runner's per-call batches. GPU busy:
torch.profiler over 20 steps of our trainer in this process, the union of kernel intervals over the profiled
span (indicative: the profiler slows the step).
--task reward measures the reward task instead (generated text: sglang with and without SGLang's prefill
graphs, hf). Prints a table; writes OUT/small_step_<task>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests" / "gpu")]

from bench_step import ReferenceMeZO  # noqa: E402
from real_tasks import write_tasks  # noqa: E402
from sglang_models import SMOLLM2_135M, save_random_model  # noqa: E402

from mezo_elastic.config import from_dict  # noqa: E402
from mezo_elastic.data.jsonl import BatchSchedule  # noqa: E402
from mezo_elastic.objectives import make_objective  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402
from mezo_elastic.training.inputs import load_inputs  # noqa: E402


# ours: (label, backend, model fields) per task; cls compares the scoring graphs on and off, reward (generation)
# SGLang's own prefill graphs for the generation's prefill on and off
VARIANTS = {
    "cls": [("sglang, scoring graphs", "sglang", {"scoring_graphs": True}),
            ("sglang, per-call batches", "sglang", {"scoring_graphs": False}),
            ("hf, scoring graphs", "hf", {"scoring_graphs": True}),
            ("hf, per-call batches", "hf", {"scoring_graphs": False})],
    "reward": [("sglang", "sglang", {"sglang_prefill_graphs": "off"}),
               ("sglang, prefill graphs", "sglang", {"sglang_prefill_graphs": "on"}),
               ("hf", "hf", {})],
}


def config(model: str, tasks: dict, backend: str, fields: dict, steps: int, out: Path, task: str = "cls") -> dict:
    data = ({"objective": "classification", "path": str(tasks["cls_train"])} if task == "cls" else
            {"objective": "reward", "reward": "exact_match", "path": str(tasks["reward_train"]), "micro_batch": 64})
    return {
        "model": {"backend": backend, "path": model, "dtype": "bfloat16", **fields},
        "data": {**data, "verbatim": True, "max_length": 128},
        "generate": {"max_new_tokens": 6},
        "mezo": {"lr": 1e-5, "eps": 1e-3},
        "train": {"steps": steps, "batch_size": 16, "log_every": 10, "eval_every": 0, "save_final": False,
                  "progress": False, "output_dir": str(out)},
        "checkpoint": {"every": 0},
    }


def flags(cfg: dict) -> list[str]:
    return [f"--{s}.{k}={v}" for s, sub in cfg.items() for k, v in sub.items()]


def ours(model: str, tasks: dict, backend: str, fields: dict, steps: int, out: Path, task: str) -> dict:
    """steps/s of one trainer run (median between train lines, start-up and the first lines left out)."""
    cfg = config(model, tasks, backend, fields, steps, out, task)
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "mezo_elastic.train", *flags(cfg)], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    if res.returncode != 0:
        return {"error": res.stderr[-2000:]}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["type"] == "train"]
    # start-up: the process's start to its first train line (imports, model load, engine and graph capture)
    start_s = round(train[0]["time"] - t0, 1) if train else None
    train = train[2:]
    rates = [(b["step"] - a["step"]) / (b["time"] - a["time"]) for a, b in zip(train, train[1:]) if b["time"] > a["time"]]
    return {"steps_per_s": statistics.median(rates), "start_s": start_s, "wall_s": round(time.time() - t0, 1)}


def reference(model: str, tasks: dict, steps: int, task: str) -> dict:
    """steps/s of MeZO's loop on the same batches (hf forwards through per-call batches, no graphs; reward:
    transformers' generate, as MeZO's non-differentiable path)."""
    cfg = from_dict(config(model, tasks, "hf", {"scoring_graphs": False}, steps, Path("/tmp/unused"), task))
    cfg.model.device = "cuda"
    runner = HFRunner(cfg, torch.device("cuda"), model)
    tok, data, stage = load_inputs(cfg, True)
    stage.discard()
    objective = make_objective(cfg, runner, tok)

    class Ref(ReferenceMeZO):
        def zo_forward(self, inputs):
            return torch.tensor(float(objective.losses(*inputs).mean()))

    ref = Ref(runner.model, 1e-3, 1e-5)
    sched = BatchSchedule(len(data.train), 16, cfg.data.seed)
    times = []
    for t in range(steps):
        batch = [data.train[i] for i in sched.global_batch(t)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ref.zo_step((batch, t))
        ref.zo_update()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    runner.close()
    return {"steps_per_s": 1.0 / statistics.median(times[5:])}


def gpu_busy(model: str, tasks: dict, backend: str, out: Path) -> dict:
    """Kernel time over wall time for 20 steps of our trainer (after 30 warm-up steps), in this process."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from mezo_elastic.cluster import distributed
    from mezo_elastic.cluster.rank_context import detect
    from mezo_elastic.config import parse_args
    from mezo_elastic.train import _init
    from mezo_elastic.training.trainer import Trainer

    cfg = parse_args(flags(config(model, tasks, backend, {"scoring_graphs": True}, 50, out)))
    ctx = detect()
    comm = _init(ctx, cfg)
    trainer = Trainer(ctx, cfg, comm)
    marks: list[float] = []
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule(wait=29, warmup=1, active=20))
    step = trainer.step

    def profiled(t: int):
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        prof.step()
        return step(t)

    trainer.step = profiled
    try:
        with prof:
            trainer.run()
    finally:
        trainer.close()
        comm.close()
        distributed.teardown()
    # busy = the union of kernel intervals over the profiled window (streams overlap: no double count)
    kern = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type.name == "CUDA")
    span = max(e.time_range.end for e in prof.events()) - min(e.time_range.start for e in prof.events())
    busy, lo, hi = 0.0, None, None
    for a, b in kern:
        if hi is None or a > hi:
            busy += (hi - lo) if hi is not None else 0.0
            lo, hi = a, b
        else:
            hi = max(hi, b)
    busy += (hi - lo) if hi is not None else 0.0
    wall = marks[49] - marks[30] if len(marks) >= 50 else float("nan")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    (out.parent / f"profile_{backend}.txt").write_text(table)
    return {"gpu_busy": busy / span, "wall_ms_per_step": 1000 * wall / 19, "kernel_ms_per_step": busy / 1000 / 20}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="", help="HF directory or .gguf; empty = SmolLM2-135M's shape, random weights")
    p.add_argument("--tokenizer", default="", help="with random weights: a tokenizer directory to copy in "
                   "(SmolLM2's; the trainer tokenizes the task with the model directory's tokenizer)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--only", default="ours,reference,busy")
    p.add_argument("--task", default="cls", choices=sorted(VARIANTS), help="cls (scoring) or reward (generation)")
    p.add_argument("--backends", default="sglang,hf", help="ours: the backends whose variants run")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = write_tasks(out / "tasks")
    model = a.model or str(save_random_model(SMOLLM2_135M, out / "smollm2-shape", seed=0))
    if not a.model and a.tokenizer:
        for f in Path(a.tokenizer).iterdir():
            shutil.copy2(f, Path(model) / f.name)
    if model.endswith(".gguf"):
        from mezo_elastic.runners import gguf

        model = str(gguf.hf_dir_for(Path(model))[0])
    res: dict = {"card": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                 "model": a.model or "SmolLM2-135M shape, random bf16 weights", "steps": a.steps}
    only = a.only.split(",")
    res["task"] = a.task
    if "ours" in only:
        for label, backend, fields in [v for v in VARIANTS[a.task] if v[1] in a.backends.split(",")]:
            res[f"ours {label}"] = r = ours(model, tasks, backend, fields, a.steps, out / f"run-{len(res)}", a.task)
            print(label, r, flush=True)
    if "reference" in only:
        res["reference MeZO"] = reference(model, tasks, min(a.steps, 100), a.task)
    if "busy" in only and a.task == "cls":
        for backend in ("sglang", "hf"):
            try:
                res[f"busy {backend}"] = gpu_busy(model, tasks, backend, out / f"busy-{backend}")
            except Exception as e:  # noqa: BLE001 - a profile that fails leaves the table
                res[f"busy {backend}"] = {"error": f"{type(e).__name__}: {e}"}
    (out / f"small_step_{a.task}.json").write_text(json.dumps(res, indent=1))
    ref = res.get("reference MeZO", {}).get("steps_per_s")
    print(f"\n{res['card']}; {res['date']}; torch {res['torch']}; {res['model']}; task {a.task}, batch 16, bf16\n")
    print("| method | steps/s | x reference | start-up s |\n|---|---:|---:|---:|")
    for k, v in res.items():
        if isinstance(v, dict) and "steps_per_s" in v:
            x = f"{v['steps_per_s'] / ref:.2f}x" if ref else ""
            print(f"| {k} | {v['steps_per_s']:.1f} | {x} | {v.get('start_s', '')} |")
        elif isinstance(v, dict):
            print(f"| {k} | {v} | | |")


if __name__ == "__main__":
    main()
