"""LoRA on the sglang backend: the adapter lives in SGLang's own LoRA memory pool and is trained there.

SGLang 0.5.17 (sglang/srt/lora/) serves adapters from a GPU pool: per target module and layer an A
buffer [slots, c * max_rank, in] and a B buffer [slots, out_local, max_rank], c = 3 for the fused
`qkv_proj` (A rows [q | k | v], B rows q/k/v of this TP rank), 2 for `gate_up_proj`, 1 otherwise.
This module loads the run's adapter (mezo_elastic.runners.lora's seeded init, the hf backend's names and
shapes) from tensors as a pinned adapter, puts it in a pool slot once, and describes that slot as
`Piece`s of the adapter's saved PEFT names (runners/sglang/layout.py), so the runner perturbs the
slot in place with the same z as the hf backend's peft model. Every request carries the adapter's
id (engine.Engine.lora_id); the adapter is pinned and the only one, so its slot is never
evicted or reloaded from SGLang's CPU copy (which goes stale, unused).

Pure layout functions first (tested on CPU), then PoolAdapter (needs sglang and a GPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mezo_elastic.config import Config
from mezo_elastic.errors import BackendError, ConfigError
from mezo_elastic.runners import lora
from mezo_elastic.runners.sglang import layout as lay

LORA_ID = "mezo-elastic-adapter"  # the one adapter's id in SGLang's registry and pool
# peft target -> (SGLang module leaf, index in its stacked A rows); None: not stacked (row-parallel)
SGLANG_TARGETS = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
                  "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
                  "o_proj": ("o_proj", None), "down_proj": ("down_proj", None)}


def check_targets(targets: list[str]) -> None:
    """Raise ConfigError unless SGLang's LoRA pool can hold adapters on exactly these modules.

    SGLang stacks q/k/v around q and v (LoRAAdapter.normalize_qkv_proj: k may be absent, q and v not)
    and gate/up around gate (normalize_gate_up_proj).
    """
    bad = [t for t in targets if t not in SGLANG_TARGETS]
    if bad:
        raise ConfigError(f"peft.targets={','.join(targets)!r}: {bad} not supported with model.backend=sglang; "
                          f"choose from {list(SGLANG_TARGETS)}")
    if set(targets) & {"q_proj", "k_proj", "v_proj"} and not {"q_proj", "v_proj"} <= set(targets):
        raise ConfigError(f"peft.targets={','.join(targets)!r}: with model.backend=sglang an adapter on q/k/v "
                          f"needs both q_proj and v_proj (SGLang stacks q, k, v around them)")
    if "up_proj" in targets and "gate_proj" not in targets:
        raise ConfigError(f"peft.targets={','.join(targets)!r}: with model.backend=sglang up_proj needs gate_proj")


def lora_server_fields(cfg: Config) -> dict[str, Any]:
    """ServerArgs fields that turn on SGLang's LoRA pool for one resident adapter of peft.rank.

    Two slots: the pool keeps one for the base model (LoRAManager.init_memory_pool) and a pinned
    adapter must leave one unpinned (validate_new_adapter).
    """
    return {"enable_lora": True, "max_lora_rank": cfg.peft.rank, "lora_target_modules": cfg.peft.target_list(),
            "max_loras_per_batch": 2, "lora_paths": None, "enable_lora_overlap_loading": False}


@dataclass(frozen=True)
class Geometry:
    """What the slot layout of one SGLang LoRA module depends on (read off its base layer)."""

    kind: str  # "qkv" (QKVParallelLinear), "merged" (gate_up), "row" (RowParallelLinear)
    tp_size: int
    total_heads: int = 0
    total_kv_heads: int = 0
    head_size: int = 0
    v_head_size: int = 0
    output_sizes: tuple[int, ...] = ()
    in_per_rank: int = 0


def peft_name(module_name: str, leaf: str | None, which: str) -> str:
    """Saved PEFT name of an SGLang module's (un-fused) leaf: model.layers.0.self_attn.qkv_proj, q_proj, A
    -> base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight."""
    path = module_name if leaf is None else f"{module_name.rpartition('.')[0]}.{leaf}"
    return f"base_model.model.{path}.lora_{which}.weight"


def slot_pieces(module_name: str, geom: Geometry, which: str, shapes: dict[str, tuple[int, ...]], rank: int,
                tp_rank: int) -> list[lay.Piece]:
    """Pieces of one module's A or B slot tensor on TP rank `tp_rank`, named by saved PEFT names.

    Leaves the adapter does not have (k_proj when only q and v are targets) get no piece: their rows
    stay zero, as the module has no adapter in the hf backend either.
    """
    fused = module_name.rpartition(".")[2]
    leaves = lay.FUSED_LEAVES.get(fused)
    if leaves is None:  # row-parallel (o_proj, down_proj): A sharded by columns, B whole on every rank
        name = peft_name(module_name, None, which)
        if name not in shapes:
            return []
        if which == "B":
            return lay.replicated_pieces(name, shapes[name])
        return lay.row_parallel_pieces(name, rank, geom.in_per_rank, tp_rank, geom.tp_size)
    if which == "A":  # column-parallel A: whole on every rank, stacked [leaf 0 | leaf 1 | ...], rank rows each
        return [lay.Piece(peft_name(module_name, leaf, "A"), shapes[peft_name(module_name, leaf, "A")], 0, i * rank, 0,
                          rank) for i, leaf in enumerate(leaves) if peft_name(module_name, leaf, "A") in shapes]
    # B follows the fused weight's row layout with `rank` columns (slice_lora_b_weights does the same)
    fused_weight = f"{module_name}.weight"
    if geom.kind == "qkv":
        pieces = lay.qkv_pieces(fused_weight, total_heads=geom.total_heads, total_kv_heads=geom.total_kv_heads,
                                head_size=geom.head_size, v_head_size=geom.v_head_size, tp_rank=tp_rank,
                                tp_size=geom.tp_size, rest=(rank,))
    else:
        pieces = lay.merged_pieces(fused_weight, list(geom.output_sizes), (rank,), tp_rank, geom.tp_size)
    out = []
    for pc, leaf in zip(pieces, leaves):
        name = peft_name(module_name, leaf, "B")
        if name in shapes:
            out.append(lay.Piece(name, shapes[name], 0, pc.local_start, pc.hf_start, pc.length))
    return out


def geometry(base_layer: torch.nn.Module) -> Geometry:
    """The Geometry of an SGLang linear layer that carries a LoRA wrapper."""
    from sglang.srt.layers.linear import (
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )

    if isinstance(base_layer, QKVParallelLinear):
        return Geometry("qkv", base_layer.tp_size, total_heads=base_layer.total_num_heads,
                        total_kv_heads=base_layer.total_num_kv_heads, head_size=base_layer.head_size,
                        v_head_size=base_layer.v_head_size)
    if isinstance(base_layer, MergedColumnParallelLinear):
        return Geometry("merged", base_layer.tp_size, output_sizes=tuple(base_layer.output_sizes))
    if isinstance(base_layer, RowParallelLinear):
        return Geometry("row", base_layer.tp_size, in_per_rank=base_layer.input_size_per_partition)
    raise BackendError(f"LoRA on {type(base_layer).__name__} is not supported by model.backend=sglang")


class PoolAdapter:
    """The run's adapter, resident in SGLang's LoRA pool; `entries` and `pieces_by_rank` have the form
    of SGLangRunner's parameter map, so its segments, export and import code serve the adapter."""

    def __init__(self, engine: Any, cfg: Config, model_path: str, tp_rank: int, tp_size: int) -> None:
        from sglang.srt.lora.lora_registry import LoRARef
        from sglang.srt.lora.utils import get_target_module_name

        mr = engine.model_runner
        try:
            self.shapes = lora.adapter_shapes(model_path, cfg.peft, cfg.model.trust_remote_code)
        except ValueError as e:
            raise BackendError(f"peft.targets={cfg.peft.targets!r}: {e}") from None
        tensors = {n: lora.init_tensor(cfg.seed, n, s) for n, s in self.shapes.items()}
        ref = LoRARef(lora_id=LORA_ID, lora_name=LORA_ID, lora_path=f"{LORA_ID}:in-memory", pinned=True)
        res = mr.load_lora_adapter_from_tensors(ref, tensors, lora.adapter_config_dict(cfg.peft, model_path))
        if not res.success:
            raise BackendError(f"sglang did not load the LoRA adapter: {res.error_message}")
        mr.lora_manager.fetch_new_loras({LORA_ID})  # into a pool slot now, so the slot's views can be taken
        engine.lora_id = LORA_ID  # every request runs with the adapter from here on
        pool = mr.lora_manager.memory_pool
        slot = pool.get_buffer_id(LORA_ID)
        self.entries: list[tuple[str, torch.Tensor, list[lay.Piece]]] = []
        self.pieces_by_rank: list[list[list[lay.Piece]]] = []
        for layer_id, modules in enumerate(mr.lora_manager.lora_modules):
            for module_name, module in sorted(modules.items()):
                geom = geometry(module.base_layer)
                target = get_target_module_name(module_name, pool.target_modules)  # as update_lora_info
                for which, buffers in (("A", pool.A_buffer), ("B", pool.B_buffer)):
                    local = buffers[target][layer_id][slot]  # a view of the pool: changed in place
                    if which == "B" and local.shape[-1] != cfg.peft.rank:
                        raise BackendError(f"{module_name}: LoRA B buffer rank {local.shape[-1]} != peft.rank")
                    by_rank = [slot_pieces(module_name, geom, which, self.shapes, cfg.peft.rank, r)
                               for r in range(tp_size)]
                    self.entries.append((f"{module_name}.lora_{which}", local, by_rank[tp_rank]))
                    self.pieces_by_rank.append(by_rank)
        # every adapter element in some rank's slot exactly where peft has it, or an error now
        covered = [[pc for by_rank in self.pieces_by_rank for pc in by_rank[r]] for r in range(tp_size)]
        lay.check_cover(covered, self.shapes)


def save_adapter(out_dir: Path, state: dict[str, torch.Tensor], cfg: Config, base_path: str) -> None:
    """Write a peft adapter directory (what PeftModel.save_pretrained writes: the config and the
    tensors under their saved names), loadable with PeftModel.from_pretrained(base, out_dir)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / lora.ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    (out_dir / lora.ADAPTER_CONFIG).write_text(json.dumps(lora.adapter_config_dict(cfg.peft, base_path), indent=2))
