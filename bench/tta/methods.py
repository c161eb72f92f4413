"""The methods' settings: the reference, and ours per estimator, with their lrs.

FZOO as its paper runs it (DKmiyan/FZOO, fzoo.sh at commit d7d50ed, the script its README runs):
LR=1e-5, EPS=1e-3, FORWARD_N=8, BS=16, --lr_scheduler_type constant, --load_float16 (its README's
OPT-13B example sets LR=5e-5 EPS=1e-4 FORWARD_N=8, against MeZO's LR=1e-6 EPS=1e-3 there). Its lr is tuned
per model (1e-5 for fzoo.sh's OPT-1.3B, 5e-5 for OPT-13B), and its step is scale-free: g_n is a loss
difference over the losses' std, so each weight moves about lr / sqrt(N) a step whatever the gradient's
size, where MeZO's moves lr |g| |z_i| (the real model's references: lr 3e-5 x median |g| 9-15 on cls, 1e-5 x 31
on the reward task, x 0.8: about 2.5e-4 either way). At 1e-5 FZOO would take steps about 1/70 of the reference's,
so the bench tries, on seed 0 as the authors tuned per model, fzoo.sh's 1e-5 and 3e-4, 1e-3, 3e-3 (about a
third of the reference's step, about the same, about 3x). Its step
(trainer.py, OurTrainer.zo_step / zo_update): N Rademacher directions z_n = +-1, each scored once at
theta + eps z_n, plus one forward at theta; g_n = (L_n - L_0) / (N std(L_1..L_N)), std with
unbiased=False; theta -= lr * sum_n g_n z_n, lr constant. Ours (mezo.estimator=fzoo,
mezo.distribution=rademacher, mezo.perturbations=N) makes the same update: theta -= lr / N sum_n g_n z_n
with g_n = (L_n - L_0) / std (mezo_elastic/zo/estimators.py).

MeZO-GV as its code runs it (stan-anony/MeZO-GV at commit 70a2551, README and large_models/trainer.py):
two candidates z_1, z_2 scored at theta + eps z, v = z_best - z_worst, MeZO's two-sided step along v,
theta -= lr g v; its README runs OPT-13B at LR=2e-7 EPS=1e-3 (fp16, constant lr), where MeZO's own README
runs the same model at LR=1e-7 EPS=1e-3. Absolute lrs do not carry across models; that ratio does, so
gv's lr is --gv-lr-scales x the reference's chosen lr (default 0.5, 1 on seed 0; 2, the authors'
ratio, collapsed on SmolLM2-135M on 2026-12-06; 0.5 gives MeZO's expected step, since
v = z_best - z_worst has twice z's squared norm), eps the reference's. Its code (trainer.py,
_compute_guided_vector_with_history) keeps the previous step's best seed and scores it again at the current
theta beside one new candidate (two after the first step); we draw both candidates fresh every step, as the
paper's algorithm does (M + 2 forwards either way).

ZO-Muon as its code runs it (OPTML-Group/ZO-Muon at commit 166a8f3, llm/README.md's OPT-13B command and
llm/LowDimTrainer.py): RANK=64, STEP_INTERVAL=100, NUM_SAMPLES=4 with MULTIPLE_SAMPLE=True (4 one-sided
subspace points and one at theta), EPS=1e-3, LR=1e-2, OPT=muon, constant lr, vectors at a fixed 1e-7.
Its step P NS5(.) has a Frobenius norm of about sqrt(r) per matrix whatever the model, so the same lr moves
each element of a 576 x 576 matrix (135M) about 9x as far as of a 5120 x 5120 one (OPT-13B): the bench
tries --lr-zo-muon 1e-3, 3e-3, 1e-2 on seed 0 (1e-2 the authors'). It runs on the hf backend (zo_muon needs
whole weight matrices).
"""

from __future__ import annotations

from tta.runners import Method

ZO_MUON_N, ZO_MUON_INTERVAL = 4, 100  # OPTML-Group/ZO-Muon's README command (see the module docstring)


def make_methods(args) -> dict[str, Method]:
    """The reference and every estimator this bench knows, from the flags."""
    return {
        "reference": Method("reference", args.eps, 2),
        "spsa": Method("spsa", args.eps, 2),
        "fzoo": Method("fzoo", args.eps_fzoo, args.fzoo_k + 1,
                       (("perturbations", args.fzoo_k), ("distribution", "rademacher"))),
        "es": Method("es", args.eps_es, args.es_n, (("perturbations", args.es_n), ("reward_shaping", "zscore"))),
        "gv": Method("gv", args.eps, args.gv_k + 2, (("perturbations", args.gv_k),)),
        "zo_muon": Method("zo_muon", args.eps, ZO_MUON_N + 1,
                          (("perturbations", ZO_MUON_N), ("zo_muon_rank", args.zo_muon_rank),
                           ("zo_muon_interval", ZO_MUON_INTERVAL)), (("backend", "hf"),)),
    }


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def our_lrs(args, est: str, refs: list[dict]) -> list[float]:
    """The lrs `est` tries (several: a grid on seed 0). spsa: --lr-spsa or the reference's chosen lr;
    fzoo: --lr-fzoo, or with --fzoo-scales scale x lr_ref x median|g_ref| (the median over the seed-0
    reference run's nonzero projected gradients: FZOO's g is normalised by the losses' std, so this maps
    MeZO's step size onto it); es: --lr-es; gv: --gv-lr-scales x lr_ref; zo_muon: --lr-zo-muon (see the
    module docstring)."""
    lr_ref = refs[0]["lr"]
    if est == "spsa":
        return floats(args.lr_spsa) or [lr_ref]
    if est == "fzoo":
        if args.fzoo_scales:
            g = refs[0]["median_abs_grad"]  # the lowest seed (0) of the reference at its chosen lr
            return [float(f"{s * lr_ref * g:.4g}") for s in floats(args.fzoo_scales)]
        return floats(args.lr_fzoo)
    if est == "gv":
        return [float(f"{s * lr_ref:.4g}") for s in floats(args.gv_lr_scales)]
    if est == "zo_muon":
        return floats(args.lr_zo_muon)
    return floats(args.lr_es)
