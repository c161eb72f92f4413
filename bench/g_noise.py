"""How much of MeZO's projected gradient is rounding (the shown weights' and the forward's): g = (L(theta + eps z) -
L(theta - eps z)) / 2 eps for the same seeds and batches through several forwards (backend:dtype), each against the
first.

    python bench/g_noise.py --model SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/gn    # real model, its cls task
    python bench/g_noise.py --smoke --out /tmp/gn                                     # CPU, built-in model, seconds
    python bench/g_noise.py --model DIR --out /tmp/gn --objective classification --train F.jsonl [--verbatim]

Why: at lr 3e-5 ours' spsa (bf16 on SGLang, fp32 masters) fell back to chance past ~1500 steps on the real model's
classification task where the float32 reference MeZO did not (docs/benchmarks.md#time-to-accuracy). A rounding
error in every g, whatever the gradient, hardly matters while the true |g| is large; as training converges and |g|
shrinks (the reference's median |g|: ~10 -> 1.7), an error that stays is what is left. The table says how large it
is against g, per forward and eps. First answer (CPU, 2026-12-07): at eps 1e-3 the bf16 grid's rounding of the shown
point cast(theta +- eps z) leaves a third of g in error, the forward's bf16 arithmetic adds little, fp16's grid 2%.

Each forward loads the model in its dtype, shows cast(theta + eps z) and cast(theta - eps z) from its clean weights
(ours shows cast(master + eps z), its master starting at the weights: the same values), scores the batch with the
task's training loss and restores the clean weights exactly. z comes from the package's Philox generator: the same
z on every forward and device. Columns per (forward, eps): median |g|, corr(g, g of the first forward at that eps),
rms(g - g_first) / rms(g_first) (0 = the same g; 1 = noise as large as the signal), sign agreement.
Forwards (--forwards, default hf:float32,hf:float32@bfloat16,hf:bfloat16, plus sglang:bfloat16 on CUDA with sglang
installed); the first is the reference. hf:float32@bfloat16 computes in float32 on weights rounded to bf16 values,
clean and shown alike: the shown perturbation's rounding alone, apart from the forward's; hf:float32@bfloat16/master
leaves theta off the grid (a trained master under mezo.perturb_about=master); a +fp32head suffix scores with
float32 logits (model.fp32_lm_head). Output: the table (stdout
and OUT/g_noise.md) and OUT/g_noise.json (every g).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tta.models import ensure_hf_model  # noqa: E402

from mezo_elastic.cluster.rank_context import detect  # noqa: E402
from mezo_elastic.config import from_dict  # noqa: E402
from mezo_elastic.data.jsonl import BatchSchedule  # noqa: E402
from mezo_elastic.objectives import make_objective  # noqa: E402
from mezo_elastic.runners import make_runner  # noqa: E402
from mezo_elastic.training.inputs import load_inputs  # noqa: E402
from mezo_elastic.zo.perturb import SweepPlan, sweep  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory: g_noise.md, g_noise.json (and the task files)")
    p.add_argument("--smoke", action="store_true", help="CPU, the built-in model and classification task")
    p.add_argument("--model", default="", help="HF directory or .gguf (without --train: bench/real_tasks.py's cls "
                   "task, made for the real model)")
    p.add_argument("--objective", choices=["classification", "lm", "reward"], default="classification")
    p.add_argument("--train", default="", help="your own train JSONL (default: bench/real_tasks.py's cls task)")
    p.add_argument("--verbatim", action="store_true", help="data.verbatim (the real tasks' prompts hold the template)")
    p.add_argument("--forwards", default="", help="backend:dtype list; the first is the reference (default "
                   "hf:float32,hf:float32@bfloat16,hf:bfloat16, and sglang:bfloat16 where CUDA and sglang are)")
    p.add_argument("--eps", default="", help="eps values (default 1e-3,1e-2: MeZO's and 10x; smoke 1e-2)")
    p.add_argument("--seeds", type=int, default=None, help="z draws, each on its own batch (default 16; smoke 6)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not a.smoke
    a.device = "cuda" if cuda else "cpu"
    if not a.forwards:
        a.forwards = "hf:float32,hf:float32@bfloat16,hf:bfloat16"
        if cuda:
            try:
                import sglang  # noqa: F401

                a.forwards += ",sglang:bfloat16"
            except ImportError:
                pass
    a.forwards = [tuple(f.split(":")) for f in a.forwards.split(",")]
    if bad := [f for f in a.forwards if len(f) != 2 or f[0] not in ("hf", "sglang")
               or f[1].removesuffix("+fp32head").removesuffix("/master") not in (
                   "float32", "bfloat16", "float16", "float32@bfloat16", "float32@float16")
               or (f[1].endswith("/master") and "@" not in f[1]) or (f[0] == "sglang" and "@" in f[1])]:
        p.error(f"--forwards {bad}: each is backend:dtype, backend hf or sglang, dtype float32, bfloat16 or float16; "
                f"hf also float32@bfloat16 or float32@float16 (float32 math on weights rounded to the 16-bit type), "
                f"either with /master (theta left off the 16-bit grid); any with +fp32head (model.fp32_lm_head)")
    a.eps = [float(x) for x in (a.eps or ("1e-2" if a.smoke else "1e-3,1e-2")).split(",")]
    a.seeds = a.seeds or (6 if a.smoke else 16)
    return a


def task_files(a: argparse.Namespace, out: Path) -> tuple[str, str, bool]:
    """(model directory, train JSONL, verbatim)."""
    if a.smoke:
        from mezo_elastic.data import builtin

        root = out / "builtin"
        return str(builtin.ensure_tiny_model(root)), str(builtin.ensure_task(root, a.objective)[0]), False
    if not a.model:
        raise SystemExit("--model is needed (an HF directory or .gguf), or --smoke for the built-in model")
    model = ensure_hf_model(a.model, out)
    if a.train:
        return model, str(Path(a.train).resolve()), a.verbatim
    if a.objective != "classification":
        raise SystemExit(f"--objective {a.objective} needs --train (the real model's default task is classification)")
    from real_tasks import write_tasks

    return model, str(write_tasks(out / "tasks")["cls_train"]), True


def grads(a: argparse.Namespace, backend: str, dtype: str, model: str, train: str,
          verbatim: bool) -> dict[float, list[float]]:
    """{eps: [g per seed]} through one forward (a runner of `backend` in `dtype`, closed at the end).
    dtype "float32@bfloat16": float32 math on weights rounded to bfloat16 values, the clean ones and every shown
    point (cast(theta + eps z) as a bf16 run shows it): the perturbation's rounding without the forward's. theta is
    rounded to the grid first (as a bf16 run's master is at step 0, and as mezo.perturb_about=weights shows every
    point: about cast(master)); "float32@bfloat16/master" leaves theta off the grid, as a trained master is under
    mezo.perturb_about=master (the points round unevenly about it)."""
    dtype, fp32_head = dtype.removesuffix("+fp32head"), dtype.endswith("+fp32head")
    dtype, _, shown = dtype.partition("@")
    shown, _, about = shown.partition("/")
    cfg = from_dict({
        "seed": 0,
        "model": {"backend": backend, "path": model, "dtype": dtype, "device": a.device, "fp32_lm_head": fp32_head},
        "data": {"objective": a.objective, "path": train, "seed": 1234, "verbatim": verbatim,
                 "max_length": a.max_length},
        "train": {"batch_size": a.batch_size},
    })
    # cuda:0, not "cuda": SGLang's runner sets its device by index (a bare "cuda" failed there on 2026-12-07)
    device = torch.device("cuda", 0) if a.device == "cuda" else torch.device(a.device)
    runner = make_runner(detect({}), cfg, device, model)  # one process: no launcher's variables
    try:
        tok, data, stage = load_inputs(cfg, True)
        stage.discard()
        objective = make_objective(cfg, runner, tok)
        sched = BatchSchedule(len(data.train), a.batch_size, cfg.data.seed)
        rounded = getattr(torch, shown) if shown else None

        def round_shown() -> None:
            for prm in runner.model.parameters():
                prm.data.copy_(prm.data.to(rounded).to(prm.dtype))

        if rounded is not None and about != "master":
            round_shown()
        clean = {k: v.clone() for k, v in runner.hf_state_dict().items()}
        out: dict[float, list[float]] = {}
        for eps in a.eps:
            out[eps], t0 = [], time.perf_counter()
            for t in range(a.seeds):
                batch = [data.train[i] for i in sched.global_batch(t)]
                loss = {}
                for sign in (1, -1):
                    runner.load_hf_state_dict(clean)
                    sweep(runner.segments(), SweepPlan(post=[(7919 + t, sign * eps)]))
                    if rounded is not None:
                        round_shown()
                    loss[sign] = float(objective.losses(batch, t).mean())
                out[eps].append((loss[1] - loss[-1]) / (2 * eps))
            print(f"  {backend}:{dtype} eps {eps:g}: {a.seeds} g in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                  flush=True)
        runner.load_hf_state_dict(clean)
        return out
    finally:
        runner.close()


def compare(g: list[float], ref: list[float]) -> dict[str, float]:
    """median |g|, corr with ref (nan where either is constant), rms(g - ref) / rms(ref), sign agreement."""
    n = len(g)
    try:
        corr = statistics.correlation(g, ref)
    except statistics.StatisticsError:
        corr = float("nan")
    rms_ref = math.sqrt(sum(y * y for y in ref) / n)
    return {"median_abs_g": statistics.median(abs(x) for x in g), "corr": corr,
            "noise": (math.sqrt(sum((x - y) ** 2 for x, y in zip(g, ref)) / n) / rms_ref if rms_ref > 0
                      else float("nan")),
            "sign": sum((x > 0) == (y > 0) for x, y in zip(g, ref)) / n}


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, train, verbatim = task_files(a, out)
    every = {f"{b}:{d}": grads(a, b, d, model, train, verbatim) for b, d in a.forwards}
    ref_name = next(iter(every))
    card = torch.cuda.get_device_name(0) if a.device == "cuda" else "CPU"
    lines = [f"{card}; torch {torch.__version__}; model {a.model or 'built-in'}; {a.objective}, batch {a.batch_size}, "
             f"{a.seeds} seeds; reference forward {ref_name}", "",
             "| forward | eps | median \\|g\\| | corr with reference | rms(g - g_ref) / rms(g_ref) | sign agreement |",
             "|---|---:|---:|---:|---:|---:|"]
    rows = []
    for name, by_eps in every.items():
        for eps, g in by_eps.items():
            c = compare(g, every[ref_name][eps])
            rows.append({"forward": name, "eps": eps, **c})
            lines.append(f"| {name} | {eps:g} | {c['median_abs_g']:.3g} | {c['corr']:.4f} | {c['noise']:.3f} | "
                         f"{c['sign']:.2f} |")
    table = "\n".join(lines)
    print(table)
    (out / "g_noise.md").write_text(table + "\n")
    result = {"card": card, "torch": torch.__version__, "model": a.model or "built-in", "objective": a.objective,
              "batch_size": a.batch_size, "seeds": a.seeds, "reference": ref_name, "rows": rows,
              "g": {name: {str(eps): g for eps, g in by_eps.items()} for name, by_eps in every.items()}}
    tmp = out / "g_noise.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "g_noise.json")
    return result


if __name__ == "__main__":
    main()
