"""Time to accuracy: training wall-clock and forward passes until each method's smoothed eval metric reaches a
target the reference MeZO reaches by construction (docs/benchmarks.md#time-to-accuracy).

    python bench/time_to_accuracy.py --smoke --out /tmp/tta                       # CPU, built-in model, < 1 min
    python bench/time_to_accuracy.py --model $MEZO_REAL_GGUF --out $OUT/tta       # one GPU, the real model
    python bench/time_to_accuracy.py --model DIR --out OUT --task mytask --objective classification \\
        --train train.jsonl --eval eval.jsonl                                      # your own task and model

The rule (bench/tta/curves.py; W = --window 3, F = --fraction 0.8, --min-gain 0.10):
- smoothed metric at eval i = the mean of the last W evals up to i (fewer at the start), step 0 counted;
- zero-shot = the step-0 eval, median over the reference's seeds; ref final = the mean of the reference's
  last W evals, median over its seeds; target = zero-shot + F (ref final - zero-shot);
- a run's time to target = its training seconds (and forwards) at the first eval i >= W - 1 (a full
  window) whose smoothed metric is >= the target (<= for --metric loss); never = not reached;
- the reference's median gain ref final - zero-shot below --min-gain: "task did not learn: no verdict";
- metric at the reference's wall-clock = a run's smoothed metric at its last eval at or before the
  reference's median total training seconds.

Methods. The reference is MeZO as princeton-nlp/MeZO runs it (bench_step.ReferenceMeZO: HF forwards,
torch.normal per tensor, 4 sweeps and 2 forwards a step) with the task's loss, in float32 (--ref-dtype: MeZO's
run.py loads float32 unless --load_float16/--load_bfloat16; with bfloat16 weights much of each update lr g z is
below half an ulp and rounds away, so it learns less per forward than it can); its lr is the best of
--ref-lrs by final smoothed metric on seed 0 (the grid always runs on seed 0), then every seed runs that
lr. Ours is python -m mezo_elastic.train (--backend, sglang on a GPU; --dtype, bfloat16 on a GPU, with the
fp32 master weights it keeps for 16-bit dtypes) with each estimator of --estimators:
spsa (--lr-spsa, default the reference's lr; eps = --eps), fzoo (FZOO's own rule and settings: --eps-fzoo
1e-3, --fzoo-k 8, --lr-fzoo a grid 1e-5,3e-4,1e-3,3e-3, since its authors tune lr per model and its step is
scale-free; --fzoo-scales S,... instead sets lr = S x lr_ref x median|g_ref|, the older rule), es (--lr-es,
--eps-es, --es-n), gv (MeZO-GV: --gv-k candidates a step, lr = --gv-lr-scales x lr_ref, default 0.5,1;
eps = --eps), zo_muon (ZO-Muon: 4 subspace points + theta a step, r = --zo-muon-rank 64, P redrawn every
100 steps, lr --lr-zo-muon, on the hf backend). Why each setting, with the sources: bench/tta/methods.py.
A method with several lrs runs them on seed 0 and its soonest to the target on every seed.

Budget and evals: the reference runs its step budget (--steps-cls / --steps-reward / --steps); each of ours
may run up to --budget (3) x the reference's forwards and evaluates as often in forwards (every
--eval-every reference steps = 2 x that many forwards). With --stop-at-target (the default) a run of ours
ends once its smoothed curve has reached the target, W more evals are in, and its training seconds have
passed the reference's median total (so the metric at the reference's wall-clock is observed);
--no-stop-at-target runs the whole budget. Seconds count training only (start-up and evals out, both
sides); forwards = steps x forward passes a step (reference, spsa 2; fzoo K + 1; es N; gv K + 2; zo_muon 5).

Pieces: every run writes OUT/runs/<task>/<method>-<lr>-s<seed>.json when it ends and a re-invocation with
the same OUT skips finished runs, so the bench splits into commands of a few minutes (--tasks, --methods
reference|ours, --seeds, --estimators); --report-only builds the table (printed, OUT/tta.md), OUT/tta.json
(curves included) and OUT/tta-<task>.png from what is there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests" / "gpu")]

from tta import report, store  # noqa: E402
from tta.curves import Rule, target  # noqa: E402
from tta.methods import make_methods, our_lrs  # noqa: E402
from tta.models import task_list  # noqa: E402
from tta.runners import run_ours, run_reference, settings  # noqa: E402


def rule_for(args, task) -> Rule:
    return Rule(window=args.window, fraction=args.fraction, min_gain=args.min_gain, higher=task.metric != "loss")


def bench_reference(args, out: Path, task, model: str) -> None:
    """The reference's lr grid on seed 0, then the chosen lr on every seed of --seeds."""
    ref = make_methods(args)["reference"]
    want = settings(args, task, ref)

    def run(lr: float, seed: int) -> dict:
        return store.ensure(out, task.name, "reference", lr, seed, want, lambda: {
            "eps": args.eps, **run_reference(args, task, seed, lr, model)})

    for lr in args.ref_lrs:
        run(lr, 0)
    lr = store.pick_lr(store.load_runs(out, task.name, "reference"), rule_for(args, task))
    for seed in args.seeds:
        run(lr, seed)


def bench_ours(args, out: Path, task, model: str) -> None:
    """Each estimator: its lrs on seed 0 (when several), the soonest to the target on every seed."""
    rule = rule_for(args, task)
    refs_all = store.load_runs(out, task.name, "reference")
    refs = store.at_lr(refs_all, store.pick_lr(refs_all, rule))
    if not refs:
        raise SystemExit(f"{task.name}: no finished reference runs in {out}; run --methods reference first")
    tgt = target([r["curve"] for r in refs], rule)["target"]
    stop = (tgt, rule, store.total_seconds(refs)) if args.stop_at_target else None
    methods = make_methods(args)
    for est in args.estimators:
        method = methods[est]
        want = settings(args, task, method)

        def run(lr: float, seed: int, est=est, method=method, want=want) -> dict:
            work = out / "work" / task.name / f"{est}-{lr:g}-s{seed}"
            return store.ensure(out, task.name, est, lr, seed, want, lambda: {
                "eps": method.eps, **run_ours(args, task, seed, method, lr, model, work, stop)})

        lrs = our_lrs(args, est, refs)
        for lr in lrs if len(lrs) > 1 else []:
            run(lr, 0)
        best = store.pick_lr([r for r in store.load_runs(out, task.name, est) if r["lr"] in lrs], rule, tgt) \
            if len(lrs) > 1 else lrs[0]
        for seed in args.seeds:
            run(best, seed)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory: runs/, work/, tta.json, tta.md, tta-<task>.png")
    p.add_argument("--smoke", action="store_true", help="CPU, built-in model and tasks, tiny budget (< 1 min)")
    p.add_argument("--model", default="", help="HF directory or .gguf (the real model); empty = built-in")
    p.add_argument("--tasks", default="cls,reward", help="the built-in / real-model tasks to run")
    g = p.add_argument_group("your own task (instead of --tasks)")
    g.add_argument("--task", default="", help="its name (runs/<name>/, tta-<name>.png)")
    g.add_argument("--objective", choices=["classification", "reward", "lm"], default="classification")
    g.add_argument("--train", default="", help="train JSONL (docs/objectives.md has the row formats)")
    g.add_argument("--eval", default="", help="eval JSONL (at most --eval-examples rows are scored)")
    g.add_argument("--reward", default="exact_match", help="reward objective: data.reward (a built-in or MODULE:FUNCTION)")
    g.add_argument("--metric", choices=["accuracy", "reward", "loss"], default="",
                   help="default: accuracy (classification), reward (reward), loss (lm; lower is better)")
    g.add_argument("--verbatim", action="store_true", help="data.verbatim: prompt + completion exactly as written")
    g.add_argument("--max-new-tokens", type=int, default=6, help="reward objective: generate.max_new_tokens")
    g.add_argument("--steps", type=int, default=500, help="the reference's step budget on your task")
    p.add_argument("--methods", default="reference,ours", help="what this invocation runs: reference, ours, or both")
    p.add_argument("--estimators", default="spsa,fzoo,gv", help="ours: spsa, fzoo, es, gv, zo_muon")
    p.add_argument("--seeds", default="", help="seeds to run, e.g. 0,1,2 (default 0,1,2; smoke 0); grids use seed 0")
    p.add_argument("--report-only", action="store_true", help="run nothing: table, tta.json, PNGs from OUT's runs")
    p.add_argument("--backend", default="", help="ours: sglang or hf (default: sglang on CUDA, else hf)")
    p.add_argument("--dtype", default="", help="ours: the weights' dtype (default bfloat16 on CUDA, else float32)")
    p.add_argument("--ref-dtype", default="float32",
                   help="the reference's weights' dtype (default float32: MeZO's own default; with bfloat16 weights much "
                        "of each update lr x g x z rounds away)")
    r = p.add_argument_group("the target rule and budget")
    r.add_argument("--window", type=int, default=3, help="W: evals averaged by the smoothing")
    r.add_argument("--fraction", type=float, default=0.8, help="F: target = zero-shot + F (ref final - zero-shot)")
    r.add_argument("--min-gain", type=float, default=0.10, help="reference gain below this: no verdict")
    r.add_argument("--budget", type=int, default=3, help="ours may run up to this many times the reference's forwards")
    r.add_argument("--stop-at-target", action=argparse.BooleanOptionalAction, default=True,
                   help="end a run of ours once reached + W evals + the reference's wall-clock passed")
    m = p.add_argument_group("methods")
    m.add_argument("--ref-lrs", default="", help="reference lr grid (default 1e-5,3e-5,1e-4; smoke 1e-3,3e-3)")
    m.add_argument("--eps", type=float, default=None, help="reference and spsa eps (default 1e-3; smoke 1e-2)")
    m.add_argument("--lr-spsa", default="", help="spsa lr(s) (default: the reference's chosen lr)")
    m.add_argument("--lr-fzoo", default="", help="fzoo lr(s), a grid on seed 0 (default 1e-5,3e-4,1e-3,3e-3: "
                   "fzoo.sh's, then about 1/3, 1 and 3x the reference's step size; smoke 3e-3)")
    m.add_argument("--eps-fzoo", type=float, default=None, help="fzoo eps (default 1e-3: FZOO's fzoo.sh; smoke 1e-2)")
    m.add_argument("--fzoo-k", type=int, default=None, help="fzoo directions a step, FZOO's N (default 8; smoke 4)")
    m.add_argument("--fzoo-scales", default="", help="instead of --lr-fzoo: lr = scale x lr_ref x median|g_ref|")
    m.add_argument("--lr-es", default="5e-4", help="es lr(s) = ES's alpha (ES at scale: 5e-4)")
    m.add_argument("--eps-es", type=float, default=1e-3, help="es eps = ES's sigma (ES at scale: 1e-3)")
    m.add_argument("--es-n", type=int, default=30, help="es population N (ES at scale: 30)")
    m.add_argument("--gv-k", type=int, default=2, help="gv candidates a step, MeZO-GV's M (its code: 2)")
    m.add_argument("--gv-lr-scales", default="",
                   help="gv lr(s) = scale x the reference's chosen lr (default 0.5,1; smoke 1). 0.5 gives MeZO's step size "
                        "(v = z_best - z_worst); MeZO-GV's README ratio, 2 (2e-7 where MeZO's is 1e-7), collapsed "
                        "on both real-model tasks (2026-12-06)")
    m.add_argument("--lr-zo-muon", default="", help="zo_muon lr(s) (default 1e-3,3e-3,1e-2: ZO-Muon's README runs "
                   "OPT-13B at 1e-2; smoke 3e-2)")
    m.add_argument("--zo-muon-rank", type=int, default=None, help="zo_muon r (default 64, the authors'; smoke 8)")
    b = p.add_argument_group("budgets and evals")
    b.add_argument("--steps-cls", type=int, default=None, help="reference step budget (default 800; smoke 30)")
    b.add_argument("--steps-reward", type=int, default=None, help="reference step budget (default 400; smoke 20)")
    b.add_argument("--eval-every", type=int, default=None, help="reference steps between evals (default 40; smoke 10)")
    b.add_argument("--eval-examples", type=int, default=None, help="at most this many eval rows (default 1000; smoke 64)")
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--max-length", type=int, default=128)
    b.add_argument("--run-timeout", type=float, default=3600, help="seconds before a run of ours is killed")
    m.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a trainer setting for every run of ours, after the bench's own (repeatable), e.g. "
                        "mezo.perturb_about=weights; give each setting its own --out (runs are named by method, "
                        "lr and seed only)")
    a = p.parse_args(argv)
    builtin = a.smoke or not a.model
    cuda = torch.cuda.is_available() and not a.smoke
    a.builtin = builtin and not a.task
    a.seeds = [int(x) for x in (a.seeds or ("0" if a.smoke else "0,1,2")).split(",")]
    a.backend = a.backend or ("sglang" if cuda else "hf")
    a.device = "cuda" if cuda else "cpu"
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    a.ref_lrs = [float(x) for x in (a.ref_lrs or ("1e-3,3e-3" if builtin else "1e-5,3e-5,1e-4")).split(",")]
    a.eps = a.eps or (1e-2 if builtin else 1e-3)
    a.lr_fzoo = a.lr_fzoo or ("3e-3" if builtin else "1e-5,3e-4,1e-3,3e-3")
    a.eps_fzoo = a.eps_fzoo or (1e-2 if builtin else 1e-3)
    a.fzoo_k = a.fzoo_k or (4 if a.smoke else 8)
    a.gv_lr_scales = a.gv_lr_scales or ("1" if a.smoke else "0.5,1")
    a.lr_zo_muon = a.lr_zo_muon or ("3e-2" if builtin else "1e-3,3e-3,1e-2")
    a.zo_muon_rank = a.zo_muon_rank or (8 if a.smoke else 64)
    a.steps_cls = a.steps_cls or (30 if a.smoke else 800)
    a.steps_reward = a.steps_reward or (20 if a.smoke else 400)
    a.eval_every = a.eval_every or (10 if a.smoke else 40)
    a.eval_examples = a.eval_examples or (64 if a.smoke else 1000)
    a.methods = a.methods.split(",")
    a.estimators = [e for e in a.estimators.split(",") if e]
    bad = [x for x in a.methods if x not in ("reference", "ours")] + [
        e for e in a.estimators if e not in ("spsa", "fzoo", "es", "gv", "zo_muon")]
    if bad:
        p.error(f"unknown --methods/--estimators value(s) {bad}: methods are reference, ours; estimators spsa, fzoo, "
                f"es, gv, zo_muon")
    if a.task and not (a.train and a.eval):
        p.error("--task needs --train and --eval (JSONL files)")
    return a


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tasks, model = task_list(args, out)
    if not args.report_only:
        for task in tasks.values():
            if "reference" in args.methods:
                bench_reference(args, out, task, model)
            if "ours" in args.methods and args.estimators:
                bench_ours(args, out, task, model)
    meta = {"card": report.card(args.device), "backend": args.backend,
            "model": "built-in" if args.builtin else args.model,
            "budget": args.budget, "rule": {"window": args.window, "fraction": args.fraction, "min_gain": args.min_gain},
            "args": {k: v for k, v in vars(args).items()}}
    if args.report_only and (out / "tta.json").exists():  # the machine that ran them, not this one
        meta["measured"] = {k: v for k, v in json.loads((out / "tta.json").read_text()).items()
                            if k in ("card", "versions", "date", "model", "backend")}
    return report.build(out, tasks, ["reference", *args.estimators], lambda t: rule_for(args, t), meta)


if __name__ == "__main__":
    main()
