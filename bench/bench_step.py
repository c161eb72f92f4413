"""MeZO step benchmark on one GPU: copy bandwidth, sweeps, forwards, full steps, peak memory.

    python bench/bench_step.py --shape 1b --out results.json      # Llama-3.2-1B shape, random weights
    python bench/bench_step.py --shape 8b --sglang-dummy          # Llama-3.1-8B shape

Models are built from a config with random weights (no downloads). Rows:
  copy         device-to-device copy of 2 GiB: the bandwidth every sweep is measured against
  sweep        reference (princeton-nlp/MeZO: torch.normal per tensor, param.data = param.data + s*eps*z)
               vs ours (fused Triton kernel, z in registers), 1 seed and 2 seeds (restore+update+next)
  forward      one scoring forward of the batch: HF eager (HFRunner) vs SGLang (SGLangRunner)
  step         REFERENCE = a faithful reimplementation of MeZO's large_models/trainer.py zo_step +
               zo_update (4 sweeps, 2 HF forwards with the loss over full logits); ours on HF and ours
               on SGLang (MezoOptimizer: weights stay perturbed between steps, 2 sweeps a step)
  ideal        2 SGLang forwards + 2 sweeps at copy bandwidth
  lora         (--lora) ours with a MeZO LoRA adapter (r 8, alpha 16, q/v; docs/lora.md) on HF (peft) and
               SGLang (its LoRA pool): the sweeps cover the adapter only
Peak memory: torch.cuda.max_memory_allocated around forward-only and around steps, per backend; for
SGLang that includes its KV pool (mem_fraction_static of the free memory, allocated up front).
--isolate runs each section (hf, sglang, lora_hf, lora_sglang) in a process of its own and merges the
results, so no section's peak or pool size depends on what an earlier one left on the GPU:
    python bench/bench_step.py --shape 1b --lora --isolate --out results.json
Prints the measurements as JSON, then as a Markdown table (--out writes the JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "gpu")]

from sglang_models import (  # noqa: E402
    LLAMA_1B,
    LLAMA_8B,
    mean_nll,
    random_requests,
    save_random_model,
    sglang_cfg,
    single_ctx,
)

from mezo_elastic.config import Config, MezoConfig, ModelConfig, PeftConfig  # noqa: E402
from mezo_elastic.zo.optimizer import MezoOptimizer, StepRecord  # noqa: E402
from mezo_elastic.zo.perturb import ParamSegment, SweepPlan, step_seed, sweep  # noqa: E402

SHAPES = {"1b": LLAMA_1B, "8b": LLAMA_8B}
TUNE = False  # --tune: also time other kernel block sizes and keep the fastest for the steps
DIST = "gaussian"  # --distribution: ours' z in the sweeps and steps (mezo.distribution)


def timed(fn, reps: int, warmup: int = 2) -> float:
    """Median wall time of fn() in ms, CUDA-synchronised around each call."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def peak(fn) -> float:
    """Peak allocated GiB while fn() runs (after resetting the peak counter)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def copy_bandwidth() -> float:
    """TB/s of a 2 GiB device copy (read + write counted)."""
    src = torch.empty(2**30, dtype=torch.int16, device="cuda")
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), 10)
    return 2 * 2**31 / (ms * 1e-3) / 1e12


# ---- the reference: princeton-nlp/MeZO large_models/trainer.py, reimplemented faithfully ----
class ReferenceMeZO:
    """zo_perturb_parameters / zo_forward / zo_step / zo_update of the reference trainer (HF model)."""

    def __init__(self, model: torch.nn.Module, eps: float, lr: float, weight_decay: float = 0.0) -> None:
        self.model, self.eps, self.lr, self.wd = model, eps, lr, weight_decay
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or True]

    def zo_perturb_parameters(self, random_seed: int, scaling_factor: float = 1.0) -> None:
        torch.manual_seed(random_seed)
        for _, param in self.named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            param.data = param.data + scaling_factor * z * self.eps

    def zo_forward(self, inputs: dict) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode():
            return self.model(**inputs).loss.detach()

    def zo_step(self, inputs: dict) -> float:
        self.zo_random_seed = np.random.randint(1000000000)
        self.zo_perturb_parameters(self.zo_random_seed, scaling_factor=1)
        loss1 = self.zo_forward(inputs)
        self.zo_perturb_parameters(self.zo_random_seed, scaling_factor=-2)
        loss2 = self.zo_forward(inputs)
        self.projected_grad = ((loss1 - loss2) / (2 * self.eps)).item()
        self.zo_perturb_parameters(self.zo_random_seed, scaling_factor=1)
        return float(loss1)

    def zo_update(self) -> None:
        torch.manual_seed(self.zo_random_seed)
        for name, param in self.named:
            z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
            if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
                param.data = param.data - self.lr * (self.projected_grad * z + self.wd * param.data)
            else:
                param.data = param.data - self.lr * (self.projected_grad * z)


def reference_inputs(reqs, device) -> dict:
    """input_ids / attention_mask / labels (completion only) of equal-length requests."""
    ids = torch.tensor([list(r.prompt_ids) + list(r.completion_ids) for r in reqs], device=device)
    labels = ids.clone()
    labels[:, : len(reqs[0].prompt_ids)] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


# ---- ours ----
def our_step(runner, opt: MezoOptimizer, reqs, t: int, mcfg: MezoConfig) -> float:
    """One dp-mode MeZO step as the trainer does it: weights arrive perturbed (+eps z_t), 2 sweeps."""
    s, nxt = step_seed(0, t), step_seed(0, t + 1)
    opt.perturb(s, 1.0)  # no-op after the first step: the previous update left +eps z_t
    lp = mean_nll(runner.score(reqs))
    opt.perturb(s, -1.0)
    lm = mean_nll(runner.score(reqs))
    g = (lp - lm) / (2 * mcfg.eps)
    opt.update(StepRecord(step=t, seeds=[s], grads=[g], lr=mcfg.lr, weight_decay=mcfg.weight_decay), nxt)
    return lp


def fresh_segments(model: torch.nn.Module) -> list[ParamSegment]:
    """Segments over the model's current parameter storage, as HFRunner builds them."""
    return [ParamSegment(p.data.view(-1), n, 0, p.dim() >= 2) for n, p in model.named_parameters()]


def bench_sweeps(segs: list[ParamSegment], reps: int, n_bytes: int, out: dict) -> None:
    ours1 = timed(lambda: sweep(segs, SweepPlan(post=[(1, 1e-3)], dist=DIST)), reps)
    ours2 = timed(lambda: sweep(segs, SweepPlan(pre=[(1, -1e-3)], post=[(1, -1e-6), (2, 1e-3)], dist=DIST)), reps)
    torch_path = timed(lambda: sweep(segs, SweepPlan(post=[(1, 1e-3)], dist=DIST), fused=False), 1, warmup=0)
    out["sweep_ours_1seed_ms"], out["sweep_ours_2seed_ms"], out["sweep_torch_path_ms"] = ours1, ours2, torch_path
    out["sweep_ours_1seed_TBps"] = 2 * n_bytes / (ours1 * 1e-3) / 1e12
    out["sweep_ours_2seed_TBps"] = 2 * n_bytes / (ours2 * 1e-3) / 1e12
    if TUNE:
        from mezo_elastic.zo import triton_sweep as kernels

        best = (ours2, kernels.BLOCK_C, kernels.NUM_WARPS)
        for blk, warps in ((256, 4), (512, 8), (1024, 4), (1024, 8), (2048, 8)):
            kernels.BLOCK_C, kernels.NUM_WARPS = blk, warps
            segs = list(segs)  # a new list: the kernel rebuilds its block table for the new BLOCK_C
            plan = SweepPlan(pre=[(1, -1e-3)], post=[(1, -1e-6), (2, 1e-3)], dist=DIST)
            ms = timed(lambda segs=segs, plan=plan: sweep(segs, plan), reps)
            out[f"sweep_2seed_ms_block{blk}_warps{warps}"] = ms
            best = min(best, (ms, blk, warps))
        kernels.BLOCK_C, kernels.NUM_WARPS = best[1], best[2]
        out["sweep_best_block_warps"] = [best[1], best[2]]


def run_hf(path: Path, reqs, args, out: dict) -> None:
    from mezo_elastic.runners.hf.runner import HFRunner

    dev = torch.device("cuda", 0)
    hf = HFRunner(Config(model=ModelConfig(backend="hf", path=str(path), dtype="bfloat16", device="cuda")), dev, str(path))
    n_bytes = sum(p.numel() * p.element_size() for p in hf.model.parameters())
    out["params_B"] = sum(p.numel() for p in hf.model.parameters()) / 1e9
    if args.parity:
        out["loss_hf_clean"] = mean_nll(hf.score(reqs))
    ref = ReferenceMeZO(hf.model, eps=1e-3, lr=1e-7)
    out["sweep_reference_ms"] = timed(lambda: ref.zo_perturb_parameters(1, 1.0), args.reps)
    out["sweep_reference_TBps"] = 2 * n_bytes / (out["sweep_reference_ms"] * 1e-3) / 1e12
    # The reference rebinds param.data each sweep, so segments are rebuilt from the live parameters
    # (a new list: the kernel caches its pointer table per list object).
    bench_sweeps(fresh_segments(hf.model), args.reps, n_bytes, out)
    out["forward_hf_ms"] = timed(lambda: hf.score(reqs), args.reps)
    out["peak_forward_hf_GiB"] = peak(lambda: hf.score(reqs))
    inputs = reference_inputs(reqs, dev)

    def ref_step():
        ref.zo_step(inputs)
        ref.zo_update()

    out["step_reference_ms"] = timed(ref_step, args.reps)
    out["peak_step_reference_GiB"] = peak(ref_step)
    mcfg = MezoConfig(lr=1e-7, eps=1e-3, distribution=DIST)
    opt = MezoOptimizer(fresh_segments(hf.model), mcfg, master_weights=False)
    counter = iter(range(10**6))
    out["step_ours_hf_ms"] = timed(lambda: our_step(hf, opt, reqs, next(counter), mcfg), args.reps)
    out["peak_step_ours_hf_GiB"] = peak(lambda: our_step(hf, opt, reqs, next(counter), mcfg))
    hf.close()


def run_sglang(path: Path, reqs, args, out: dict) -> None:
    from mezo_elastic.runners.sglang.runner import SGLangRunner

    cfg = sglang_cfg(path, mem_fraction_static=args.mem_fraction, attention_backend=args.attention,
                     sglang_load_format="dummy" if args.sglang_dummy else "auto")
    cfg.data.max_length, cfg.data.micro_batch = args.seq + 1, args.batch
    sg = SGLangRunner(single_ctx(), cfg, torch.device("cuda", 0), str(path))
    if args.parity and not args.sglang_dummy:
        out["loss_sglang_clean"] = mean_nll(sg.score(reqs))
    out["forward_sglang_ms"] = timed(lambda: sg.score(reqs), args.reps)
    out["peak_forward_sglang_GiB"] = peak(lambda: sg.score(reqs))
    mcfg = MezoConfig(lr=1e-7, eps=1e-3, distribution=DIST)
    opt = MezoOptimizer(sg.segments(), mcfg, master_weights=False)
    counter = iter(range(10**6))
    out["step_ours_sglang_ms"] = timed(lambda: our_step(sg, opt, reqs, next(counter), mcfg), args.reps)
    out["peak_step_ours_sglang_GiB"] = peak(lambda: our_step(sg, opt, reqs, next(counter), mcfg))
    sg.close()


def run_lora(path: Path, reqs, args, out: dict, backend: str) -> None:
    """Steps and peak memory with a LoRA adapter as the trainable set on `backend` (fp32 adapter master)."""
    from mezo_elastic.runners.hf.runner import HFRunner
    from mezo_elastic.runners.sglang.runner import SGLangRunner

    mcfg, peft = MezoConfig(lr=5e-5, eps=1e-2), PeftConfig(method="lora")
    dev = torch.device("cuda", 0)
    if backend == "hf":
        runner = HFRunner(Config(model=ModelConfig(backend="hf", path=str(path), dtype="bfloat16", device="cuda"),
                                 peft=peft), dev, str(path))
    else:
        cfg = sglang_cfg(path, mem_fraction_static=args.mem_fraction, attention_backend=args.attention,
                         sglang_load_format="dummy" if args.sglang_dummy else "auto")
        cfg.data.max_length, cfg.data.micro_batch, cfg.peft = args.seq + 1, args.batch, peft
        runner = SGLangRunner(single_ctx(), cfg, dev, str(path))
    opt = MezoOptimizer(runner.segments(), mcfg, master_weights=True)
    out["lora_params_M"] = sum(s.tensor.numel() for s in runner.segments()) / 1e6
    counter = iter(range(10**6))
    out[f"step_lora_{backend}_ms"] = timed(lambda: our_step(runner, opt, reqs, next(counter), mcfg), args.reps)
    out[f"peak_step_lora_{backend}_GiB"] = peak(lambda: our_step(runner, opt, reqs, next(counter), mcfg))
    out[f"sweep_lora_{backend}_ms"] = timed(lambda: opt.perturb(step_seed(1, next(counter)), 1.0), args.reps)
    runner.close()
    runner = opt = None  # not del: the lambdas above close over these names (ruff F821)
    gc.collect()
    torch.cuda.empty_cache()


def sections(args) -> list[str]:
    """The sections this invocation measures, in order."""
    backends = [b for b, skip in (("hf", args.skip_hf), ("sglang", args.skip_sglang)) if not skip]
    return backends + ([f"lora_{b}" for b in backends] if args.lora else [])


def run_section(name: str, path: Path, reqs, args, out: dict) -> None:
    if name == "hf":
        run_hf(path, reqs, args, out)
    elif name == "sglang":
        run_sglang(path, reqs, args, out)
    else:
        run_lora(path, reqs, args, out, name.removeprefix("lora_"))
    gc.collect()  # what this section built goes before the next one takes its memory share
    torch.cuda.empty_cache()


def run_isolated(names: list[str], out: dict) -> None:
    """Each section in a child process of this script (--section NAME); their results merged into `out`.
    A section that fails is reported (its log tail) and the others still run."""
    argv = [a for a in sys.argv[1:] if a != "--isolate"]
    if "--out" in argv:
        i = argv.index("--out")
        del argv[i:i + 2]
    argv = [a for a in argv if not a.startswith("--out=")]
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, __file__, *argv, "--section", name, "--out", f.name],
                               capture_output=True, text=True)
            print(f"== section {name}: exit {r.returncode} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            if r.returncode:
                print(r.stdout[-3000:] + r.stderr[-3000:], file=sys.stderr)
                out.setdefault("failed_sections", []).append(name)
                continue
            out.update({k: v for k, v in json.loads(Path(f.name).read_text()).items() if k not in out})


def table(out: dict) -> str:
    """The benchmark's rows as a Markdown table (rows whose measurements are missing are left out)."""
    g = out.get
    ref = g("step_reference_ms")

    def ms(key: str, tb: str | None = None, vs_ref: bool = False) -> str | None:
        if g(key) is None:
            return None
        cell = f"{g(key):.2f} ms"
        if tb and g(tb) is not None:
            cell += f" ({g(tb):.2f} TB/s, {100 * g(tb) / g('copy_TBps'):.0f} % of copy)"
        if vs_ref and ref:
            cell += f" ({ref / g(key):.2f}x faster than the reference)"
        return cell

    rows = [
        ("copy bandwidth (2 GiB D2D)", f"{g('copy_TBps'):.2f} TB/s"),
        ("sweep, reference (torch.normal per tensor)", ms("sweep_reference_ms", "sweep_reference_TBps")),
        (f"sweep, ours, 1 seed (perturb; z {g('distribution', 'gaussian')})",
         ms("sweep_ours_1seed_ms", "sweep_ours_1seed_TBps")),
        (f"sweep, ours, 2 seeds (restore + update + next; z {g('distribution', 'gaussian')})",
         ms("sweep_ours_2seed_ms", "sweep_ours_2seed_TBps")),
        ("forward, HF eager", ms("forward_hf_ms")),
        ("forward, SGLang", ms("forward_sglang_ms")),
        ("step, REFERENCE MeZO (HF)", ms("step_reference_ms")),
        ("step, ours on HF", ms("step_ours_hf_ms", vs_ref=True)),
        ("step, ours on SGLang", ms("step_ours_sglang_ms", vs_ref=True)),
        ("ideal step (2 SGLang forwards + 2 sweeps at copy bandwidth)", ms("step_ideal_ms", vs_ref=True)),
        ("ours on SGLang / ideal", f"{g('step_ours_sglang_ms') / g('step_ideal_ms'):.2f}"
         if g("step_ideal_ms") and g("step_ours_sglang_ms") else None),
        ("peak GiB: HF forward / ours HF step / reference step",
         " / ".join(f"{g(k):.2f}" for k in ("peak_forward_hf_GiB", "peak_step_ours_hf_GiB", "peak_step_reference_GiB"))
         if g("peak_step_reference_GiB") is not None else None),
        ("peak GiB: SGLang forward / ours SGLang step",
         f"{g('peak_forward_sglang_GiB'):.2f} / {g('peak_step_ours_sglang_GiB'):.2f}"
         if g("peak_step_ours_sglang_GiB") is not None else None),
        ("LoRA (r 8, q/v): sweep / step on HF (peft)", " / ".join(filter(None, (ms("sweep_lora_hf_ms"), ms(
            "step_lora_hf_ms", vs_ref=True)))) or None),
        ("LoRA (r 8, q/v): sweep / step on SGLang (LoRA pool)", " / ".join(filter(None, (ms("sweep_lora_sglang_ms"), ms(
            "step_lora_sglang_ms", vs_ref=True)))) or None),
        ("peak GiB, LoRA step: HF / SGLang", " / ".join(f"{g(k):.2f}" if g(k) is not None else "-" for k in (
            "peak_step_lora_hf_GiB", "peak_step_lora_sglang_GiB")) if g("lora_params_M") is not None else None),
        ("clean loss on the same weights: HF / SGLang",
         f"{g('loss_hf_clean'):.5f} / {g('loss_sglang_clean'):.5f}" if g("loss_sglang_clean") is not None
         and g("loss_hf_clean") is not None else None),
    ]
    head = (f"{g('shape')} shape ({g('params_B', float('nan')):.2f} B params), batch {g('batch')} x {g('seq')} tokens, "
            f"bf16, on {g('gpu')}; torch {g('torch')}")
    lines = [head, "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v is not None]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256, help="prompt + completion tokens per example")
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--mem-fraction", type=float, default=0.6)
    ap.add_argument("--attention", default="triton", help="SGLang attention backend (triton, fa3, flashinfer)")
    ap.add_argument("--sglang-dummy", action="store_true", help="SGLang loads random weights itself (no parity)")
    ap.add_argument("--parity", action="store_true", help="also report HF vs SGLang clean loss on the same weights")
    ap.add_argument("--tune", action="store_true", help="time the sweep kernel at other block sizes")
    ap.add_argument("--lora", action="store_true", help="also time MeZO-LoRA steps (docs/lora.md) on both backends")
    ap.add_argument("--distribution", default="gaussian", choices=["gaussian", "rademacher", "rademacher32"],
                    help="ours' z (mezo.distribution) in the sweeps and steps; the reference keeps torch.normal")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-sglang", action="store_true")
    ap.add_argument("--isolate", action="store_true", help="each section in a process of its own (children)")
    ap.add_argument("--section", choices=["hf", "sglang", "lora_hf", "lora_sglang"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default="/tmp/mezo_bench")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    global TUNE, DIST
    TUNE, DIST = args.tune, args.distribution
    spec = SHAPES[args.shape]
    path = Path(args.workdir) / args.shape
    if not (path / "config.json").exists() or (not args.sglang_dummy and not (path / "model.safetensors").exists()
                                                and not any(path.glob("*.safetensors"))):
        save_random_model(spec, path, seed=0)
    prompt = args.seq - args.completion
    reqs = random_requests(args.batch, 32000, seed=0, prompt=(prompt, prompt), completion=(args.completion, args.completion))
    out = {"shape": args.shape, "distribution": args.distribution, "attention": args.attention, "batch": args.batch,
           "seq": args.seq, "completion": args.completion,
           "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    if args.section:  # a child of --isolate: measure the one section, hand the JSON back
        run_section(args.section, path, reqs, args, out)
        Path(args.out).write_text(json.dumps(out, indent=1))
        return
    out["copy_TBps"] = copy_bandwidth()
    if args.isolate:
        torch.cuda.empty_cache()  # this process keeps only its CUDA context while the children run
        run_isolated(sections(args), out)
    else:
        for name in sections(args):
            run_section(name, path, reqs, args, out)
    if "params_B" in out and "forward_sglang_ms" in out:
        sweep_ideal_ms = 2 * out["params_B"] * 1e9 * 2 / (out["copy_TBps"] * 1e12) * 1e3
        out["step_ideal_ms"] = 2 * out["forward_sglang_ms"] + 2 * sweep_ideal_ms
    print(json.dumps(out, indent=1))
    print("\n" + table(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    if out.get("failed_sections"):
        sys.exit(f"sections that failed (their output is above): {out['failed_sections']}")


if __name__ == "__main__":
    main()
