"""MeZO step on the CPU: ours (MezoOptimizer + HFRunner) against the reference MeZO step, same threads.

    python bench/bench_cpu_step.py                                  # both shapes, 1 and 2 threads
    python bench/bench_cpu_step.py --shapes default --threads 1 --reps 20 --out cpu.json

Shapes: `default` = the built-in tiny Llama (mezo_elastic.data.builtin) with its batch (32 examples of
7 prompt + 1 completion tokens); `110m` = a Llama of 110 M parameters (12 x 768, MLP 2048, 32000
vocab, tied), random fp32 weights, batch 4 x 32 tokens (28 + 4). The reference is princeton-nlp/MeZO's
zo_step + zo_update as bench/bench_step.py reimplements it (torch.manual_seed per sweep, torch.normal
per tensor, 4 sweeps, 2 forwards with the loss over full logits). Ours: the trainer's dp step (2
sweeps: -2 eps z, then restore + update + next perturbation; the batch scored by HFRunner.score),
gaussian, rademacher and rademacher32 z. Sweep rows: one reference sweep (torch.normal per tensor) against one of
ours with 1 seed (perturb) and 2 seeds (restore + update + next). Medians of --reps, ms, the rows timed in turn
(one of each per round) so a shared machine's load falls on all of them alike.
Prints a Markdown table per shape; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests" / "gpu")]

from bench_step import ReferenceMeZO, fresh_segments, our_step, reference_inputs  # noqa: E402
from sglang_models import random_requests, save_random_model  # noqa: E402

from mezo_elastic.config import Config, MezoConfig, ModelConfig  # noqa: E402
from mezo_elastic.data import builtin  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402
from mezo_elastic.zo.optimizer import MezoOptimizer  # noqa: E402
from mezo_elastic.zo.perturb import SweepPlan, native_status, sweep  # noqa: E402

LLAMA_110M = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=32000, hidden_size=768,
                  intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                  tie_word_embeddings=True, max_position_embeddings=512)
DISTS = ("gaussian", "rademacher", "rademacher32")


def interleaved(jobs: dict[str, object], reps: int) -> dict[str, float]:
    """Median wall ms of each job, the jobs run in turn each repetition (one warm-up round), so a
    load that comes and goes on a shared machine hits ours and the reference alike."""
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(reps + 1):
        for key, fn in jobs.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[key].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def make_shape(name: str, root: Path) -> tuple[Path, list]:
    """(model directory, score requests of equal length) for a shape."""
    if name == "default":
        path = builtin.ensure_tiny_model(root)
        return path, random_requests(32, len(builtin.VOCAB), 0, prompt=(7, 7), completion=(1, 1))
    path = save_random_model(LLAMA_110M, root / "llama-110m", dtype=torch.float32)
    return path, random_requests(4, LLAMA_110M["vocab_size"], 0, prompt=(28, 28), completion=(4, 4))


def bench_shape(path: Path, reqs: list, reps: int) -> dict:
    """Every row of one shape at the current torch thread count."""
    cfg = Config(model=ModelConfig(backend="hf", path=str(path), dtype="float32", device="cpu"))
    runner = HFRunner(cfg, torch.device("cpu"), str(path))
    ref_model = HFRunner(cfg, torch.device("cpu"), str(path)).model  # the reference rebinds its param.data
    ref = ReferenceMeZO(ref_model, eps=1e-3, lr=1e-6)
    inputs = reference_inputs(reqs, "cpu")

    def ref_step():
        ref.zo_step(inputs)
        ref.zo_update()

    jobs = {"sweep_reference_ms": lambda: ref.zo_perturb_parameters(1, 1.0),
            "forward_reference_ms": lambda: ref.zo_forward(inputs), "forward_ours_ms": lambda: runner.score(reqs),
            "step_reference_ms": ref_step}
    segs = fresh_segments(runner.model)
    for dist in DISTS:
        one = SweepPlan(post=[(1, 1e-3)], dist=dist)
        two = SweepPlan(pre=[(1, -1e-3)], post=[(1, -1e-6), (2, 1e-3)], dist=dist)
        jobs[f"sweep_ours_1seed_{dist}_ms"] = lambda one=one: sweep(segs, one)
        jobs[f"sweep_ours_2seed_{dist}_ms"] = lambda two=two: sweep(segs, two)
        # Two optimizers share the weights: each moves them by a few eps a step, harmless for timing.
        mcfg = MezoConfig(lr=1e-6, eps=1e-3, distribution=dist)
        opt = MezoOptimizer(runner.segments(), mcfg, master_weights=False)
        # Its own step counter: each step then finds the perturbation its previous update folded in
        # (2 sweeps a step, as in training; a shared counter would add a third).
        steps = iter(range(10**6))
        jobs[f"step_ours_{dist}_ms"] = lambda opt=opt, mcfg=mcfg, steps=steps: our_step(runner, opt, reqs, next(steps),
                                                                                       mcfg)
    out = interleaved(jobs, reps)
    out["params"] = sum(p.numel() for p in runner.model.parameters())
    return out


def table(shape: str, rows: dict[int, dict]) -> str:
    """Markdown: one column per thread count."""
    threads = sorted(rows)
    lines = [f"\n**{shape}** ({rows[threads[0]]['params'] / 1e6:.2f} M params, fp32)\n",
             "| ms (median) | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in threads) + " |",
             "|---|" + "---:|" * len(threads)]
    labels = [("step, REFERENCE MeZO (4 torch.normal sweeps + 2 forwards)", "step_reference_ms", None)]
    labels += [(f"step, ours, {d}", f"step_ours_{d}_ms", "step_reference_ms") for d in DISTS]
    labels += [("sweep, reference (torch.normal per tensor)", "sweep_reference_ms", None)]
    labels += [(f"sweep, ours, {d}, {k} seed{'s' * (k > 1)}", f"sweep_ours_{k}seed_{d}_ms", "sweep_reference_ms")
               for d in DISTS for k in (1, 2)]
    labels += [("forward, reference (model(**inputs).loss)", "forward_reference_ms", None),
               ("forward, ours (HFRunner.score)", "forward_ours_ms", None)]
    for label, key, vs in labels:
        cells = []
        for t in threads:
            r = rows[t]
            cells.append(f"{r[key]:.2f}" + (f" ({r[vs] / r[key]:.2f}x)" if vs else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="default,110m")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default: 20 for default, 3 for 110m)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "z_words": native_status(), "date": time.strftime("%Y-%m-%d"), "shapes": {}}
    print(f"CPU step benchmark: torch {torch.__version__} ({result['cpu_capability']}), Philox words: "
          f"{result['z_words']}; {result['date']}; x (speed-up) = reference / ours")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            path, reqs = make_shape(shape, Path(tmp))
            rows = {}
            for t in (int(x) for x in args.threads.split(",")):
                torch.set_num_threads(t)
                rows[t] = bench_shape(path, reqs, args.reps or (20 if shape == "default" else 3))
            result["shapes"][shape] = rows
            print(table(shape, rows), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
