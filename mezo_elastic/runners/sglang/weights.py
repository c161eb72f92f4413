"""HF-named export and import of an SGLang model's weights (pure torch, no sglang import).

Works on SGLangRunner's parameter map: `entries` are (SGLang name, live tensor, this rank's pieces)
triples (runner.param_map, or the LoRA pool's slots), `pieces_by_rank` every TP rank's pieces of each
tensor, in the same order; layout.py says what a piece is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from mezo_elastic.errors import BackendError
from mezo_elastic.runners.sglang import layout as lay
from mezo_elastic.zo.perturb import ParamSegment

Entry = tuple[str, torch.Tensor, list[lay.Piece]]


def hf_shapes(entries: Sequence[Entry]) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor the pieces of `entries` export."""
    return {pc.hf_name: tuple(pc.hf_shape) for _, _, pieces in entries for pc in pieces}


def gather_tp(t: torch.Tensor, tp_size: int) -> list[torch.Tensor]:
    """The same SGLang tensor from every TP rank, in rank order (itself when tp_size = 1)."""
    if tp_size == 1:
        return [t]
    parts = [torch.empty_like(t) for _ in range(tp_size)]
    dist.all_gather(parts, t.contiguous())
    return parts


@torch.no_grad()
def export_hf_state(entries: Sequence[Entry], pieces_by_rank: Sequence[list[list[lay.Piece]]],
                    trainable: Sequence[bool], home: dict[int, int], dtype: torch.dtype, tp_size: int,
                    master: Sequence[tuple[ParamSegment, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
    """Every weight of `entries` under its HF name and shape on CPU (SGLangRunner.hf_state_dict).

    Every TP rank must call it (each tensor is gathered). `trainable[i]`: entry i holds trainable
    elements on some rank; `home`: id(segment) -> index of its entry. With `master` (this rank's
    (segment, fp32 theta) pairs) the trainable tensors come back in fp32 with every rank's master
    values; the rest, and everything without `master`, in `dtype`.
    """
    exact = master is not None
    fp32 = {pc.hf_name for i, by_rank in enumerate(pieces_by_rank) if exact and trainable[i]
            for ps in by_rank for pc in ps}
    out = {n: torch.empty(s, dtype=torch.float32 if n in fp32 else dtype) for n, s in hf_shapes(entries).items()}
    mine: dict[int, list[tuple[ParamSegment, torch.Tensor]]] = {}
    for seg, m in master or ():
        mine.setdefault(home[id(seg)], []).append((seg, m))
    for i, (_, t, _) in enumerate(entries):
        # Each rank writes its masters into an fp32 copy of its shard, so the gather carries them all.
        src = lay.with_master(t, mine.get(i, [])) if exact and trainable[i] else t
        lay.assemble(gather_tp(src, tp_size), pieces_by_rank[i], out)
    return out


@torch.no_grad()
def load_hf_state(entries: Sequence[Entry], state: dict[str, torch.Tensor]) -> None:
    """Overwrite every tensor of `entries` in place from HF-named tensors (SGLangRunner.load_hf_state_dict).

    A missing name or a wrong shape is a BackendError before anything is written; names no piece
    reads (lm_head.weight when the embeddings are tied) are ignored.
    """
    shapes = hf_shapes(entries)
    missing = sorted(set(shapes) - set(state))
    if missing:
        raise BackendError(f"state is missing {len(missing)} parameter(s), e.g. {missing[:3]}")
    for name, shape in shapes.items():
        if tuple(state[name].shape) != shape:
            raise BackendError(f"{name}: shape {tuple(state[name].shape)} does not match model {shape}")
    for _, t, pieces in entries:
        for pc in pieces:
            lay.read_piece(t, pc).copy_(lay.hf_slice(state[pc.hf_name], pc).to(t.device, t.dtype))
