"""The sweep in torch ops on any device, z from the compiled Philox (CPU) or torch's Philox.

Segments are cut into pieces and the pieces packed into batches of at most `batch` elements, so many
small tensors (biases, norms) cost one z generation and one set of arithmetic ops, and a large tensor
is walked in cache-sized chunks. Within a batch every piece owns whole Philox counters (its first
element sits at position h % W of its first counter, W = 4 elements a counter, 128 for rademacher32),
so z for the whole batch is one C call (or one torch Philox) and one Box-Muller over one buffer. The arithmetic is in place on the weights (one
fp32/fp64 piece, or the fp32 master) or on one gathered buffer (bf16/fp16 weights, many pieces),
with today's float op order, so the weights are bit-identical to the per-tensor path this replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mezo_elastic.zo.zgen import native, philox_torch
from mezo_elastic.zo.zgen.types import COUNTER_ELEMS, ParamSegment, SweepPlan, Term, philox_key

BATCH_PER_THREAD = 1 << 16  # elements a batch per intra-op thread: z buffers stay in L2


@dataclass
class _Batch:
    """Pieces (segment, start, count) of one (dtype, master, decay) group, packed on counter slots."""

    pieces: list[tuple[int, int, int]]  # (segment index, start, count): indices, so the cache holds no weights
    pos: list[int]  # element position of each piece in the batch's padded buffers
    slots: int  # Philox counters of the batch (buffers hold width * slots elements)
    width: int  # elements a counter gives (COUNTER_ELEMS of the distribution)
    ranges: torch.Tensor  # int64 [5, pieces]: first counter, count, k0, k1 (set per seed), out slot
    name_idx: torch.Tensor  # int64 [pieces]: index of the piece's name in the layout's names
    decay: bool
    master: bool
    work_dtype: torch.dtype


@dataclass
class _Layout:
    list_id: int
    fingerprint: tuple
    batch: int
    width: int  # elements a counter: the batches' geometry depends on the distribution's
    names: list[str]
    batches: list[_Batch]
    keys: dict[int, torch.Tensor]  # seed -> int64 [2, names]
    scratch: dict = field(default_factory=dict)  # device -> _Scratch, reused by every sweep of the list


def _fingerprint(segments: list[ParamSegment]) -> tuple:
    step = max(1, len(segments) // 64)
    return (len(segments),) + tuple((s.tensor.data_ptr(), s.tensor.numel(), s.offset, s.name,
                                      s.master.data_ptr() if s.master is not None else 0, s.decay, s.tensor.dtype)
                                     for s in segments[::step] + segments[-1:])


def _pack(group: list[tuple[int, ParamSegment]], batch: int, name_idx: dict[str, int], width: int) -> list[_Batch]:
    """Cut the group's segments into pieces and fill batches of at most `batch` padded elements, each piece
    padded to whole counters of `width` elements (batch >= 2 * width, so an empty batch always has room)."""
    out: list[_Batch] = []
    cur: list[tuple[int, ParamSegment, int, int]] = []
    used = 0

    def flush() -> None:
        nonlocal cur, used
        if cur:
            out.append(_make_batch(cur, name_idx, width))
        cur, used = [], 0

    for i, seg in group:
        lo, n = 0, seg.tensor.numel()
        while lo < n:
            room = batch - used - (width - 1) - (seg.offset + lo) % width  # padding to whole counters
            if room <= 0:
                flush()
                continue
            cnt = min(room, n - lo)
            cur.append((i, seg, lo, cnt))
            used += ((seg.offset + lo) % width + cnt + width - 1) // width * width
            lo += cnt
    flush()
    return out


def _make_batch(pieces: list[tuple[int, ParamSegment, int, int]], name_idx: dict[str, int], width: int) -> _Batch:
    rows, pos, slot = [], [], 0
    for _, seg, lo, n in pieces:
        h = seg.offset + lo
        count = (h % width + n + width - 1) // width
        rows.append([h // width, count, 0, 0, slot])
        pos.append(width * slot + h % width)
        slot += count
    seg0 = pieces[0][1]
    base = seg0.master if seg0.master is not None else seg0.tensor  # fp32 math, fp64 weights keep fp64
    return _Batch([(i, lo, n) for i, _, lo, n in pieces], pos, slot, width,
                  torch.tensor(rows, dtype=torch.int64).T.contiguous(),
                  torch.tensor([name_idx[s.name] for _, s, _, _ in pieces], dtype=torch.int64),
                  seg0.decay, seg0.master is not None, torch.promote_types(base.dtype, torch.float32))


_CACHE: list[_Layout] = []


def layout(segments: list[ParamSegment], batch: int, width: int) -> _Layout:
    """The packed layout of a segment list on counters of `width` elements, built once per list (cached on
    id + fingerprint + geometry)."""
    fp = _fingerprint(segments)
    for lay in _CACHE:
        if lay.list_id == id(segments) and lay.fingerprint == fp and lay.batch == batch and lay.width == width:
            return lay
    names = sorted({s.name for s in segments})
    idx = {n: i for i, n in enumerate(names)}
    groups: dict[tuple, list[tuple[int, ParamSegment]]] = {}
    for i, s in enumerate(segments):
        if s.tensor.numel():
            key = (str(s.tensor.dtype), s.master is not None, s.decay, str(s.tensor.device))
            groups.setdefault(key, []).append((i, s))
    batches = [b for key in sorted(groups) for b in _pack(groups[key], batch, idx, width)]
    lay = _Layout(id(segments), fp, batch, width, names, batches, {})
    _CACHE.insert(0, lay)
    del _CACHE[4:]
    return lay


def _keys(lay: _Layout, seed: int) -> torch.Tensor:
    if seed not in lay.keys:
        lay.keys[seed] = torch.tensor([philox_key(seed, n) for n in lay.names], dtype=torch.int64).T.contiguous()
        if len(lay.keys) > 8:
            lay.keys.pop(next(iter(lay.keys)))
    return lay.keys[seed]


class _Scratch:
    """Reusable buffers of one sweep (bounded by the batch size), by (role, dtype)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bufs = device, {}

    def get(self, role: str, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buf = self.bufs.get((role, dtype))
        if buf is None or buf.numel() < n:
            buf = self.bufs[(role, dtype)] = torch.zeros(n, dtype=dtype, device=self.device)
        return buf[:n]


def fill_z(ranges: torch.Tensor, dist: str, out: torch.Tensor, scratch: _Scratch, use_native: bool) -> None:
    """z of the counter ranges (int64 [5, n]: first counter, count, k0, k1, out slot; slots packed
    from 0) into `out` (COUNTER_ELEMS[dist] floats a slot: 4, or 128 for rademacher32)."""
    slots = out.numel() // COUNTER_ELEMS[dist]
    if use_native:
        if dist in ("rademacher", "rademacher32"):
            native.fill(dist, ranges, [out])
            return
        u1, th = scratch.get("u1", 2 * slots), scratch.get("th", 2 * slots)
        native.fill("gauss_inputs", ranges, [u1, th])
    else:
        count = ranges[1]
        starts = torch.repeat_interleave(ranges[0] - torch.cumsum(count, 0) + count, count)
        counters = (starts + torch.arange(slots)).to(out.device)
        if ranges.shape[1] == 1:  # one piece (a chunk of a large tensor): int keys, 4 fewer ops a round
            k0, k1 = int(ranges[2, 0]), int(ranges[3, 0])
        else:
            k0, k1 = (torch.repeat_interleave(ranges[i], count).to(out.device) for i in (2, 3))
        words = philox_torch.philox4x32(counters, k0, k1)
        if dist == "rademacher":
            out.copy_(philox_torch.rademacher(words))
            return
        if dist == "rademacher32":
            out.copy_(philox_torch.rademacher32(words))
            return
        u1, th = philox_torch.box_muller_inputs(words)
    philox_torch.box_muller(u1, th, out=out)


def _combine(zs: dict[int, torch.Tensor], terms: list[Term], acc: torch.Tensor, tmp: torch.Tensor) -> bool:
    """acc = sum(coeff * z) over terms in their order (coefficients as float32, as a tensor * float);
    False when every coefficient is 0 (acc untouched)."""
    first = True
    for seed, coeff in terms:
        if coeff == 0.0:
            continue
        if first:
            torch.mul(zs[seed], coeff, out=acc)
            first = False
        else:
            acc.add_(torch.mul(zs[seed], coeff, out=tmp))
    return not first


def _apply(b: _Batch, segments: list[ParamSegment], plan: SweepPlan, zs: dict[int, torch.Tensor],
           scratch: _Scratch) -> None:
    """new = (1 - decay) * (base + pre) + post; master <- new, weights <- new + show, or cast(new) + show
    with plan.show_on_grid (see perturb)."""
    single = len(b.pieces) == 1
    pieces = [(segments[i], lo, n) for i, lo, n in b.pieces]
    _, _, n = pieces[0]
    if single:  # z views onto the piece's own elements; work in place where the dtype allows
        p = b.pos[0]
        zs = {s: z[p : p + n] for s, z in zs.items()}
        size = n
    else:
        size = b.width * b.slots
    srcs = [(s.master if b.master else s.tensor)[lo_ : lo_ + n_] for s, lo_, n_ in pieces]
    in_place = single and srcs[0].dtype == b.work_dtype
    work = srcs[0] if in_place else scratch.get("work", size, b.work_dtype)
    views = [work] if single else [work[p : p + n_] for p, (_, _, n_) in zip(b.pos, pieces)]
    if not in_place:
        torch._foreach_copy_(views, srcs)
    acc, tmp = scratch.get("acc", size), scratch.get("tmp", size)
    if _combine(zs, plan.pre, acc, tmp):
        work.add_(acc)
    if b.decay and plan.decay:
        work.mul_(1.0 - plan.decay)
    if _combine(zs, plan.post, acc, tmp):
        work.add_(acc)
    dsts = [s.tensor[lo_ : lo_ + n_] for s, lo_, n_ in pieces]
    if b.master:
        if not in_place:
            torch._foreach_copy_(srcs, views)  # the new master
        if _combine(zs, plan.show, acc, tmp):
            if plan.show_on_grid and dsts[0].dtype != b.work_dtype:  # c = cast(new), back in fp32: c + show
                grid = scratch.get("grid", size, dsts[0].dtype)
                grid.copy_(work)
                acc.add_(tmp.copy_(grid))
            else:
                acc.add_(work)
            views = [acc] if single else [acc[p : p + n_] for p, (_, _, n_) in zip(b.pos, pieces)]
    if b.master or not in_place:
        torch._foreach_copy_(dsts, views)


def sweep(segments: list[ParamSegment], plan: SweepPlan, chunk_elems: int, use_native: bool | None = None) -> None:
    """Apply `plan` to every segment in place with torch ops, z from the compiled Philox when
    `use_native` (None: when it loads and the weights are on the CPU), else torch's Philox."""
    if not segments:
        return
    device = segments[0].tensor.device
    if use_native is None:
        use_native = device.type == "cpu" and native.library() is not None
    width = COUNTER_ELEMS[plan.dist]
    batch = max(2 * width, min(chunk_elems, BATCH_PER_THREAD * max(1, torch.get_num_threads())))
    lay = layout(segments, batch, width)
    seeds = plan.seeds()
    keys = {s: _keys(lay, s) for s in seeds}
    scratch = lay.scratch.setdefault(str(device), _Scratch(device))
    with torch.no_grad():
        for b in lay.batches:
            zs = {}
            ranges = b.ranges.clone()
            for i, s in enumerate(seeds):
                ranges[2:4] = keys[s][:, b.name_idx]
                zs[s] = scratch.get(f"z{i}", width * b.slots)
                fill_z(ranges, plan.dist, zs[s], scratch, use_native)
            _apply(b, segments, plan, zs, scratch)


def z_values(seed: int, name: str, start: int, count: int, dist: str, device: torch.device | str,
             use_native: bool | None) -> torch.Tensor:
    """z of elements [start, start + count) of parameter `name` (see perturb.z_range)."""
    device = torch.device(device)
    if use_native is None:
        use_native = device.type == "cpu" and native.library() is not None
    width = COUNTER_ELEMS[dist]
    first = start % width  # position of element `start` in its counter
    slots = (first + count + width - 1) // width
    ranges = torch.tensor([[start // width], [slots], *([k] for k in philox_key(seed, name)), [0]], dtype=torch.int64)
    out = torch.empty(width * slots, dtype=torch.float32, device=device)
    if slots:
        fill_z(ranges, dist, out, _Scratch(device), use_native)
    return out[first : first + count]


def z_many(pieces: list[tuple[int, str, int]], dist: str,
           device: torch.device | str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """z of elements [0, count) of each (seed, name, count) in one generation (one set of kernels on a GPU
    however many pieces): (the buffer, each piece's view of it, starting at a multiple of a counter's
    COUNTER_ELEMS[dist] elements; the gaps between pieces hold z of the padding). Each view equals
    z_values(seed, name, 0, count, dist, device, None) bit for bit."""
    device = torch.device(device)
    width = COUNTER_ELEMS[dist]
    slots = [(count + width - 1) // width for _, _, count in pieces]
    offsets = [sum(slots[:i]) for i in range(len(slots))]
    keys = [philox_key(seed, name) for seed, name, _ in pieces]
    ranges = torch.tensor([[0] * len(pieces), slots, [k[0] for k in keys], [k[1] for k in keys], offsets],
                          dtype=torch.int64)
    out = torch.empty(width * sum(slots), dtype=torch.float32, device=device)
    if pieces:
        fill_z(ranges, dist, out, _Scratch(device), device.type == "cpu" and native.library() is not None)
    return out, [out[width * o : width * o + count] for (_, _, count), o in zip(pieces, offsets)]
