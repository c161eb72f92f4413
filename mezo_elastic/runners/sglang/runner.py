"""The `sglang` backend: SGLang's ModelRunner in-process as the forward engine (GPU only).

Scoring (lm, classification) at tp_size 1 without LoRA runs fixed-shape batches through CUDA graphs
(runners/sglang/graphs.py, model.scoring_graphs): one graph replay a forward. Elsewhere, or with
model.scoring_graphs=false, it is one EXTEND batch per call (split only to fit the KV pool), with
return_logprob and logprob_start_len = prompt_len - 1, so only completion positions reach the LM head; no
KV is reused between forwards (the last batch stays prepared for MeZO's second forward of the same
tokens, which recomputes its KV). Classification candidates share their prompt's KV within a forward
(`score_choices`: the prompts first, then every candidate extends its prompt's slots). The weights are
perturbed in place through segments keyed by HF name and element index (runners/sglang/layout.py), so a
seed moves an SGLang model exactly as it moves the same HF model, at any TP size.

    torchrun --nproc_per_node=4 -m mezo_elastic.train --model.backend=sglang --model.tp_size=2 \
        --model.dtype=bfloat16 --model.path=/models/Llama-3.2-1B
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config
from mezo_elastic.errors import BackendError
from mezo_elastic.runners import scoring_plan as sp
from mezo_elastic.runners.base import GenerateRequest, GenerationSettings, ScoreRequest
from mezo_elastic.runners.sampling import cut_at_eos
from mezo_elastic.runners.sglang import engine as compat
from mezo_elastic.runners.sglang import layout as lay
from mezo_elastic.runners.sglang import lora as sglang_lora
from mezo_elastic.runners.sglang import graphs, teardown, weights
from mezo_elastic.runners.sglang.checks import (  # noqa: F401 (public)
    DTYPES,
    SUPPORTED_ARCHS,
    check_architecture,
    check_context_length,
    layout,
    validate_mezo_config,
)
from mezo_elastic.runners.sglang.dist import init_mezo_distributed, init_tp_world  # noqa: F401 (public)
from mezo_elastic.runners.sglang.memory import Held, check_mem_fraction
from mezo_elastic.zo.perturb import ParamSegment

log = logging.getLogger(__name__)


def create_mezo_server_args(ctx: RankContext, cfg: Config, model_path: str) -> Any:
    """SGLang ServerArgs with every field MeZO depends on set explicitly (MeZO's defaults).

    No tokenizer (token ids come in), no radix cache (nothing is reused across weight changes), no
    custom all-reduce (it needs its own IPC buffers; TP traffic is small next to the sweeps). SGLang's CUDA
    graphs: none for the scoring objectives by default, since this package captures its own (graphs.py);
    prefill graphs where prefill_graphs_on says (at prefill_graph_tokens' counts); decode graphs for the reward objective, captured at batch sizes 1, 2, 4, ... up
    to data.micro_batch (a smaller batch is padded to the next one); a replay reads the weights'
    storage, which every sweep updates in place.
    Request slots: a shared-prompt classification forward holds up to micro_batch candidates plus
    their prompts.
    """
    m = cfg.model
    generating, prefill = cfg.data.objective == "reward", prefill_graphs_on(cfg)
    fields = {
        "model_path": model_path, "skip_tokenizer_init": True, "load_format": m.sglang_load_format, "dtype": m.dtype,
        "trust_remote_code": m.trust_remote_code, "tp_size": m.tp_size, "dp_size": 1, "pp_size": 1,
        "mem_fraction_static": m.mem_fraction_static, "attention_backend": m.attention_backend,
        "sampling_backend": "pytorch", "disable_cuda_graph": not (generating or prefill),
        "disable_radix_cache": True,
        "disable_overlap_schedule": True, "disable_custom_all_reduce": True,
        "context_length": cfg.data.max_length + 1, "max_running_requests": 2 * max(cfg.data.micro_batch, 1) + 1,
        "random_seed": cfg.seed, "base_gpu_id": 0, "log_level": "error", "enable_p2p_check": False,
    }
    if generating:
        sizes = decode_graph_sizes(cfg.data.micro_batch)
        fields.update(cuda_graph_bs_decode=sizes, cuda_graph_max_bs_decode=sizes[-1])
    if generating or prefill:
        # Each phase's graphs only where they are asked for: decode for generation, prefill by the option.
        fields.update(disable_prefill_cuda_graph=not prefill, disable_decode_cuda_graph=not generating)
    if prefill:
        # auto: at most AUTO_PREFILL_TOKENS (a larger prefill is GPU-bound: eager costs it little, and the
        # graphs' memory pool stays that of an 8192-token forward); on: up to a whole micro-batch
        top = AUTO_PREFILL_TOKENS if m.sglang_prefill_graphs == "auto" else None
        sizes = prefill_graph_tokens(cfg.data.micro_batch, cfg.data.max_length, top)
        fields.update(cuda_graph_bs_prefill=sizes, cuda_graph_max_bs_prefill=sizes[-1])
    if m.fp32_lm_head:
        fields["enable_fp32_lm_head"] = True  # SGLang's own logits (generation, eager scoring) in float32
    if cfg.peft.method == "lora":
        fields.update(sglang_lora.lora_server_fields(cfg))
    return compat.make_server_args(fields)


AUTO_PREFILL_TOKENS = 8192  # model.sglang_prefill_graphs=auto captures up to here (the measured case: 64 x 128)


def prefill_graphs_on(cfg: Config) -> bool:
    """model.sglang_prefill_graphs resolved: on/off as asked; auto = on for the reward objective (its
    generation's prefill: 1.56x the step on the real 135M model, no start-up cost, H100 2026-12-07) at tp_size 1
    without LoRA (where they were measured), off for the scoring objectives (model.scoring_graphs captures their
    whole forward; SGLang's graphs there would only cost capture time and memory)."""
    m = cfg.model
    if m.sglang_prefill_graphs != "auto":
        return m.sglang_prefill_graphs == "on"
    return cfg.data.objective == "reward" and m.tp_size == 1 and cfg.peft.method == "none"


def decode_graph_sizes(micro_batch: int) -> list[int]:
    """Decode batch sizes to capture: powers of two up to the first >= micro_batch."""
    sizes = [1]
    while sizes[-1] < micro_batch:
        sizes.append(sizes[-1] * 2)
    return sizes


def prefill_graph_tokens(micro_batch: int, max_length: int, cap: int | None = None) -> list[int]:
    """Prefill token counts to capture: multiples of 64 about 1.5x apart, up to a full micro-batch's tokens
    (or `cap`, where smaller).

    SGLang's own list (4, 8, ... up to its chunked-prefill size: about 60 counts) took ~40 s to capture on the
    real 135M model; a prefill pads to the next captured count, and at these sizes a prefill is launch-bound,
    so coarser steps cost little. A prefill above the last count runs eagerly (same result).
    """
    full = micro_batch * max_length
    top = max(min(full, cap) if cap else full, 64)
    sizes, n = [], 64
    while n < top:
        sizes.append(n)
        n = -(-(n * 3 // 2) // 64) * 64
    return sizes + [top]


def _module_pieces(mod: torch.nn.Module, pname: str, full: str, p: torch.Tensor, rank: int | None = None) -> list[lay.Piece]:
    """Pieces of one SGLang parameter on TP rank `rank` (default: this rank), read off SGLang's layer.

    Every TP rank's shard of a parameter has the same local shape, so rank r's pieces describe the
    tensor all_gather returns from rank r.
    """
    from sglang.srt.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        ReplicatedLinear,
        RowParallelLinear,
    )
    from sglang.srt.layers.vocab_parallel_embedding import VocabParallelEmbedding

    rest = tuple(p.shape[1:])
    if isinstance(mod, VocabParallelEmbedding):
        si = mod.shard_indices
        if rank is not None and mod.tp_size > 1:
            si = mod._get_indices(mod.num_embeddings_padded, mod.org_vocab_size_padded, mod.num_embeddings,
                                  mod.org_vocab_size, rank, mod.tp_size)
        return lay.vocab_pieces(full, mod.org_vocab_size, p.shape[1], si.org_vocab_start_index, si.org_vocab_end_index)
    if isinstance(mod, ReplicatedLinear) or type(mod).__name__.endswith("RMSNorm") or isinstance(mod, torch.nn.LayerNorm):
        return lay.replicated_pieces(full, tuple(p.shape))
    if not hasattr(mod, "tp_rank"):
        raise BackendError(f"SGLang parameter {full} belongs to {type(mod).__name__}, whose layout this backend "
                           f"does not map to HF names; supported architectures: {list(SUPPORTED_ARCHS)}")
    r, tp = (mod.tp_rank if rank is None else rank), mod.tp_size
    if isinstance(mod, QKVParallelLinear):
        return lay.qkv_pieces(full, total_heads=mod.total_num_heads, total_kv_heads=mod.total_num_kv_heads,
                              head_size=mod.head_size, v_head_size=mod.v_head_size, tp_rank=r, tp_size=tp, rest=rest)
    if isinstance(mod, MergedColumnParallelLinear):
        return lay.merged_pieces(full, list(mod.output_sizes), rest, r, tp)
    if isinstance(mod, ColumnParallelLinear):
        return lay.column_pieces(full, p.shape[0] * tp, rest, r, tp)
    if isinstance(mod, RowParallelLinear):
        if pname == "bias":  # added after the all-reduce: whole on every rank
            return lay.replicated_pieces(full, tuple(p.shape))
        return lay.row_parallel_pieces(full, p.shape[0], p.shape[1], r, tp)
    raise BackendError(f"SGLang parameter {full} belongs to {type(mod).__name__}, whose layout this backend "
                       f"does not map to HF names; supported architectures: {list(SUPPORTED_ARCHS)}")


def param_map(model: torch.nn.Module) -> list[tuple[str, torch.Tensor, list[lay.Piece]]]:
    """(SGLang name, live tensor, pieces) for every parameter of a loaded SGLang model.

    named_modules/named_parameters drop duplicates, so tied embeddings appear once (embed_tokens).
    """
    out = []
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            out.append((full, p.data, _module_pieces(mod, pname, full, p)))
    return out


def rank_pieces(model: torch.nn.Module, sg_name: str, t: torch.Tensor, rank: int) -> list[lay.Piece]:
    """Pieces of SGLang parameter `sg_name` as TP rank `rank` holds it."""
    mname, _, pname = sg_name.rpartition(".")
    return _module_pieces(model.get_submodule(mname), pname, sg_name, t, rank)


def saved_positions(prompts: Sequence[Sequence[int]], choices: Sequence[Sequence[Sequence[int]]]) -> int:
    """Token positions SGLangRunner.score_choices saves over one sequence per candidate: a prompt of P
    tokens with k candidates of lengths L_j costs sum_j (P + L_j) apart, P - 1 + sum_j (L_j + 1) shared:
    (k - 1)(P - 1) fewer."""
    return sum((len(cs) - 1) * (len(p) - 1) for p, cs in zip(prompts, choices) if cs)


def chunk_ranges(need: Sequence[tuple[int, int, int]] | Sequence[ScoreRequest], max_tok: int, max_req: int,
                 max_rows: int) -> list[tuple[int, int]]:
    """Consecutive ranges whose (KV tokens, request slots, log-prob rows) fit `max_tok` (the KV pool),
    `max_req` (the request pool) and `max_rows` (model.sglang_logprob_tokens); a ScoreRequest needs
    (prompt+completion, 1, completion+1). An item over `max_tok` alone is a BackendError."""
    out, lo, tok, req, lp = [], 0, 0, 0, 0
    for i, r in enumerate(need):
        if isinstance(r, ScoreRequest):
            r = (len(r.prompt_ids) + len(r.completion_ids), 1, len(r.completion_ids) + 1)
        n, q, m = r
        if n > max_tok:
            raise BackendError(f"request {i} has {n} tokens (prompt + completion; prompt + generate.max_new_tokens "
                               f"when generating) but the KV pool holds {max_tok}; raise model.mem_fraction_static or lower "
                               f"data.max_length (or generate.max_new_tokens)")
        if i > lo and (tok + n > max_tok or req + q > max_req or lp + m > max_rows):
            out.append((lo, i))
            lo, tok, req, lp = i, 0, 0, 0
        tok, req, lp = tok + n, req + q, lp + m
    if lo < len(need):
        out.append((lo, len(need)))
    return out


class SGLangRunner:
    """ForwardRunner on SGLang's ModelRunner (see the module docstring)."""

    def __init__(self, ctx: RankContext, cfg: Config, device: torch.device, model_path: str) -> None:
        validate_mezo_config(cfg, ctx)
        self.device, self.cfg, self.model_path = device, cfg, Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise BackendError(f"model path {model_path!r} is not an HF model directory (no config.json)")
        check_architecture(self.model_path)
        check_context_length(self.model_path, cfg.data.max_length)
        self.tp_rank, self.tp_size, _, _ = layout(ctx, cfg.model.tp_size)
        torch.cuda.set_device(device)
        self._keep: list = []
        # The default group is the caller's when it exists (init_mezo_distributed, or theirs); made here, it
        # is this runner's to destroy on close.
        self._owns_group = not dist.is_initialized()
        port = init_tp_world(ctx, cfg, device, self._keep)  # no-op if init_mezo_distributed made it
        server_args = create_mezo_server_args(ctx, cfg, str(self.model_path))
        # As SGLang measures (get_available_gpu_memory empties the cache first): memory that torch's
        # allocator caches for tensors already gone, e.g. an earlier engine's in this process, is free.
        free, total = teardown.gpu_free(device)  # before SGLang allocates anything on this GPU
        try:
            check_mem_fraction(cfg.model.mem_fraction_static, self.model_path, cfg.model.dtype, self.tp_size,
                               cfg.data.max_length, free, total, Held(*teardown.held_in_process()))
            self.engine = compat.start_engine(server_args, device.index or 0, self.tp_rank, port)
        except BaseException:  # nothing of a refused or failed build stays: the group made above neither
            teardown.after_failed_build()
            if self._owns_group and dist.is_initialized():
                dist.destroy_process_group()
            raise
        self._memory = self.engine.memory
        try:
            self._map_weights(cfg)
        except BaseException:  # e.g. an adapter SGLang refused, a pattern matching nothing: the engine goes
            self.close()
            raise
        # Scoring through fixed per-shape batches and CUDA graphs (runners/sglang/graphs.py) at tp 1
        # without LoRA; a batch that does not fit the pools, and TP or LoRA runs, keep per-call batches.
        self.graphs, self._plans = None, sp.PlanCache()
        if self.tp_size == 1 and cfg.peft.method == "none" and cfg.model.scoring_graphs:
            vocab = int(self.engine.model_runner.model_config.vocab_size)
            self.graphs = graphs.sglang_graph_scorer(self.engine, vocab, device, True, cfg.model.fp32_lm_head)
        # (our scoring graphs are captured at each shape's first forward: in the step-0 eval and the first step)
        log.info("sglang start-up phases (s): %s",
                 ", ".join(f"{k} {v:.1f}" for k, v in (self.engine.startup or {}).items()))

    def _map_weights(self, cfg: Config) -> None:
        """The trainable tensors (the weights, or the LoRA pool's slot) under HF names, as segments."""
        self.tied = bool(getattr(self.engine.model.config, "tie_word_embeddings", False))
        self.adapter: sglang_lora.PoolAdapter | None = None
        if cfg.peft.method == "lora":  # the trainable set is the adapter's slot in SGLang's LoRA pool
            self.adapter = sglang_lora.PoolAdapter(self.engine, cfg, str(self.model_path), self.tp_rank, self.tp_size)
            self._map, self._pieces_by_rank = self.adapter.entries, self.adapter.pieces_by_rank
        else:
            self._map = param_map(self.engine.model)
            # Every rank's pieces of every tensor (a TP gather is assembled with them), computed once.
            self._pieces_by_rank = [[pieces if r == self.tp_rank else rank_pieces(self.engine.model, sg_name, t, r)
                                     for r in range(self.tp_size)] for sg_name, t, pieces in self._map]
        pattern = re.compile(cfg.model.trainable)
        # Decided from all ranks' pieces, so every TP rank gathers the same tensors in the same dtype.
        self._trainable = [any(pattern.search(pc.hf_name) for ps in by_rank for pc in ps)
                           for by_rank in self._pieces_by_rank]
        self._home: dict[int, int] = {}  # id(segment) -> index of its tensor in _map
        self._segments = self._build_segments(pattern)

    def _build_segments(self, pattern: re.Pattern) -> list[ParamSegment]:
        segs: list[ParamSegment] = []
        for i, (_, t, pieces) in enumerate(self._map):
            for pc in pieces:
                if pattern.search(pc.hf_name):
                    # As the hf backend: decay only matrices, never biases and norm weights.
                    for seg in lay.piece_segments(t, pc, decay=len(pc.hf_shape) >= 2):
                        self._home[id(seg)] = i
                        segs.append(seg)
        if not segs:
            raise BackendError(f"model.trainable={self.cfg.model.trainable!r} matches no parameter of {self.model_path}")
        return segs

    def segments(self) -> list[ParamSegment]:
        """Trainable weights under HF names and offsets (the same list object on every call)."""
        return self._segments

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF name -> shape of every exported tensor."""
        return weights.hf_shapes(self._map)

    @torch.no_grad()
    def score(self, requests: Sequence[ScoreRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of completion log-probs float64, completion lengths int64), in request order."""
        for i, r in enumerate(requests):
            if not r.prompt_ids:
                raise ValueError(f"request {i}: empty prompt_ids; the first completion token needs a prompt token before it")
        if (plan := self._static_plan(sp.score_leaves(requests), sp.plan_score, requests)) is not None:
            return plan.sums(self.graphs.logprobs(plan)), sp.completion_lengths(requests)
        total = torch.zeros(len(requests), dtype=torch.float64)
        for lo, hi in self._chunks(requests):
            seqs = [list(r.prompt_ids) + list(r.completion_ids) for r in requests[lo:hi]]
            starts = [len(r.prompt_ids) - 1 for r in requests[lo:hi]]
            total[lo:hi] = self.engine.logprob_sums(seqs, starts)
        return total, torch.tensor([len(r.completion_ids) for r in requests], dtype=torch.int64)

    @torch.no_grad()
    def score_choices(self, prompts: Sequence[Sequence[int]],
                      choices: Sequence[Sequence[Sequence[int]]]) -> list[torch.Tensor]:
        """Per prompt, the summed log-prob of each of its candidates (float64, CPU); each prompt's KV is
        computed once and every candidate extends it (engine.Engine.shared_prompt_sums)."""
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i}: empty prompt_ids; the first completion token needs a prompt token before it")
        if (plan := self._static_plan(sp.choice_leaves(prompts, choices), sp.plan_choices, prompts, choices)) is not None:
            return sp.split_choices(plan.sums(self.graphs.logprobs(plan)), choices)
        if saved_positions(prompts, choices) < self.cfg.model.sglang_share_min_tokens:
            # Too little to save to pay for a second engine forward: one sequence per candidate.
            flat, _ = self.score([ScoreRequest(tuple(p), tuple(c)) for p, cs in zip(prompts, choices) for c in cs])
            return list(flat.split([len(cs) for cs in choices]))
        # Per prompt: KV tokens (prompt - 1 shared, then last prompt token + candidate per candidate),
        # request slots (1 + candidates) and log-prob rows (candidate + 1 each).
        need = [(len(p) - 1 + sum(len(c) + 1 for c in cs), 1 + len(cs), sum(len(c) + 1 for c in cs))
                for p, cs in zip(prompts, choices)]
        out: list[torch.Tensor] = []
        for lo, hi in self._chunks(need):
            out += self.engine.shared_prompt_sums(prompts[lo:hi], choices[lo:hi])
        return out

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerateRequest], settings: GenerationSettings) -> list[tuple[int, ...]]:
        """Completions (token ids, cut before EOS) through SGLang's prefill + decode, in request order."""
        for i, r in enumerate(requests):
            if not r.prompt_ids:
                raise ValueError(f"request {i}: empty prompt_ids; generation needs a prompt token")
        need = [(len(r.prompt_ids) + settings.max_new_tokens, 1, 0) for r in requests]
        out: list[tuple[int, ...]] = []
        for lo, hi in self._chunks(need):
            rows = self.engine.generate([r.prompt_ids for r in requests[lo:hi]], settings.max_new_tokens,
                                        settings.temperature, [r.seed for r in requests[lo:hi]], settings.eos_ids)
            out += [cut_at_eos(row, settings.eos_ids) for row in rows]
        return out

    def _static_plan(self, leaves: list, make, *args) -> sp.Plan | None:
        """The call as a graph scorer plan (the last one again for the same token tuples: PlanCache), or None
        where there is no scorer or the plan's bucket does not fit the engine."""
        if self.graphs is None:
            return None
        cap = self.cfg.data.max_length + 1
        plan = self._plans.get(leaves, lambda: make(*args, cap))
        return plan if graphs.fits(self.engine, plan.shape, cap) else None

    def _chunks(self, need: Sequence[tuple[int, int, int]] | Sequence[ScoreRequest]) -> list[tuple[int, int]]:
        """chunk_ranges against this engine's KV pool and request pool and model.sglang_logprob_tokens."""
        return chunk_ranges(need, self.engine.max_tokens, self.engine.max_requests, self.cfg.model.sglang_logprob_tokens)

    @torch.no_grad()
    def hf_state_dict(self, master: Sequence[tuple[ParamSegment, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """Every weight under its HF name and shape on CPU (tied embeddings once, as the hf backend).

        Every TP rank must call it (the shards are gathered). With `master` (this rank's (segment,
        fp32 theta) pairs), the trainable tensors come back in fp32 holding every rank's master values:
        each rank gathers an fp32 copy of its shard with its masters written in (weights.export_hf_state).
        """
        return weights.export_hf_state(self._map, self._pieces_by_rank, self._trainable, self._home,
                                       self.engine.model_runner.model_config.dtype, self.tp_size, master)

    @torch.no_grad()
    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Overwrite every weight in place from HF-named tensors (lm_head.weight ignored when tied)."""
        weights.load_hf_state(self._map, state)

    def save_pretrained(self, out_dir: Path) -> None:
        """HF-loadable directory: config, safetensors weights (TP rank 0 writes), tokenizer files; with
        LoRA a peft adapter directory (adapter_config.json + adapter_model.safetensors)."""
        from safetensors.torch import save_file

        state = self.hf_state_dict()  # every TP rank takes part in the gather
        if self.tp_rank != 0:
            return
        out_dir = Path(out_dir)
        if self.adapter is not None:  # LoRA: the peft adapter directory the hf backend writes too
            sglang_lora.save_adapter(out_dir, state, self.cfg, str(self.model_path))
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / "model.safetensors"),
                  metadata={"format": "pt"})
        for f in self.model_path.iterdir():
            if f.is_file() and (f.suffix in (".json", ".model", ".txt", ".jinja")) and not f.name.endswith(".index.json"):
                shutil.copy2(f, out_dir / f.name)

    def close(self) -> None:
        """Give the engine's GPU memory back (Engine.close), then the default group if this runner made it."""
        if getattr(self, "graphs", None) is not None:
            self.graphs.close()  # the graphs and their pool go before the storage they read
            self.graphs = None
        if getattr(self, "engine", None) is not None:
            self.engine.close()
            self.engine = None
        self._segments, self._map, self._pieces_by_rank, self._home = [], [], [], {}
        self.adapter = None
        if getattr(self, "_owns_group", False) and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False
        self._keep.clear()
        if getattr(self, "_memory", None) is not None and self._memory.free_after_close is not None:
            self._memory.closed()  # again, now that this runner's own views of the weights are gone

    def freed_report(self) -> teardown.EngineMemory | None:
        """The engine's GPU memory before build, after build and after close (EngineMemory.line())."""
        return getattr(self, "_memory", None)
