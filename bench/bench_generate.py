"""Generation benchmark on one GPU: SGLang decode (CUDA graphs) vs HF generate, and a population step.

    python bench/bench_generate.py --shape 1b --population --out gen_1b.json
    python bench/bench_generate.py --shape 8b

Random weights from a config (no downloads); greedy; every row generates all --new tokens (no EOS).
Rows:
  generate     tokens/s of batch --batch x --new new tokens after --prompt prompt tokens: HF generate()
               (HFRunner) vs ours (SGLangRunner: one prefill, then decode forwards through SGLang's
               decode CUDA graphs); ms per decoded token step
  population   one step with K = --k seeds, --pop-batch prompts of --pop-prompt tokens, --new new tokens:
               REFERENCE = a faithful reimplementation of the ES loop of Qiu et al. 2025
               (VsonicV/es-fine-tuning-paper, countdown/es_fine-tuning_countdown.py: per seed, per tensor
               torch.randn from a seeded generator added in place in bf16, HF generate, the same noise
               subtracted; rewards z-scored; the update regenerates every seed's noise per tensor) vs ours
               (K seeds each at +eps and -eps as the trainer's step does it: 2K generations, one sweep
               between them, the fp32 master, one update sweep)
  drift        max |w - w0| after --drift-steps steps at lr 0 (perturb and restore only): reference vs ours
The reward of both is the same token-level function (fraction of generated ids below vocab / 2), so
the step times compare engines and sweeps, not reward code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "gpu"), str(REPO / "bench")]

from bench_step import SHAPES, timed  # noqa: E402
from sglang_models import save_random_model, sglang_cfg, single_ctx  # noqa: E402

from mezo_elastic.config import Config, MezoConfig, ModelConfig  # noqa: E402
from mezo_elastic.runners.base import GenerateRequest, GenerationSettings  # noqa: E402
from mezo_elastic.zo.optimizer import MezoOptimizer, StepRecord, seeds_for_step  # noqa: E402
from mezo_elastic.zo.shaping import shaped_grads  # noqa: E402

SIGMA, ALPHA = 1e-3, 5e-4  # the ES paper's sigma and alpha


def prompts(n: int, length: int, vocab: int, seed: int) -> list[GenerateRequest]:
    g = np.random.default_rng(seed)
    return [GenerateRequest(tuple(int(x) for x in g.integers(0, vocab, length)), seed=i) for i in range(n)]


def token_reward(rows: list[tuple[int, ...]], vocab: int) -> float:
    """Mean over rows of the fraction of generated ids below vocab / 2 (a stand-in for a real reward)."""
    return float(np.mean([np.mean([t < vocab // 2 for t in r]) if r else 0.0 for r in rows]))


class ReferenceES:
    """The ES loop of the reference (see the module docstring), on an HF model in bf16."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def _noise_add(self, seed: int, scale: float) -> None:
        for _, param in self.model.named_parameters():
            gen = torch.Generator(device=param.device)
            gen.manual_seed(int(seed))
            noise = torch.randn(param.shape, generator=gen, device=param.device, dtype=param.dtype)
            param.data.add_(scale * noise)

    def step(self, seeds: list[int], evaluate, alpha: float = ALPHA) -> None:
        rewards = []
        for s in seeds:
            self._noise_add(s, SIGMA)
            rewards.append(evaluate() if evaluate else 0.0)
            self._noise_add(s, -SIGMA)
        if alpha == 0:  # the update would add zeros (the drift rows time perturb and restore only)
            return
        r = np.array(rewards, dtype=np.float32)
        r_norm = (r - r.mean()) / (r.std() + 1e-8)
        for _, param in self.model.named_parameters():
            gen = torch.Generator(device=param.device)
            update = torch.zeros_like(param)
            for i, s in enumerate(seeds):
                gen.manual_seed(int(s))
                noise = torch.randn(param.shape, generator=gen, device=param.device, dtype=param.dtype)
                update.add_(noise.mul_(float(r_norm[i])))
            param.data.add_(alpha * update / len(seeds))


def our_population_step(runner, opt: MezoOptimizer, t: int, k: int, evaluate, mcfg: MezoConfig) -> None:
    """The trainer's step with K seeds (dp mode, one data slot): 2K scored sides, then one update."""
    seeds = seeds_for_step(0, t, "dp", 1, k)
    plus, minus = [], []
    for s in seeds:
        opt.perturb(s, +1.0)
        plus.append(-evaluate() if evaluate else 0.0)
        opt.perturb(s, -1.0)
        minus.append(-evaluate() if evaluate else 0.0)
    grads = shaped_grads(plus, minus, mcfg.reward_shaping, mcfg.shaped_update, mcfg.eps, 0.0)
    opt.update(StepRecord(step=t, seeds=seeds, grads=grads, lr=mcfg.lr, weight_decay=0.0),
               seeds_for_step(0, t + 1, "dp", 1, k)[0])


def max_drift(model_or_state, w0: dict[str, torch.Tensor]) -> float:
    return max(float((p.detach().float() - w0[n].float()).abs().max()) for n, p in model_or_state.items())


def time_generation(runner, vocab: int, name: str, args, out: dict, warmup: int):
    """Time the generate rows of `runner` (out[generate_<name>_ms / _tok_s]); return the population's
    evaluate(): the mean token reward of one generation of the population prompts."""
    reqs = prompts(args.batch, args.prompt, vocab, seed=0)
    settings = GenerationSettings(max_new_tokens=args.new)
    ms = timed(lambda: runner.generate(reqs, settings), args.reps, warmup=warmup)
    out[f"generate_{name}_ms"], out[f"generate_{name}_tok_s"] = ms, args.batch * args.new / (ms * 1e-3)
    pop = prompts(args.pop_batch, args.pop_prompt, vocab, seed=1)
    return lambda: token_reward(runner.generate(pop, settings), vocab)


def run_hf(path: Path, args, out: dict) -> None:
    from mezo_elastic.runners.hf.runner import HFRunner

    dev = torch.device("cuda", 0)
    hf = HFRunner(Config(model=ModelConfig(backend="hf", path=str(path), dtype="bfloat16", device="cuda")), dev, str(path))
    ev = time_generation(hf, hf.model.config.vocab_size, "hf", args, out, warmup=1)
    if args.population:
        ref = ReferenceES(hf.model)
        seeds = list(range(args.k))
        out["population_reference_s"] = timed(lambda: ref.step(seeds, ev), 1, warmup=0) / 1e3
        w0 = {n: p.detach().clone() for n, p in hf.model.named_parameters()}
        for t in range(args.drift_steps):
            ref.step([t * args.k + i for i in range(args.k)], None, alpha=0.0)
        out["drift_reference_max_abs"] = max_drift(dict(hf.model.named_parameters()), w0)
        out["drift_reference_rel"] = float(sum(((p.detach().float() - w0[n].float()) ** 2).sum() for n, p in
                                               hf.model.named_parameters()).sqrt() /
                                           sum((w.float() ** 2).sum() for w in w0.values()).sqrt())
        del w0
    hf.close()
    torch.cuda.empty_cache()


def run_sglang(path: Path, args, out: dict) -> None:
    from mezo_elastic.runners.sglang.runner import SGLangRunner

    cfg = sglang_cfg(path, mem_fraction_static=args.mem_fraction)
    cfg.data.objective, cfg.data.micro_batch = "reward", max(args.batch, args.pop_batch)
    cfg.data.max_length = max(args.prompt, args.pop_prompt) + args.new + 1
    t0 = time.perf_counter()
    sg = SGLangRunner(single_ctx(), cfg, torch.device("cuda", 0), str(path))
    out["sglang_start_s"] = time.perf_counter() - t0
    ev = time_generation(sg, sg.engine.model_runner.model_config.vocab_size, "sglang", args, out, warmup=2)
    if args.population:
        mcfg = MezoConfig(lr=ALPHA, eps=SIGMA, perturbations=args.k, reward_shaping="zscore")
        opt = MezoOptimizer(sg.segments(), mcfg, master_weights=True)
        out["population_ours_s"] = timed(lambda: our_population_step(sg, opt, 0, args.k, ev, mcfg), 1, warmup=1) / 1e3
        opt.clean()
        w0 = {n: t.clone() for n, t in sg.hf_state_dict().items()}
        zero = MezoConfig(lr=0.0, eps=SIGMA, perturbations=args.k)
        opt0 = MezoOptimizer(sg.segments(), zero, master_weights=True)
        for t in range(args.drift_steps):
            our_population_step(sg, opt0, t, args.k, None, zero)
        opt0.clean()
        out["drift_ours_max_abs"] = max_drift(sg.hf_state_dict(), w0)
    sg.close()


def table(out: dict) -> str:
    g = out.get
    rows = [("generate, HF generate()", g("generate_hf_tok_s") and
             f"{g('generate_hf_tok_s'):.0f} tokens/s ({g('generate_hf_ms') / out['new']:.2f} ms a token step)"),
            ("generate, ours (SGLang decode, CUDA graphs)", g("generate_sglang_tok_s") and
             f"{g('generate_sglang_tok_s'):.0f} tokens/s ({g('generate_sglang_ms') / out['new']:.2f} ms a token step)"),
            ("generate speed-up", g("generate_hf_ms") and g("generate_sglang_ms") and
             f"{g('generate_hf_ms') / g('generate_sglang_ms'):.2f}x"),
            (f"population step K={out['k']}, REFERENCE ES (HF generate, bf16 randn perturb/restore)",
             g("population_reference_s") and f"{g('population_reference_s'):.2f} s"),
            (f"population step K={out['k']}, ours (2K generations on SGLang, fp32 master)",
             g("population_ours_s") and f"{g('population_ours_s'):.2f} s"),
            ("population speed-up", g("population_reference_s") and g("population_ours_s") and
             f"{g('population_reference_s') / g('population_ours_s'):.2f}x"),
            (f"weight drift after {out['drift_steps']} steps at lr 0: reference / ours (max abs)",
             g("drift_ours_max_abs") is not None and g("drift_reference_max_abs") is not None and
             f"{g('drift_reference_max_abs'):.3g} (relative norm {g('drift_reference_rel'):.3g}) / {g('drift_ours_max_abs'):.3g}")]
    head = (f"{out['shape']} shape, greedy, batch {out['batch']} x ({out['prompt']} prompt + {out['new']} new) tokens; "
            f"population: {out['pop_batch']} prompts of {out['pop_prompt']} tokens; bf16 on {out['gpu']}; torch {out['torch']}")
    return "\n".join([head, "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--population", action="store_true", help="also the population step and the drift rows")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--pop-batch", type=int, default=32)
    ap.add_argument("--pop-prompt", type=int, default=64)
    ap.add_argument("--drift-steps", type=int, default=100)
    ap.add_argument("--mem-fraction", type=float, default=0.6)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--workdir", default="/tmp/mezo_bench")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    path = Path(args.workdir) / args.shape
    if not any(path.glob("*.safetensors")):
        save_random_model(SHAPES[args.shape], path, seed=0)
    out = {k: getattr(args, k) for k in ("shape", "batch", "prompt", "new", "k", "pop_batch", "pop_prompt", "drift_steps")}
    out.update(gpu=torch.cuda.get_device_name(0), torch=torch.__version__)
    if not args.skip_hf:
        run_hf(path, args, out)
    run_sglang(path, args, out)
    print(json.dumps(out, indent=1))
    print("\n" + table(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
