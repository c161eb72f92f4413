"""Where each element of an SGLang parameter lives in the HF checkpoint (pure torch, no sglang import).

SGLang fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`, pads the vocabulary, keeps tied
embeddings once, and shards column-parallel layers by rows and row-parallel layers by columns. A
`Piece` says: this slice of the local tensor is that slice of the HF parameter. From the pieces
come (a) perturbation segments keyed by HF name and element index, so z(seed, name, index) is the
same on SGLang at any TP size and on HF, and (b) HF-named export and import.

The numbers fed to these functions (heads, shard ranges, tp rank) are read off SGLang's own layer
objects by runners/sglang.py, so the mapping follows what SGLang actually loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mezo_elastic.zo.perturb import ParamSegment

# SGLang fused module leaf -> the HF leaves it stacks, in SGLang's row order.
FUSED_LEAVES = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


@dataclass(frozen=True)
class Piece:
    """Local tensor slice [local_start, local_start + length) along `dim` = HF slice [hf_start, ...).

    dim 0 slices rows (whole rows, contiguous in both tensors); dim 1 slices columns of 2-D
    weights (row-parallel shards), which are strided in the HF parameter.
    """

    hf_name: str
    hf_shape: tuple[int, ...]
    dim: int
    local_start: int
    hf_start: int
    length: int


def hf_leaf_names(sglang_name: str) -> tuple[str, ...]:
    """HF names stacked into one SGLang parameter name (itself when not fused)."""
    module, _, attr = sglang_name.rpartition(".")
    parent, _, leaf = module.rpartition(".")
    if leaf in FUSED_LEAVES:
        return tuple(f"{parent}.{sub}.{attr}" for sub in FUSED_LEAVES[leaf])
    return (sglang_name,)


def replicated_pieces(name: str, shape: tuple[int, ...]) -> list[Piece]:
    """A parameter every rank holds whole (norms, replicated layers, tp_size=1 tensors)."""
    return [Piece(name, tuple(shape), 0, 0, 0, shape[0])]


def column_pieces(name: str, full_rows: int, rest: tuple[int, ...], tp_rank: int, tp_size: int) -> list[Piece]:
    """A column-parallel (row-sharded) parameter: rank r holds rows [r*n, (r+1)*n)."""
    n = full_rows // tp_size
    return [Piece(name, (full_rows, *rest), 0, 0, tp_rank * n, n)]


def merged_pieces(sglang_name: str, output_sizes: list[int], rest: tuple[int, ...], tp_rank: int,
                  tp_size: int) -> list[Piece]:
    """MergedColumnParallelLinear (gate_up_proj): each HF sub-matrix sharded by rows, stacked."""
    names = hf_leaf_names(sglang_name)
    if len(names) != len(output_sizes):
        raise ValueError(f"{sglang_name}: {len(output_sizes)} stacked outputs but HF leaves {names}")
    pieces, local = [], 0
    for name, full in zip(names, output_sizes):
        n = full // tp_size
        pieces.append(Piece(name, (full, *rest), 0, local, tp_rank * n, n))
        local += n
    return pieces


def qkv_pieces(sglang_name: str, *, total_heads: int, total_kv_heads: int, head_size: int, v_head_size: int,
               tp_rank: int, tp_size: int, rest: tuple[int, ...]) -> list[Piece]:
    """QKVParallelLinear: local rows = [q shard | k shard | v shard]; KV heads replicated when tp > kv heads."""
    q_name, k_name, v_name = hf_leaf_names(sglang_name)
    heads = total_heads // tp_size
    if tp_size >= total_kv_heads:
        kv_heads, kv_shard = 1, tp_rank // (tp_size // total_kv_heads)
    else:
        kv_heads, kv_shard = total_kv_heads // tp_size, tp_rank
    q_n, k_n, v_n = heads * head_size, kv_heads * head_size, kv_heads * v_head_size
    return [
        Piece(q_name, (total_heads * head_size, *rest), 0, 0, tp_rank * q_n, q_n),
        Piece(k_name, (total_kv_heads * head_size, *rest), 0, q_n, kv_shard * k_n, k_n),
        Piece(v_name, (total_kv_heads * v_head_size, *rest), 0, q_n + k_n, kv_shard * v_n, v_n),
    ]


def row_parallel_pieces(name: str, out_features: int, in_per_rank: int, tp_rank: int, tp_size: int) -> list[Piece]:
    """RowParallelLinear weight [out, in/tp]: rank r holds HF columns [r*k, (r+1)*k)."""
    if tp_size == 1:  # whole matrix: contiguous, one row piece
        return [Piece(name, (out_features, in_per_rank), 0, 0, 0, out_features)]
    return [Piece(name, (out_features, in_per_rank * tp_size), 1, 0, tp_rank * in_per_rank, in_per_rank)]


def vocab_pieces(name: str, org_vocab: int, hidden: int, start: int, end: int) -> list[Piece]:
    """VocabParallelEmbedding / ParallelLMHead: local rows [0, end-start) are HF rows [start, end).

    Rows past end - start are SGLang's vocabulary padding: never trained, never exported.
    """
    return [Piece(name, (org_vocab, hidden), 0, 0, start, end - start)]


def piece_segments(local: torch.Tensor, piece: Piece, decay: bool) -> list[ParamSegment]:
    """Perturbation segments of one piece: one for a row piece, one per row for a column piece."""
    if piece.dim == 0:
        row = local[0].numel() if local.dim() > 1 else 1
        view = local.reshape(-1)[piece.local_start * row : (piece.local_start + piece.length) * row]
        return [ParamSegment(view, piece.hf_name, piece.hf_start * row, decay)]
    hf_cols = piece.hf_shape[1]
    cols = local[:, piece.local_start : piece.local_start + piece.length]
    # A column shard is strided in the HF tensor: each row is its own contiguous HF range.
    return [ParamSegment(cols[i], piece.hf_name, i * hf_cols + piece.hf_start, decay) for i in range(cols.shape[0])]


def read_piece(local: torch.Tensor, piece: Piece) -> torch.Tensor:
    """The local slice of one piece (a view)."""
    return local.narrow(piece.dim, piece.local_start, piece.length)


def hf_slice(full: torch.Tensor, piece: Piece) -> torch.Tensor:
    """The HF tensor's slice of one piece (a view)."""
    return full.narrow(piece.dim, piece.hf_start, piece.length)


def with_master(local: torch.Tensor, masters: list[tuple[ParamSegment, torch.Tensor]]) -> torch.Tensor:
    """An fp32 copy of one rank's local tensor holding the exact fp32 master values of its segments.

    A segment is a 1-D view into its local tensor (piece_segments), so its place in the copy is its
    storage offset. Gathering these copies instead of the bf16 tensors gives every TP rank's theta.

    Raises:
        ValueError: a segment is not a view of `local` (a mapping mistake, never silently written).
    """
    out = local.detach().to(torch.float32, copy=True)
    flat, base = out.view(-1), local.storage_offset()
    for seg, m in masters:
        off = seg.tensor.storage_offset() - base
        if (seg.tensor.untyped_storage().data_ptr() != local.untyped_storage().data_ptr()
                or not 0 <= off <= local.numel() - m.numel() or seg.tensor.stride() != (1,)):
            raise ValueError(f"segment {seg.name}@{seg.offset} is not a contiguous view of its local tensor")
        flat[off : off + m.numel()].copy_(m)
    return out


def assemble(parts: list[torch.Tensor], pieces_by_rank: list[list[Piece]], out: dict[str, torch.Tensor]) -> None:
    """Write every TP rank's local tensor (`parts`, rank order) into the HF tensors of `out`, piece by piece."""
    for part, pieces in zip(parts, pieces_by_rank, strict=True):
        for pc in pieces:
            hf_slice(out[pc.hf_name], pc).copy_(read_piece(part, pc).to(out[pc.hf_name].dtype).cpu())


def check_cover(pieces_by_rank: list[list[Piece]], shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise ValueError unless the ranks' pieces cover every element of every HF tensor.

    Used on the GPU after loading, and by the unit tests, so a layout mistake is an error and not a
    silently untrained (or doubly trained) slice.
    """
    hit = {n: torch.zeros(s, dtype=torch.bool) for n, s in shapes.items()}
    for pieces in pieces_by_rank:
        for p in pieces:
            if p.hf_name not in hit:
                raise ValueError(f"piece names unknown HF tensor {p.hf_name}")
            if tuple(p.hf_shape) != tuple(shapes[p.hf_name]):
                raise ValueError(f"{p.hf_name}: piece shape {p.hf_shape} != HF shape {shapes[p.hf_name]}")
            hf_slice(hit[p.hf_name], p).fill_(True)
    missing = [n for n, h in hit.items() if not bool(h.all())]
    if missing:
        raise ValueError(f"HF tensors not fully covered by the SGLang layout: {missing[:5]}")
