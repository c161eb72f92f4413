"""Fused Triton sweep: perturb.sweep's semantics in one launch per weight dtype, z made in registers.

Same z as perturb.z_range for the same (seed, HF name, element index): Philox4x32-10 keyed by
blake2b(f"{seed}|{name}"), counter = index // 4, lane = index % 4, Box-Muller on lanes (0,1) and
(2,3). The log is libdevice's (precise: near u1 = 1 the radius is tiny and an approximate log's
absolute error would dominate it); sin and cos use the hardware approximations, |error| < 1e-6
before scaling by the radius, so gaussian z agrees with the torch implementation to ~1e-5 absolute.
Rademacher z (DIST=1) is the sign bit of each lane's word: bit for bit the CPU path's.
rademacher32 z (DIST code 2) takes a sign from every bit of the 4 words (counter = index // 128), in
its own kernel (_sweep_kernel_packed) with its own block table; also bit for bit the CPU path's.

One program handles BLOCK_C Philox counters (4 * BLOCK_C consecutive elements of one segment,
aligned to the HF index so every counter's 4 lanes are used); a block table maps program ids to
segments, so all segments of a dtype go in a single launch whatever their sizes. Every seed of a
sweep is generated once per element and feeds the pre / post / show sums, so restore + update +
next perturbation is one read and one write of the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mezo_elastic.zo.zgen.types import COUNTER_ELEMS, ParamSegment, SweepPlan, philox_key

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # CPU machines: perturb.sweep keeps its torch path
    HAVE_TRITON = False

MAX_SEEDS = 4  # distinct seeds one launch generates (a MeZO sweep uses 1 or 2)
BLOCK_C = 512  # Philox counters per program = 2048 elements (bench/bench_step.py --tune re-measures)
# rademacher32's kernel: counters per program = 2048 elements as BLOCK_C's (a power of 2; not yet tuned on a GPU)
BLOCK_C32 = 16
NUM_WARPS = 4
# Lane layout of loads/stores (see _sweep_kernel). None: join (1) for aligned groups, lanes (0) for
# the rest: measured fastest for each on an H100 (docs/benchmarks.md; bench/bench_sweep.py times all).
VEC: int | None = None
ALIGN = True  # give aligned segments their own launch with vector-load hints (bench: off to compare)
MAX_INDEX = 2**33  # HF element indices the kernel handles (counter = index // 4 in 31 bits)
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# The kernel's DIST constexpr: gaussian compiles as before. 2 (rademacher32) runs _sweep_kernel_packed instead.
DIST_CODE = {"gaussian": 0, "rademacher": 1, "rademacher32": 2}


def available() -> bool:
    """True when the fused kernel can run here (triton importable and CUDA present)."""
    return HAVE_TRITON and torch.cuda.is_available()


if HAVE_TRITON:
    PHILOX_A = tl.constexpr(0xD2511F53)
    PHILOX_B = tl.constexpr(0xCD9E8D57)
    PHILOX_KA = tl.constexpr(0x9E3779B9)
    PHILOX_KB = tl.constexpr(0xBB67AE85)

    try:  # libdevice moved between Triton releases
        from triton.language.extra import libdevice as _libdevice
    except ImportError:  # pragma: no cover - older Triton
        from triton.language.extra.cuda import libdevice as _libdevice

    @triton.jit
    def _philox(c0, c1, k0, k1):
        """Philox4x32-10 of (c0, c1, 0, 0) under key (k0, k1), as Triton's philox_impl."""
        c2 = c0 * 0
        c3 = c0 * 0
        for _ in tl.static_range(10):
            a0, a2 = c0, c2
            c0 = tl.umulhi(PHILOX_B, a2) ^ c1 ^ k0
            c2 = tl.umulhi(PHILOX_A, a0) ^ c3 ^ k1
            c1 = PHILOX_B * a2
            c3 = PHILOX_A * a0
            k0 = k0 + PHILOX_KA
            k1 = k1 + PHILOX_KB
        return c0, c1, c2, c3

    @triton.jit
    def _uniform(x):
        """Triton's uint_to_uniform_float: int32 view, negatives folded, times 2**-31."""
        x = x.to(tl.int32, bitcast=True)
        x = tl.where(x < 0, -x - 1, x)
        return x.to(tl.float32) * 4.6566127342e-10

    @triton.jit
    def _cos(x):
        return tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _sin(x):
        return tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _box_muller(a, b):
        u1 = tl.maximum(_uniform(a), 1.0e-7)
        th = _uniform(b) * 6.283185307179586
        r = tl.sqrt(-2.0 * _libdevice.log(u1))
        return r * _cos(th), r * _sin(th)

    @triton.jit
    def _sign(x):
        """Rademacher z of a lane: -1 where bit 31 of its Philox word is set, else +1 (perturb's docstring)."""
        return tl.where(x.to(tl.int32, bitcast=True) < 0, -1.0, 1.0)

    @triton.jit
    def _z4(c0, c1, k0, k1, MODE: tl.constexpr, DIST: tl.constexpr):
        """z of lanes 0..3 of each counter (4 tensors shaped like the counters; one Philox call each).
        DIST: 0 = gaussian (Box-Muller), 1 = rademacher (the sign bit of each lane's word).

        MODE is for profiling only (bench/bench_sweep.py), never used for training: 1 = no RNG (z a
        cheap function of the counter: the memory and update floor), 2 = Philox without Box-Muller
        (uniforms), 3 = Box-Muller with tl.log2 instead of libdevice's log (measured: no faster)."""
        if MODE == 1:
            f = c0.to(tl.float32) * 1.0e-9
            return f, f + 1.0, f + 2.0, f + 3.0
        x0, x1, x2, x3 = _philox(c0, c1, k0, k1)
        if DIST == 1:
            return _sign(x0), _sign(x1), _sign(x2), _sign(x3)
        if MODE == 2:
            return _uniform(x0), _uniform(x1), _uniform(x2), _uniform(x3)
        if MODE == 3:
            z0, z1 = _box_muller_fast(x0, x1)
            z2, z3 = _box_muller_fast(x2, x3)
            return z0, z1, z2, z3
        z0, z1 = _box_muller(x0, x1)
        z2, z3 = _box_muller(x2, x3)
        return z0, z1, z2, z3

    @triton.jit
    def _box_muller_fast(a, b):
        u1 = tl.maximum(_uniform(a), 1.0e-7)
        th = _uniform(b) * 6.283185307179586
        r = tl.sqrt(-1.3862943611198906 * tl.log2(u1))  # -2 ln u = -2 ln2 log2 u
        return r * _cos(th), r * _sin(th)

    @triton.jit
    def _lane(wp, mp, e, numel, pre, post, show, factor, HAS_MASTER: tl.constexpr, DT: tl.constexpr,
              ALIGNED: tl.constexpr):
        """new = (base + pre) * factor + post for the elements at indices e (any shape); store it.
        HAS_MASTER: 0 = none (new is the weights); 1 = master <- new, weights <- new + show; 2 = the same
        with weights <- cast(cast(new) + show) (SweepPlan.show_on_grid: the shown point about c = cast(new))."""
        if ALIGNED:  # e >= 0 always; the mask is constant over each 4 elements, so loads vectorize
            mask = e < numel
        else:
            mask = (e >= 0) & (e < numel)
        if HAS_MASTER:
            base = tl.load(mp + e, mask=mask, other=0.0)
        else:
            base = tl.load(wp + e, mask=mask, other=0.0).to(tl.float32)
        new = (base + pre) * factor + post
        if HAS_MASTER:
            tl.store(mp + e, new, mask=mask)
            if HAS_MASTER == 2:
                if DT == 1:
                    new = new.to(tl.bfloat16).to(tl.float32)
                elif DT == 2:
                    new = new.to(tl.float16).to(tl.float32)
            new = new + show
        if DT == 0:
            tl.store(wp + e, new, mask=mask)
        elif DT == 1:
            tl.store(wp + e, new.to(tl.bfloat16), mask=mask)
        else:
            tl.store(wp + e, new.to(tl.float16), mask=mask)

    @triton.jit
    def _interleave(v0, v1, v2, v3, BLOCK: tl.constexpr):
        """[BLOCK, 4] tensor whose row i is (v0[i], v1[i], v2[i], v3[i]): the 4 lanes of counter i."""
        return tl.reshape(tl.join(tl.join(v0, v2), tl.join(v1, v3)), [BLOCK, 4])

    @triton.jit
    def _pick(v0, v1, v2, v3, col):
        """The same [BLOCK, 4] tile as _interleave, by broadcasting each lane and selecting by column
        (no reshape: the 4 columns can stay in one thread's registers)."""
        return tl.where(col == 0, v0[:, None], tl.where(col == 1, v1[:, None],
                                                        tl.where(col == 2, v2[:, None], v3[:, None])))

    @triton.jit
    def _sweep_kernel(blk_seg, seg_first, seg_w, seg_m, seg_numel, seg_off, seg_name, seg_decay, keys, coef,
                      keep, NSEEDS: tl.constexpr, HAS_MASTER: tl.constexpr, DT: tl.constexpr,
                      BLOCK: tl.constexpr, VEC: tl.constexpr, MODE: tl.constexpr, ALIGNED: tl.constexpr,
                      DIST: tl.constexpr):
        # The RNG works on counters (4 elements each). VEC = 0 keeps the 4 lanes as separate vectors
        # shaped like the counters: each lane's loads and stores are stride-4 (the 4 lanes cover the
        # same cache lines back to back, but each 32-byte sector is written by 4 partial stores: ncu
        # showed L2 at 99 % with DRAM at 43 %). VEC = 1 (join + reshape) and VEC = 2 (broadcast +
        # select) put them in a [BLOCK, 4] tile so each thread moves 4 consecutive elements. ALIGNED
        # groups (offset, numel multiple of 4, 16-byte pointers) tell the compiler so, for vector loads.
        # Measured on an H100 (1B shape, bf16): with fp32 master, 9.8 ms (lanes) -> 4.5 ms (join,
        # aligned), 92 % of copy bandwidth; without, 3.5 -> 2.3 ms. Unaligned, join and pick are slower
        # than lanes (the 4-element groups straddle vector boundaries), so they keep lanes.
        pid = tl.program_id(0)
        s = tl.load(blk_seg + pid)
        b = pid - tl.load(seg_first + s)
        numel = tl.load(seg_numel + s).to(tl.int32)
        off = tl.load(seg_off + s)
        name = tl.load(seg_name + s)
        factor = tl.where(tl.load(seg_decay + s) != 0, keep, 1.0)
        if DT == 0:
            wp = tl.load(seg_w + s).to(tl.pointer_type(tl.float32))
        elif DT == 1:
            wp = tl.load(seg_w + s).to(tl.pointer_type(tl.bfloat16))
        else:
            wp = tl.load(seg_w + s).to(tl.pointer_type(tl.float16))
        mp = tl.load(seg_m + s).to(tl.pointer_type(tl.float32))  # 0 (unused) without master weights
        # 32-bit index math (the host guarantees HF index < 2**33, so counters fit 31 bits and c1 = 0):
        # int64 address arithmetic was a large share of the instructions of this compute-bound loop.
        i = b * BLOCK + tl.arange(0, BLOCK)
        if ALIGNED:
            wp = tl.multiple_of(wp, 16)
            mp = tl.multiple_of(mp, 16)
            numel = tl.multiple_of(numel, 4)
            e = i * 4
        else:
            e = i * 4 - (off % 4).to(tl.int32)  # element index (inside the segment) of each counter's lane 0
        c0 = ((off // 4).to(tl.int32) + i).to(tl.uint32, bitcast=True)
        c1 = c0 * 0
        zero = tl.zeros([BLOCK], dtype=tl.float32)
        p0, p1, p2, p3 = zero, zero, zero, zero  # pre
        q0, q1, q2, q3 = zero, zero, zero, zero  # post
        r0, r1, r2, r3 = zero, zero, zero, zero  # show
        for k in tl.static_range(NSEEDS):
            kp = keys + (name * NSEEDS + k) * 2
            z0, z1, z2, z3 = _z4(c0, c1, tl.load(kp).to(tl.uint32, bitcast=True),
                                 tl.load(kp + 1).to(tl.uint32, bitcast=True), MODE, DIST)
            a_pre, a_post, a_show = tl.load(coef + 3 * k), tl.load(coef + 3 * k + 1), tl.load(coef + 3 * k + 2)
            p0, p1, p2, p3 = p0 + a_pre * z0, p1 + a_pre * z1, p2 + a_pre * z2, p3 + a_pre * z3
            q0, q1, q2, q3 = q0 + a_post * z0, q1 + a_post * z1, q2 + a_post * z2, q3 + a_post * z3
            if HAS_MASTER:
                r0, r1, r2, r3 = r0 + a_show * z0, r1 + a_show * z1, r2 + a_show * z2, r3 + a_show * z3
        if VEC == 1:
            e4 = e[:, None] + tl.arange(0, 4)[None, :]
            _lane(wp, mp, e4, numel, _interleave(p0, p1, p2, p3, BLOCK), _interleave(q0, q1, q2, q3, BLOCK),
                  _interleave(r0, r1, r2, r3, BLOCK), factor, HAS_MASTER, DT, ALIGNED)
        elif VEC == 2:
            col = tl.arange(0, 4)[None, :]
            _lane(wp, mp, e[:, None] + col, numel, _pick(p0, p1, p2, p3, col), _pick(q0, q1, q2, q3, col),
                  _pick(r0, r1, r2, r3, col), factor, HAS_MASTER, DT, ALIGNED)
        else:
            _lane(wp, mp, e, numel, p0, q0, r0, factor, HAS_MASTER, DT, ALIGNED)
            _lane(wp, mp, e + 1, numel, p1, q1, r1, factor, HAS_MASTER, DT, ALIGNED)
            _lane(wp, mp, e + 2, numel, p2, q2, r2, factor, HAS_MASTER, DT, ALIGNED)
            _lane(wp, mp, e + 3, numel, p3, q3, r3, factor, HAS_MASTER, DT, ALIGNED)

    @triton.jit
    def _opaque(x):
        """x unchanged, through an asm copy the compiler may not duplicate (is_pure=False). Without it
        Triton recomputes the Philox words in the [BLOCK, 128] tile's layout, where every thread holding
        elements of a counter runs that counter's Philox (Triton 3.9 compiling for sm_90a, no GPU needed:
        2 calls a thread for its 16 elements aligned, about 15 unaligned, against 1 with this copy, the words
        then reaching the tile by shuffles or shared memory)."""
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.uint32, is_pure=False, pack=1)

    @triton.jit
    def _signs128(x0, x1, x2, x3, word, bit):
        """rademacher32 z of a [BLOCK, 128] tile from the [BLOCK] words of BLOCK counters: element (c, j) is
        -1 where bit `bit` (0 = least significant) of counter c's word x_`word` is set, else +1, with
        word = j // 32 and bit = j % 32 given as [1, 128] tensors (perturb's docstring)."""
        x = tl.where(word == 0, x0[:, None], tl.where(word == 1, x1[:, None],
                                                      tl.where(word == 2, x2[:, None], x3[:, None])))
        return tl.where(((x >> bit) & 1) != 0, -1.0, 1.0)

    @triton.jit
    def _sweep_kernel_packed(blk_seg, seg_first, seg_w, seg_m, seg_numel, seg_off, seg_name, seg_decay, keys, coef,
                             keep, NSEEDS: tl.constexpr, HAS_MASTER: tl.constexpr, DT: tl.constexpr,
                             BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
        # rademacher32: one Philox call gives 128 elements, so a program takes BLOCK counters as a
        # [BLOCK, 128] tile, row c = the 128 consecutive elements of counter c: the whole tile is
        # 128 * BLOCK consecutive elements, and each row's 128 are contiguous for the loads. Same
        # arguments and block table layout as _sweep_kernel, built on 128-element counters
        # (_pack_group with width 128). ALIGNED groups start on a counter (offset multiple of 128),
        # size multiple of 4, 16-byte pointers: no element before the segment, vector loads.
        # The block-table reads below repeat _sweep_kernel's on purpose: moved into a shared @triton.jit
        # helper they changed _sweep_kernel's compiled code (+200 PTX lines and a shared-memory buffer,
        # Triton 3.9 for sm_90a), and that kernel's speed is measured on GPUs; this copy is not.
        pid = tl.program_id(0)
        s = tl.load(blk_seg + pid)
        b = pid - tl.load(seg_first + s)
        numel = tl.load(seg_numel + s).to(tl.int32)
        off = tl.load(seg_off + s)
        name = tl.load(seg_name + s)
        factor = tl.where(tl.load(seg_decay + s) != 0, keep, 1.0)
        if DT == 0:
            wp = tl.load(seg_w + s).to(tl.pointer_type(tl.float32))
        elif DT == 1:
            wp = tl.load(seg_w + s).to(tl.pointer_type(tl.bfloat16))
        else:
            wp = tl.load(seg_w + s).to(tl.pointer_type(tl.float16))
        mp = tl.load(seg_m + s).to(tl.pointer_type(tl.float32))  # 0 (unused) without master weights
        # 32-bit index math as in _sweep_kernel (host: HF index < 2**33, numel + a block < 2**31).
        i = b * BLOCK + tl.arange(0, BLOCK)  # counters, from the one holding the segment's first element
        j = tl.arange(0, 128)[None, :]  # element of a counter: bit j % 32 of word j // 32
        if ALIGNED:
            wp = tl.multiple_of(wp, 16)
            mp = tl.multiple_of(mp, 16)
            numel = tl.multiple_of(numel, 4)
            e = (i * 128)[:, None] + j
        else:  # the first counter may start before the segment: _lane masks e < 0
            e = (i * 128 - (off % 128).to(tl.int32))[:, None] + j
        c0 = ((off // 128).to(tl.int32) + i).to(tl.uint32, bitcast=True)
        c1 = c0 * 0
        word = j // 32
        bit = (j % 32).to(tl.uint32)
        zero = tl.zeros([BLOCK, 128], dtype=tl.float32)
        pre, post, show = zero, zero, zero
        for k in tl.static_range(NSEEDS):
            kp = keys + (name * NSEEDS + k) * 2
            x0, x1, x2, x3 = _philox(c0, c1, tl.load(kp).to(tl.uint32, bitcast=True),
                                     tl.load(kp + 1).to(tl.uint32, bitcast=True))
            z = _signs128(_opaque(x0), _opaque(x1), _opaque(x2), _opaque(x3), word, bit)
            a_pre, a_post, a_show = tl.load(coef + 3 * k), tl.load(coef + 3 * k + 1), tl.load(coef + 3 * k + 2)
            pre = pre + a_pre * z
            post = post + a_post * z
            if HAS_MASTER:
                show = show + a_show * z
        _lane(wp, mp, e, numel, pre, post, show, factor, HAS_MASTER, DT, ALIGNED)


@dataclass
class _Group:
    """Device tables for the segments of one (weight dtype, master or not) pair."""

    dt: int
    has_master: bool
    aligned: bool  # every segment: offset a multiple of `width`, numel of 4, 16-byte aligned pointers
    width: int  # elements a Philox counter gives: 4 (_sweep_kernel) or 128 (_sweep_kernel_packed)
    block: int  # counters per program the block table was built for (BLOCK_C or BLOCK_C32)
    blocks: int
    blk_seg: torch.Tensor
    tables: tuple[torch.Tensor, ...]  # first, w, m, numel, off, name, decay


@dataclass
class _Packed:
    list_id: int
    fingerprint: tuple
    names: list[str]
    groups: list[_Group]
    device: torch.device
    keys: dict[int, torch.Tensor]  # seed -> [n_names, 2] int32 keys, a few recent seeds
    ok: bool = True  # can_fuse(segments); False: the torch path does this list
    setting: tuple = ()  # (width, counters per program, ALIGN) the tables were built for


def _fingerprint(segments: list[ParamSegment]) -> tuple:
    """len + (pointer, size, offset) of up to 64 evenly spaced segments: cheap for 10^5 segments.

    The cache keys on the list object's id without holding the list: holding it would keep every
    segment's storage alive after the caller dropped it (e.g. weights rebound by param.data = ...).
    """
    step = max(1, len(segments) // 64)
    picks = segments[::step] + segments[-1:]
    return (len(segments),) + tuple((s.tensor.data_ptr(), s.tensor.numel(), s.offset, s.name,
                                      s.master.data_ptr() if s.master is not None else 0) for s in picks)


_CACHE: list[_Packed] = []  # packed tables of the last few segment lists (runners return one list object)


def _block(width: int) -> int:
    """Counters per program of the kernel for `width`-element counters."""
    return BLOCK_C32 if width == 128 else BLOCK_C


def can_fuse(segments: list[ParamSegment], width: int = 4) -> bool:
    """True when every segment is a CUDA tensor of one device in a supported dtype (master fp32)
    and every HF index fits the kernel's 32-bit counters and element indices (the last program of a
    segment reaches up to a block plus a counter past its end). O(len(segments)): cached by fused_sweep."""
    if not segments or not available():
        return False
    dev = segments[0].tensor.device
    room = 4 * BLOCK_C if width == 4 else width * (_block(width) + 1)
    return all(s.tensor.is_cuda and s.tensor.device == dev and s.tensor.dtype in DTYPE_CODE
               and (s.master is None or (s.master.dtype == torch.float32 and s.master.device == dev))
               and s.offset + s.tensor.numel() < MAX_INDEX and s.tensor.numel() < 2**31 - room
               for s in segments)


def _aligned(s: ParamSegment, width: int) -> bool:
    """Offset a multiple of `width` (the segment starts on a counter), size a multiple of 4 and 16-byte
    pointers: the kernel may move 4 elements at once."""
    return (s.offset % width == 0 and s.tensor.numel() % 4 == 0 and s.tensor.data_ptr() % 16 == 0
            and (s.master is None or s.master.data_ptr() % 16 == 0))


def _pack_group(segs: list[ParamSegment], name_idx: dict[str, int], dt: int, has_master: bool, aligned: bool,
                dev: torch.device, width: int) -> _Group:
    """The block table of one group: a program per `_block(width)` counters of `width` elements."""
    block = _block(width)
    per = width * block
    nblk = [(s.offset % width + s.tensor.numel() + per - 1) // per for s in segs]
    first = torch.tensor([0] + nblk[:-1], dtype=torch.int64).cumsum(0)
    blk_seg = torch.repeat_interleave(torch.arange(len(segs), dtype=torch.int32), torch.tensor(nblk))
    i64 = lambda xs: torch.tensor(xs, dtype=torch.int64, device=dev)  # noqa: E731
    tables = (
        first.to(torch.int32).to(dev),
        i64([s.tensor.data_ptr() for s in segs]),
        i64([s.master.data_ptr() if s.master is not None else 0 for s in segs]),
        i64([s.tensor.numel() for s in segs]),
        i64([s.offset for s in segs]),
        torch.tensor([name_idx[s.name] for s in segs], dtype=torch.int32, device=dev),
        torch.tensor([1 if s.decay else 0 for s in segs], dtype=torch.int32, device=dev),
    )
    return _Group(dt, has_master, aligned, width, block, int(sum(nblk)), blk_seg.to(dev), tables)


def _packed(segments: list[ParamSegment], width: int) -> _Packed:
    """The list's device tables for `width`-element counters, built once: per-sweep Python work must not
    grow with the number of segments (TP row shards give one segment per row, 10^5 of them)."""
    fp = _fingerprint(segments)
    setting = (width, _block(width), ALIGN)
    for p in _CACHE:
        if p.list_id == id(segments) and p.fingerprint == fp and p.setting == setting:
            return p
    dev = segments[0].tensor.device
    if not can_fuse(segments, width):
        packed = _Packed(id(segments), fp, [], [], dev, {}, ok=False)
    else:
        names = sorted({s.name for s in segments})
        name_idx = {n: i for i, n in enumerate(names)}
        by_kind: dict[tuple[int, bool, bool], list[ParamSegment]] = {}
        for s in segments:
            if s.tensor.numel():
                key = (DTYPE_CODE[s.tensor.dtype], s.master is not None, ALIGN and _aligned(s, width))
                by_kind.setdefault(key, []).append(s)
        groups = [_pack_group(segs, name_idx, dt, hm, al, dev, width)
                  for (dt, hm, al), segs in sorted(by_kind.items())]
        packed = _Packed(id(segments), fp, names, groups, dev, {})
    packed.setting = setting
    _CACHE.insert(0, packed)
    del _CACHE[4:]
    return packed


def _upload(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """Copy a small host tensor to the GPU without blocking the host: from pageable memory the copy
    waits for the stream, which after a forward left the GPU idle while the host went on (profiled).
    torch's pinned-memory cache keeps the buffer until the copy has run."""
    return t.pin_memory().to(dev, non_blocking=True)


def _keys(p: _Packed, seed: int) -> torch.Tensor:
    if seed not in p.keys:
        ks = [philox_key(seed, n) for n in p.names]
        flat = [k - (1 << 32) if k >= (1 << 31) else k for pair in ks for k in pair]  # uint32 as int32 bits
        p.keys[seed] = _upload(torch.tensor(flat, dtype=torch.int32).view(-1, 2), p.device)
        if len(p.keys) > 8:
            p.keys.pop(next(iter(p.keys)))
    return p.keys[seed]


def plan_coefficients(plan: SweepPlan) -> tuple[list[int], list[list[float]]]:
    """Distinct seeds with a nonzero coefficient (sorted) and their (pre, post, show) coefficients."""
    coef: dict[int, list[float]] = {}
    for slot, terms in enumerate((plan.pre, plan.post, plan.show)):
        for seed, c in terms:
            if c != 0.0:
                coef.setdefault(seed, [0.0, 0.0, 0.0])[slot] += c
    seeds = sorted(coef)
    return seeds, [coef[s] for s in seeds]


def fused_sweep(segments: list[ParamSegment], plan: SweepPlan, _mode: int = 0) -> bool:
    """Apply `plan` to every segment with the Triton kernel; False (nothing done) if it cannot.

    Returns False when the segments are not all CUDA tensors of supported dtypes or the plan has
    more than MAX_SEEDS distinct seeds, so the caller falls back to the torch path. `_mode` is
    for profiling only (see _z4): anything but 0 writes wrong weights.

    Raises:
        ValueError: a profiling `_mode` with rademacher32 (its kernel has no profiling modes).
    """
    if not segments or not available():
        return False
    dist = DIST_CODE[plan.dist]
    if dist == 2 and _mode:
        raise ValueError(f"fused_sweep: profiling mode {_mode} is only in the 4-element kernel, not rademacher32's")
    seeds, coefs = plan_coefficients(plan)
    if len(seeds) > MAX_SEEDS:
        return False
    p = _packed(segments, COUNTER_ELEMS[plan.dist])
    if not p.ok:
        return False
    keys = (torch.stack([_keys(p, s) for s in seeds], dim=1).reshape(-1) if seeds
            else torch.zeros(2, dtype=torch.int32, device=p.device))
    coef = _upload(torch.tensor(coefs or [[0.0, 0.0, 0.0]], dtype=torch.float32).reshape(-1), p.device)
    keep = 1.0 - plan.decay  # in float64 here, as the torch path's python scalar
    with torch.cuda.device(p.device):
        for g in p.groups:
            # HAS_MASTER 2: the shown point about cast(master) (_lane); True/False keep the kernels compiled before it
            has_master = 2 if g.has_master and plan.show_on_grid and g.dt != 0 else g.has_master
            if dist == 2:
                _sweep_kernel_packed[(g.blocks,)](g.blk_seg, *g.tables, keys, coef, keep, NSEEDS=len(seeds),
                                                  HAS_MASTER=has_master, DT=g.dt, BLOCK=g.block, ALIGNED=g.aligned,
                                                  num_warps=NUM_WARPS)
                continue
            _sweep_kernel[(g.blocks,)](g.blk_seg, *g.tables, keys, coef, keep, NSEEDS=len(seeds),
                                       HAS_MASTER=has_master, DT=g.dt, BLOCK=g.block, MODE=_mode, ALIGNED=g.aligned,
                                       VEC=(1 if g.aligned else 0) if VEC is None else VEC,
                                       DIST=dist, num_warps=NUM_WARPS)
    return True
