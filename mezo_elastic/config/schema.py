"""The one config tree: every default of the package lives here, each field with its help text.

Sources, later wins: dataclass defaults < `--config FILE.toml|.yaml` < `--section.key=value` flags.
`python -m mezo_elastic.train --help` and docs/configuration.md are generated from this file.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from mezo_elastic.data.tasks.templates import canonical_name
from mezo_elastic.errors import ConfigError


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (shown by --help and in docs/configuration.md)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{name}={value!r} is not allowed; choose one of {list(allowed)}")


def _positive(section: str, name: str, value: float, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{section}.{name}={value!r} is not allowed; it must be {bound}")


@dataclass(kw_only=True)
class ModelConfig:
    backend: Literal["hf", "sglang"] = opt("hf", "forward engine: hf (transformers, CPU/GPU) or sglang (ModelRunner, GPU)")
    path: str = opt("", "local HF model directory; empty = the built-in tiny model (made on first use, no download)")
    dtype: Literal["float32", "bfloat16", "float16"] = opt("float32", "weight and compute dtype")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto = the rank's CUDA device when CUDA is present, else CPU")
    trust_remote_code: bool = opt(False, "allow the model directory's own Python code (off: opt in explicitly)")
    tp_size: int = opt(1, "tensor-parallel size per model replica (sglang backend); replicas = world / tp_size")
    trainable: str = opt(
        "", "regex on HF parameter names: only matching parameters are trained (empty = all); with "
        "peft.method=lora, on the adapter's PEFT names (e.g. 'lora_B' for the B matrices only)"
    )
    mem_fraction_static: float = opt(0.5, "sglang: fraction of the GPU memory free at start for weights + KV pool")
    attention_backend: str = opt("triton", "sglang: attention backend (triton, flashinfer, fa3, torch_native)")
    sglang_port: int = opt(0, "sglang: first candidate for each replica's own dist port (0 = derived from the job)")
    sglang_load_format: Literal["auto", "dummy"] = opt(
        "auto", "sglang: auto = weights from model.path; dummy = random weights from its config.json (benchmarks)"
    )
    sglang_logprob_tokens: int = opt(
        8192, "sglang: most completion positions scored in one forward (bounds the fp32 vocab-wide logits buffer)"
    )
    sglang_prefill_graphs: Literal["auto", "on", "off"] = opt(
        "auto", "sglang: run prefills (scoring EXTEND batches, the reward objective's generation prefill) through "
        "SGLang's prefill CUDA graphs (its breakable backend), captured at about a dozen token counts up to "
        "data.micro_batch x data.max_length (runners/sglang/runner.py prefill_graph_tokens; auto: up to 8192, a "
        "larger prefill runs eagerly). auto = on for data.objective=reward at tp_size 1 without LoRA: its step 1.56x faster (20.4 -> 31.9 steps/s, real 135M "
        "model, H100 2026-12-07) at no start-up cost (25.9 vs 27.7 s), graph == eager after sweeps "
        "(tests/gpu/test_sglang_prefill_graphs*.py); off for the scoring objectives, whose forwards "
        "model.scoring_graphs captures whole. on/off: as asked (true/false are read as on/off)"
    )
    fp32_lm_head: bool = opt(
        False, "float32 logits from a bf16/fp16 LM head (its GEMM's float32 accumulator, not rounded to 16 bits: a "
        "bf16 logit near 20 sits on a 0.125 grid, coarse next to the +-eps z points' loss difference); hf and "
        "sglang (SGLang's enable_fp32_lm_head for its own paths). runners/lm_head.py, docs/estimators.md#16-bit-weights"
    )
    scoring_graphs: bool = opt(
        True, "CUDA: scoring forwards (lm, classification, evaluation) run fixed-shape batches (right-padded "
        "to a multiple of 32 tokens, no attention mask) captured once per shape as CUDA graphs and replayed: "
        "one launch a forward instead of hundreds (runners/graph_scorer.py). Both backends at tp_size 1 "
        "without LoRA. false: per-call batches (hf: left-padded with a mask; sglang: the engine's EXTEND batches)"
    )
    sglang_share_min_tokens: int = opt(
        4096, "sglang: share a classification prompt between candidates (data.share_prompt) only where it saves "
        "at least this many token positions in a forward; a shared forward is two engine forwards, and each "
        "has a fixed host cost (~8 ms measured, 1B model on an H100, docs/benchmarks.md); 0 = always"
    )

    def __post_init__(self) -> None:
        _choice("model", "backend", self.backend, ("hf", "sglang"))
        _choice("model", "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _choice("model", "device", self.device, ("auto", "cpu", "cuda"))
        _positive("model", "tp_size", self.tp_size)
        _choice("model", "sglang_load_format", self.sglang_load_format, ("auto", "dummy"))
        _choice("model", "sglang_prefill_graphs", self.sglang_prefill_graphs, ("auto", "on", "off"))
        _positive("model", "sglang_logprob_tokens", self.sglang_logprob_tokens)
        _positive("model", "sglang_share_min_tokens", self.sglang_share_min_tokens, zero_ok=True)
        if self.backend == "hf" and self.tp_size != 1:
            raise ConfigError(f"model.tp_size={self.tp_size} needs model.backend=sglang; the hf backend is tp_size=1")
        if not 0 < self.mem_fraction_static < 1:
            raise ConfigError(f"model.mem_fraction_static={self.mem_fraction_static} must be in (0, 1)")
        try:
            re.compile(self.trainable)
        except re.error as e:
            raise ConfigError(f"model.trainable={self.trainable!r} is not a valid regex: {e}") from None


def task_defaults(task: str) -> dict[str, str]:
    """The data keys a MeZO task implies: its objective (classification, or reward scored by token F1
    for the generation tasks). The config reader fills in those the user did not give."""
    from mezo_elastic.data.tasks.templates import TASKS

    name = canonical_name(task)
    if not name:
        return {}
    return {"objective": "reward", "reward": "token_f1"} if TASKS[name].generation else {"objective": "classification"}


def _check_task(data: "DataConfig") -> None:
    """A MeZO task fixes the objective (classification, or reward for the generation tasks) and needs its files."""
    need = task_defaults(data.task)["objective"]
    if data.objective != need:
        why = "generation scored by token F1" if need == "reward" else "scored by its candidates"
        raise ConfigError(f"data.task={data.task} needs data.objective={need} ({why}); got "
                          f"data.objective={data.objective!r} (leave data.objective out: the task sets it)")
    if need == "reward" and data.reward != "token_f1":
        raise ConfigError(f"data.task={data.task} is scored by MeZO's token F1: set data.reward=token_f1 "
                          f"(got data.reward={data.reward!r})")
    if not data.path:
        raise ConfigError(f"data.task={data.task} needs data.path: a local copy of the task's train split "
                          f"(.jsonl, .parquet or a save_to_disk directory; docs/tasks.md)")


@dataclass(kw_only=True)
class DataConfig:
    path: str = opt("", "training JSONL file (data.task: the task's train split as .jsonl/.parquet/save_to_disk dir, "
                    "docs/tasks.md); empty = the built-in synthetic task (made on first use)")
    eval_path: str = opt("", "eval JSONL file (data.task: the validation split, which MeZO reports; empty = the "
                         "'validation' split of a DatasetDict dir at data.path); empty = a held-out split of the "
                         "built-in task, or none for user data")
    objective: Literal["lm", "classification", "reward"] = opt(
        "lm", "lm: NLL of completion tokens; classification: cross-entropy over candidates' log-likelihoods; "
        "reward: completions generated at theta +- eps z, scored by data.reward (loss = -reward). A data.task "
        "sets the one it needs when this is not given"
    )
    reward: str = opt(
        "exact_match", "objective reward: exact_match, token_f1, numeric, countdown, or MODULE:FUNCTION, a callable "
        "(completion: str, example: dict) -> float imported by name (runs your code: your explicit choice)"
    )
    seed: int = opt(1234, "data order seed: the global batch of step t depends only on (data.seed, t)")
    max_length: int = opt(128, "longest prompt+completion in tokens; longer examples are cut from the left (to the "
                          "model's positions, with a warning, where the model has fewer)")
    eval_examples: int = opt(256, "at most this many eval examples are scored per evaluation (not with "
                             "data.task: data.num_eval)")
    micro_batch: int = opt(64, "sequences per forward call on one rank (memory bound, not a hyperparameter)")
    unk_warn_fraction: float = opt(
        0.01, "rank 0 warns when more than this fraction of the training tokens are the tokenizer's unknown token"
    )
    share_prompt: bool = opt(
        True, "classification: run each prompt once and score all its candidates from it (sglang: where "
        "model.sglang_share_min_tokens allows); same losses up to float rounding"
    )

    task: str = opt(
        "", "one of MeZO's tasks, any case: SST2 RTE CB BoolQ WSC WIC MultiRC Copa ReCoRD SQuAD DROP. Rows come "
        "from data.path/eval_path in the dataset's own HF schema through MeZO's template and sampling "
        "(docs/tasks.md); empty = JSONL rows"
    )
    num_train: int = opt(1000, "data.task: training examples sampled from data.path (MeZO's protocol; 0 = all)")
    num_dev: int = opt(
        -1, "data.task: examples of that sample held out as MeZO's dev set, never trained on; -1 = MeZO's "
        "(500; 100 for CB and Copa), scaled to MeZO's train:dev ratio on a split too small for it (logged)"
    )
    num_eval: int = opt(1000, "data.task: eval examples sampled from data.eval_path (0 = all, in file order)")
    sample_seed: int = opt(0, "data.task: MeZO's train_set_seed, the seed of the permutations that pick train/dev/eval")
    eval_dev: bool = opt(
        True, "data.task: every eval also scores MeZO's dev set (dev_loss, dev_accuracy/dev_f1 in metrics.jsonl); "
        "MeZO keeps the checkpoint of lowest dev loss, and the table script picks that eval"
    )
    verbatim: bool = opt(
        False, "JSONL rows: prompt + candidate (or completion) is the text exactly as written; off = a space goes "
        "between them. data.task rows are always verbatim"
    )
    candidate_score: Literal["auto", "sum", "mean"] = opt(
        "auto", "classification: a candidate's score is the sum of its tokens' log-likelihoods, or their mean "
        "(MeZO's length-normalised score, in its loss and its eval); auto = mean with data.task, else sum"
    )

    class_loss: Literal["auto", "ce", "nll"] = opt(
        "auto", "classification training loss: ce = cross-entropy over the candidates' scores (MeZO's "
        "--train_as_classification); nll = mean NLL of the right candidate's tokens only (MeZO's teacher forcing, "
        "which mezo.sh uses for Copa and ReCoRD); auto = nll for data.task Copa/ReCoRD, else ce. Eval accuracy "
        "is by the candidates' scores either way"
    )

    def __post_init__(self) -> None:
        _choice("data", "objective", self.objective, ("lm", "classification", "reward"))
        if not self.reward:
            raise ConfigError("data.reward='' is not allowed; name a built-in reward or MODULE:FUNCTION")
        _choice("data", "candidate_score", self.candidate_score, ("auto", "sum", "mean"))
        _choice("data", "class_loss", self.class_loss, ("auto", "ce", "nll"))
        _positive("data", "num_train", self.num_train, zero_ok=True)
        _positive("data", "num_eval", self.num_eval, zero_ok=True)
        if self.num_dev < -1:
            raise ConfigError(f"data.num_dev={self.num_dev} is not allowed; it must be >= 0, or -1 for MeZO's")
        self.task = canonical_name(self.task)
        if self.task:
            _check_task(self)
        _positive("data", "max_length", self.max_length)
        _positive("data", "eval_examples", self.eval_examples, zero_ok=True)
        _positive("data", "micro_batch", self.micro_batch)
        if not 0 <= self.unk_warn_fraction <= 1:
            raise ConfigError(f"data.unk_warn_fraction={self.unk_warn_fraction} must be in [0, 1]")


# mezo.lr where a run does not give it, by the rule its step takes (docs/estimators.md, the learning rate).
# MeZO's step moves a weight lr |g| and gv's twice that: MeZO's lr (gv half of it). The scale-free steps (fzoo,
# es, shaped spsa) move each weight about lr / sqrt(N) a step whatever the gradient's size, N their population:
# their paper's lr at its N, scaled by sqrt(N / N_paper) so that another population keeps the paper's per-weight
# step. ZO-Muon's step has a norm of about sqrt(r) per matrix whatever the gradient: the authors' lr. Each is the
# published value for models of 0.5B to 13B; a small model may want more (SmolLM2-135M: fzoo learned at 1e-3,
# not at 1e-5).
MEZO_LR = 1e-6  # MeZO's (1e-6 to 1e-7 at eps 1e-3); 1e-3 wrecks a pretrained model in a few steps
PAPER_LR = {"fzoo": (1e-5, 8),  # DKmiyan/FZOO fzoo.sh: LR=1e-5, FORWARD_N=8 (OPT-1.3B)
            "es": (5e-4, 30)}  # ES at scale: alpha 5e-4, sigma 1e-3, N = 30
ZO_MUON_LR = 1e-2  # OPTML-Group/ZO-Muon at OPT-13B


# What a run gets where it does not give these, by estimator: its paper's settings (docs/estimators.md). FZOO
# (fzoo.sh): 8 Rademacher directions; MeZO-GV's code: 2 candidates; ES at scale: N = 30, z-scored rewards;
# ZO-Muon's README (OPT-13B): 4 samples; MeZO: one seed, Gaussian z, no shaping.
PAPER_POPULATION = {"spsa": 1, "fzoo": 8, "gv": 2, "es": 30, "zo_muon": 4}
PAPER_DISTRIBUTION = {"fzoo": "rademacher"}  # the others: gaussian
PAPER_SHAPING = {"es": "zscore"}  # the others: none


# What a refused population-less estimator's message suggests: each paper's settings (the tables above), with the lr
# advice of docs/estimators.md where ours measured otherwise (FZOO's 1e-5 did not move SmolLM2-135M; GV's 2x
# collapsed it).
_PAPER_SETTINGS = {
    "fzoo": f"FZOO's --mezo.perturbations={PAPER_POPULATION['fzoo']} --mezo.distribution={PAPER_DISTRIBUTION['fzoo']} "
            f"with an lr tuned per model (1e-3 on SmolLM2-135M)",
    "gv": f"MeZO-GV's --mezo.perturbations={PAPER_POPULATION['gv']} at your MeZO lr or half of it",
    "es": f"ES at scale's --mezo.perturbations={PAPER_POPULATION['es']} --mezo.reward_shaping={PAPER_SHAPING['es']} "
          f"--mezo.lr=5e-4",
}


def default_lr(m: "MezoConfig") -> float:
    """The lr a run gets where it does not give mezo.lr (see PAPER_LR above)."""
    if m.estimator == "gv":
        return MEZO_LR / 2  # E[(v.grad) v] is twice MeZO's: half its lr is MeZO's step (docs/estimators.md)
    if m.estimator == "zo_muon":
        return ZO_MUON_LR
    if m.estimator in PAPER_LR:
        lr, n = PAPER_LR[m.estimator]
        return lr * math.sqrt(m.perturbations / n)
    if m.reward_shaping != "none" and m.shaped_update == "es":  # ES's step over the N = 2K members
        lr, n = PAPER_LR["es"]
        return lr * math.sqrt(2 * m.perturbations / n)
    return MEZO_LR


def _check_estimator(m: "MezoConfig") -> None:
    """fzoo, es and gv: a population of at least 2 seeds in dp mode; es shapes, fzoo and gv do not."""
    if m.estimator == "spsa":
        return
    if m.mode != "dp":
        raise ConfigError(f"mezo.estimator={m.estimator} needs mezo.mode=dp (got {m.mode!r}): its population "
                          f"is one step's seeds, scored on the whole batch")
    if m.perturbations < 2 and m.estimator != "zo_muon":
        raise ConfigError(f"mezo.estimator={m.estimator} needs mezo.perturbations >= 2 (got {m.perturbations}): "
                          f"it compares or normalises over the population's losses; try {_PAPER_SETTINGS[m.estimator]} "
                          f"(docs/estimators.md)")
    if m.estimator == "zo_muon" and (m.reward_shaping != "none" or m.master_weights == "off"):
        raise ConfigError(f"mezo.estimator=zo_muon steps on (L_n - L_0) / eps and keeps the fp32 master weights; set "
                          f"mezo.reward_shaping=none and mezo.master_weights=auto or on (got {m.reward_shaping!r}, "
                          f"{m.master_weights!r})")
    if m.estimator == "fzoo" and m.reward_shaping != "none":
        raise ConfigError(f"mezo.estimator=fzoo divides by the losses' std itself; set mezo.reward_shaping=none "
                          f"(got {m.reward_shaping!r})")
    if m.estimator == "gv" and m.reward_shaping != "none":
        raise ConfigError(f"mezo.estimator=gv ranks the candidates' losses and takes MeZO's projected gradient along "
                          f"their guiding vector; set mezo.reward_shaping=none (got {m.reward_shaping!r})")
    if m.estimator == "es" and m.reward_shaping == "none":
        raise ConfigError("mezo.estimator=es needs mezo.reward_shaping=zscore or centered_rank: its step is "
                          "theta += lr/K sum R_n z_n over normalised rewards")


@dataclass(kw_only=True)
class MezoConfig:
    lr: float | None = opt(
        None, "learning rate (peak, when a schedule is used). Not given: by the step's rule (default_lr), each "
        "safe on a pretrained model: spsa 1e-6 (MeZO's; 1e-3 wrecks a model in a few steps, docs/objectives.md), "
        "gv 5e-7, fzoo 1e-5 x sqrt(K/8) (FZOO's), es and shaped spsa 5e-4 x sqrt(N/30) (ES at scale's), zo_muon "
        "1e-2 (docs/estimators.md#the-learning-rate); the built-in tiny model (model.path empty) gets 1e-3 from "
        "BUILTIN_PRESET"
    )
    eps: float = opt(1e-3, "perturbation scale epsilon of SPSA")
    mode: Literal["dp", "multi_seed"] = opt(
        "dp", "dp: one seed a step, batch split over ranks; multi_seed: each rank its own seed (n-SPSA)"
    )
    weight_decay: float = opt(0.0, "decoupled weight decay; never applied to biases and norm weights")
    schedule: Literal["constant", "linear", "cosine"] = opt("constant", "lr schedule after warmup")
    warmup_steps: int = opt(0, "linear warmup from 0 to mezo.lr over this many steps")
    min_lr_ratio: float = opt(0.0, "linear/cosine schedules decay to lr * min_lr_ratio")
    grad_clip: float = opt(0.0, "clip |projected gradient| to this value (0 = off)")
    max_nonfinite: int = opt(10, "abort after this many steps with a non-finite loss (those steps are skipped)")
    chunk_elems: int = opt(1 << 20, "elements of z generated at once on CPU/torch (bounded scratch memory)")
    master_weights: Literal["auto", "on", "off"] = opt(
        "auto", "fp32 copy of the trainable weights (4 bytes a parameter): removes perturb/restore drift, which "
        "in bf16 reaches ~2% of the weights in 100 steps (docs/elastic.md). auto = on for bf16/fp16 and for a LoRA "
        "adapter (peft.method=lora, docs/lora.md), off for fp32 full weights"
    )
    perturb_about: Literal["master", "weights"] = opt(
        "master", "with fp32 master weights in a 16-bit dtype, the point a forward sees: master = cast(master + eps "
        "z) (a trained master sits off the weights' grid, which dithers the rounding, but +eps z and -eps z then "
        "round unevenly about it); weights = cast(cast(master) + eps z), about the clean weights the model shows: "
        "both points the same distance either side, but a weight whose ulp exceeds 2 eps |z| is not perturbed (on "
        "the real 135M model at zero-shot its g is further from float32's: docs/estimators.md#16-bit-weights). No "
        "effect without master weights or in float32"
    )
    perturbations: int | None = opt(
        None, "population: seeds a step, each scored at +eps and -eps (multi_seed: per rank); more than 1 keeps the "
        "fp32 master weights. Not given: the estimator's paper's (PAPER_POPULATION): spsa 1, fzoo 8, gv 2, es 30, "
        "zo_muon 4"
    )
    reward_shaping: Literal["none", "zscore", "centered_rank"] | None = opt(
        None, "map the population's losses before the step: none, zscore (minus the mean, over the std; 0 when "
        "all equal), centered_rank (ranks scaled to [-0.5, 0.5]); see docs/objectives.md. Not given: zscore for "
        "estimator es (ES at scale's), none otherwise"
    )
    shaped_update: Literal["es", "per_eps"] = opt(
        "es", "estimator spsa with reward_shaping: es = ES at scale's theta += lr/N sum R_n z_n over the N = 2K "
        "members, eps apart (g_k = (f+ - f-) / 2), so ES's published alpha, sigma, N carry over as lr, eps, 2K; "
        "per_eps = g_k = (f+ - f-) / (2 eps), ~1/eps larger: only to continue a run made before it changed (refused "
        "on a new run)"
    )
    estimator: Literal["spsa", "fzoo", "es", "gv", "zo_muon"] = opt(
        "spsa", "spsa: MeZO's two-sided +-eps z (2K forwards a step); fzoo: K one-sided +eps z plus theta itself "
        "(K+1 forwards), step over the std of the K losses (FZOO; use distribution=rademacher as it does); es: K "
        "one-sided +eps z, theta += lr/K sum R_n z_n with shaped R (ES at scale); gv: K one-sided +eps z, then "
        "MeZO's two-sided step along v = mean(elite z) - mean(other z) (K+2 forwards; MeZO-GV); zo_muon: K one-sided "
        "subspace points P u plus theta, step P NS5(mean g u) (K+1 forwards; ZO-Muon; hf backend). docs/estimators.md"
    )
    zo_muon_rank: int = opt(64, "estimator zo_muon: r, the subspace's dimension per weight matrix (the authors' 64)")
    zo_muon_interval: int = opt(100, "estimator zo_muon: steps between new subspaces P (the authors' 100)")
    zo_muon_vector_lr: float = opt(
        1e-7, "estimator zo_muon: lr of the vectors (norms, biases), which take MeZO's step with the same g (the "
        "authors' code: 1e-7, fixed)"
    )
    gv_elite: float = opt(
        0.5, "estimator gv: the fraction of the K candidates (lowest losses) whose mean z is the guiding vector's "
        "positive side; floor(gv_elite K) clamped to [1, K-1]. 0.5 with K=2 is z_best - z_worst, MeZO-GV's code"
    )
    fold_next_perturbation: bool = opt(
        True, "keep weights perturbed between steps: 2 sweeps a step instead of 3 (eval/save still see clean weights)"
    )
    distribution: Literal["gaussian", "rademacher", "rademacher32"] | None = opt(
        None, "z's distribution: gaussian (Philox + Box-Muller, MeZO's), rademacher (+-1 from one Philox "
        "bit an element, SPSA's original; cheaper sweeps) or rademacher32 (+-1, 32 signs per Philox word: 32x "
        "fewer Philox calls, meant as the cheapest GPU sweep, not yet measured; other z than rademacher's, so the "
        "two are not interchangeable on resume). Part of the trajectory: resume refuses a change. Not given: "
        "rademacher for estimator fzoo (FZOO's), gaussian otherwise"
    )

    def __post_init__(self) -> None:
        # Left out: the estimator's paper's settings, resolved here so that run.json records, and a resume
        # compares, the values themselves (docs/estimators.md). A given value is checked as given.
        if self.perturbations is None:
            self.perturbations = PAPER_POPULATION.get(self.estimator, 1)
        if self.distribution is None:
            self.distribution = PAPER_DISTRIBUTION.get(self.estimator, "gaussian")
        if self.reward_shaping is None:
            self.reward_shaping = PAPER_SHAPING.get(self.estimator, "none")
        _choice("mezo", "mode", self.mode, ("dp", "multi_seed"))
        _choice("mezo", "schedule", self.schedule, ("constant", "linear", "cosine"))
        _choice("mezo", "master_weights", self.master_weights, ("auto", "on", "off"))
        _choice("mezo", "perturb_about", self.perturb_about, ("master", "weights"))
        _choice("mezo", "reward_shaping", self.reward_shaping, ("none", "zscore", "centered_rank"))
        _choice("mezo", "shaped_update", self.shaped_update, ("es", "per_eps"))
        _choice("mezo", "estimator", self.estimator, ("spsa", "fzoo", "es", "gv", "zo_muon"))
        _positive("mezo", "zo_muon_rank", self.zo_muon_rank)
        _positive("mezo", "zo_muon_interval", self.zo_muon_interval)
        _positive("mezo", "zo_muon_vector_lr", self.zo_muon_vector_lr, zero_ok=True)
        if not 0 < self.gv_elite < 1:
            raise ConfigError(f"mezo.gv_elite={self.gv_elite} must be in (0, 1): the elite's share of the candidates")
        _check_estimator(self)
        _positive("mezo", "perturbations", self.perturbations)
        if self.perturbations > 1 and self.master_weights == "off":
            raise ConfigError(f"mezo.perturbations={self.perturbations} needs master weights (mezo.master_weights="
                              f"'off' is not allowed with it): only the fp32 master replays a population exactly")
        _choice("mezo", "distribution", self.distribution, ("gaussian", "rademacher", "rademacher32"))
        if self.lr is None:  # resolved here: run.json records, and a resume compares, the number itself
            self.lr = default_lr(self)
        _positive("mezo", "lr", self.lr, zero_ok=True)
        _positive("mezo", "eps", self.eps)
        _positive("mezo", "weight_decay", self.weight_decay, zero_ok=True)
        _positive("mezo", "warmup_steps", self.warmup_steps, zero_ok=True)
        _positive("mezo", "grad_clip", self.grad_clip, zero_ok=True)
        _positive("mezo", "max_nonfinite", self.max_nonfinite, zero_ok=True)
        _positive("mezo", "chunk_elems", self.chunk_elems)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"mezo.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")


@dataclass(kw_only=True)
class GenerateConfig:
    max_new_tokens: int = opt(32, "objective reward: most tokens generated per completion")
    temperature: float = opt(
        0.0, "0 = greedy; > 0 samples with Gumbel noise keyed by (seed, step, example, position), the same at "
        "+eps and -eps, so a step is reproducible"
    )
    stop: list = opt([], "stop strings: a completion is cut before the first one (TOML list, or "
                     "--generate.stop='[\"\\n\"]'; one string on the command line reads escapes: --generate.stop='\\n')")
    eos: bool = opt(True, "stop a completion at the tokenizer's end-of-sequence token")

    def __post_init__(self) -> None:
        _positive("generate", "max_new_tokens", self.max_new_tokens)
        _positive("generate", "temperature", self.temperature, zero_ok=True)
        if not all(isinstance(x, str) and x for x in self.stop):
            raise ConfigError(f"generate.stop={self.stop!r} is not allowed; give a list of non-empty strings")


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = opt(600, "number of MeZO steps")
    batch_size: int = opt(32, "global batch size (examples per step, summed over ranks)")
    output_dir: str = opt("runs/default", "metrics.jsonl, steps.jsonl, checkpoints/ and final/ go here")
    eval_every: int = opt(200, "evaluate every this many steps, at step 0 and at the end (0 = only start and end)")
    log_every: int = opt(10, "write a train line to metrics.jsonl every this many steps")
    progress: bool = opt(True, "rank 0 shows a progress bar on a terminal")
    tensorboard: Literal["auto", "on", "off"] = opt(
        "auto", "also write metrics to output_dir/tb: auto = when the tensorboard package is installed"
    )
    save_final: bool = opt(True, "save the final model (HF format) to output_dir/final")
    early_stop_evals: int = opt(
        0, "end the run once this many evals in a row have not beaten the best eval so far (by the metric "
        "export --step best picks); 0 = off. final/ then holds the last step's weights; export --step best "
        "rebuilds the best's. A relaunch of a run that stopped so ends again, unless this is raised or 0"
    )
    stop_grace_s: float = opt(
        20.0, "after SIGTERM/SIGINT/SIGUSR1 the current step may finish; a rank still busy after this many seconds "
        "(e.g. blocked on a dead peer) exits at once (torchrun kills workers 30 s after forwarding a signal)"
    )
    requeue_on_signal: bool = opt(
        False, "under SLURM, rank 0 runs `scontrol requeue $SLURM_JOB_ID` when SIGUSR1 stops the run"
    )

    def __post_init__(self) -> None:
        _positive("train", "steps", self.steps, zero_ok=True)
        _choice("train", "tensorboard", self.tensorboard, ("auto", "on", "off"))
        _positive("train", "stop_grace_s", self.stop_grace_s)
        _positive("train", "batch_size", self.batch_size)
        _positive("train", "eval_every", self.eval_every, zero_ok=True)
        _positive("train", "log_every", self.log_every)
        _positive("train", "early_stop_evals", self.early_stop_evals, zero_ok=True)
        if self.early_stop_evals and not self.eval_every:
            raise ConfigError(f"train.early_stop_evals={self.early_stop_evals} needs evals during the run; "
                              "set train.eval_every to a number of steps (0 evaluates only at the start and end)")
        if not self.output_dir:
            raise ConfigError("train.output_dir='' is not allowed; give a directory path")


@dataclass(kw_only=True)
class CheckpointConfig:
    every: int = opt(200, "full checkpoint every this many steps (0 = none; the step log still allows resume)")
    keep: int = opt(2, "keep the newest this many checkpoints")
    resume: bool = opt(
        True, "resume automatically from output_dir (newest valid checkpoint + step log); false = this must be a "
        "new run: a directory holding a run is refused, never started over or mixed (docs/elastic.md)"
    )
    log_sync: Literal["background", "step"] = opt(
        "background", "when the step log (steps.jsonl) is fsynced: background = a thread fsyncs what rank 0 has "
        "written (every record reaches the OS before the step goes on, so a killed process loses nothing; a "
        "machine crash may lose the last milliseconds' records, which resume recomputes from the same seeds), "
        "and the log is fsynced through its end before each checkpoint, final/ and exit; step = each record "
        "fsynced before its step goes on (a network filesystem's fsync, milliseconds, then sits in every step)"
    )
    lock_stale_s: float = opt(
        300.0, "one job per output_dir: rank 0 holds output_dir/.lock and refreshes it every lock_stale_s / 10 s; "
        "a lock from another host counts as stale (its job dead) once that refresh is older than this (keep it "
        "above the hosts' clock skew; docs/elastic.md). Same host: a dead pid is stale at once"
    )

    def __post_init__(self) -> None:
        _positive("checkpoint", "every", self.every, zero_ok=True)
        _positive("checkpoint", "keep", self.keep)
        _positive("checkpoint", "lock_stale_s", self.lock_stale_s)
        _choice("checkpoint", "log_sync", self.log_sync, ("background", "step"))


@dataclass(kw_only=True)
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = opt("auto", "process-group backend: auto = nccl on CUDA, gloo on CPU")
    timeout_s: float = opt(600.0, "collective timeout in seconds")
    init_timeout_s: float = opt(
        300.0, "seconds to bring the group up: every rank checking in (srun, RANK/WORLD_SIZE by hand; the missing "
        "ranks are named) and the backend connecting (also under torchrun, whose agent then restarts the workers)"
    )
    port_attempts: int = opt(8, "candidate ports tried where this package picks a port (srun without torchrun)")
    port_timeout_s: float = opt(5.0, "seconds a rank waits on one candidate port before moving to the next")

    def __post_init__(self) -> None:
        _choice("dist", "backend", self.backend, ("auto", "nccl", "gloo"))
        _positive("dist", "timeout_s", self.timeout_s)
        _positive("dist", "init_timeout_s", self.init_timeout_s)
        _positive("dist", "port_attempts", self.port_attempts)
        _positive("dist", "port_timeout_s", self.port_timeout_s)


@dataclass(kw_only=True)
class PeftConfig:
    method: Literal["none", "lora"] = opt(
        "none", "none: train the model's own weights (model.trainable); lora: train a LoRA adapter only (peft), "
        "base weights frozen; checkpoints and final/ hold the adapter (docs/lora.md)"
    )
    rank: int = opt(8, "lora: rank r of each adapter (MeZO's LoRA default)")
    alpha: float = opt(16.0, "lora: scaling alpha; the adapter's output is scaled by alpha / rank")
    targets: str = opt(
        "q_proj,v_proj", "lora: comma-separated module names that get an adapter (peft target_modules; "
        "a name matches a module whose name ends in it)"
    )

    def __post_init__(self) -> None:
        _choice("peft", "method", self.method, ("none", "lora"))
        _positive("peft", "rank", self.rank)
        _positive("peft", "alpha", self.alpha)
        names = self.target_list()
        if not names or any(not re.fullmatch(r"[A-Za-z0-9_.]+", n) for n in names):
            raise ConfigError(f"peft.targets={self.targets!r} is not allowed; give comma-separated module names "
                              f"such as 'q_proj,v_proj'")

    def target_list(self) -> list[str]:
        """peft.targets as a list of module names."""
        return [n.strip() for n in self.targets.split(",") if n.strip()]


@dataclass(kw_only=True)
class Config:
    seed: int = opt(0, "run seed: the perturbation seed of step t is a function of (seed, t) only")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    mezo: MezoConfig = field(default_factory=MezoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)

    def __post_init__(self) -> None:
        _check_finite(self)
        if self.mezo.estimator == "zo_muon" and (self.model.backend == "sglang" or self.peft.method != "none"):
            raise ConfigError(f"mezo.estimator=zo_muon runs on whole weight matrices: model.backend=hf without a "
                              f"LoRA adapter (got model.backend={self.model.backend!r}, peft.method={self.peft.method!r})")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts (JSON/TOML-able)."""
        return dataclasses.asdict(self)


SECTIONS = ("model", "data", "generate", "mezo", "train", "checkpoint", "dist", "peft")

# The built-in tiny model's own values, used when model.path is empty: the defaults above are chosen for a
# user's pretrained model, on which they are safe; a 0.1M-parameter model trained from a random init needs a
# far larger step to learn in a default run's 600 steps, and its context is 64 positions (its examples are
# about 10 tokens; SGLang refuses a context_length, data.max_length + 1, above the model's). A config file and
# flags still win over these.
BUILTIN_PRESET: dict[str, dict[str, Any]] = {"mezo": {"lr": 1e-3}, "data": {"max_length": 63}}


def _check_finite(cfg: Config) -> None:
    """Every float of the tree must be finite: nan passes every `<`/`>` bound check (and inf most), and
    one nan hyperparameter turns the weights into nan within a step. One place for all float fields."""
    for section in SECTIONS:
        sub = getattr(cfg, section)
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{f.name}={value!r} is not allowed; it must be a finite number")
