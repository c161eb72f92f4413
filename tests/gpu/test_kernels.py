"""The fused Triton sweep against perturb's torch implementation (same z, same sweep semantics)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("triton", reason="needs triton")

from mezo_elastic.zo import triton_sweep as kernels  # noqa: E402
from mezo_elastic.zo.perturb import (  # noqa: E402
    ParamSegment,
    SweepCounter,
    SweepPlan,
    sweep,
    z_range,
)

DEV = torch.device("cuda", 0)
Z_ATOL = 2e-5  # approximate sin/cos (|err| < 1e-6) times the Box-Muller radius (< 6)


@pytest.mark.parametrize("seed,name,offset,count", [
    (0, "w", 0, 4096), (123456789, "model.layers.0.mlp.up_proj.weight", 3, 1001),
    (2**62 + 5, "lm_head.weight", 10**9 + 1, 777), (42, "x", 5, 1),
])
def test_kernel_z_equals_torch_z(seed, name, offset, count):
    """z of (seed, name, index) from the kernel is perturb.z_range's, wherever the segment starts."""
    w = torch.zeros(count, dtype=torch.float32, device=DEV)
    assert kernels.fused_sweep([ParamSegment(w, name, offset)], SweepPlan(post=[(seed, 1.0)]))
    ref = z_range(seed, name, offset, count)
    err = (w.cpu() - ref).abs().max().item()
    assert err < Z_ATOL, f"max |z_kernel - z_torch| = {err:.2e}"


def _segments(dtype, master: bool, sizes=(1, 3, 4, 5, 1000, 4097, 70001)):
    g = torch.Generator().manual_seed(0)
    segs = []
    for i, n in enumerate(sizes):
        t = (torch.randn(n, generator=g) * 0.02).to(dtype).to(DEV)
        m = t.float().clone() if master else None
        segs.append(ParamSegment(t, f"p{i % 3}", offset=(i * 7919) % 50 + (n if i % 3 == 0 else 0), decay=i % 2 == 0,
                                 master=m))
    return segs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("master", [False, True])
def test_fused_sweep_matches_torch_sweep(dtype, master):
    """restore + update + next perturbation with decay, on many segment sizes in one launch."""
    plan = SweepPlan(pre=[(11, 1e-3)], post=[(11, -2e-4), (12, 1e-3)], decay=1e-2,
                     show=[(13, 1e-3)] if master else [])
    a, b = _segments(dtype, master), _segments(dtype, master)
    before = SweepCounter.count
    sweep(a, plan, fused=True)
    sweep(b, plan, fused=False)
    assert SweepCounter.count == before + 2
    _assert_within_rounding(a, b, dtype, master)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dist", ["gaussian", "rademacher", "rademacher32"])
def test_fused_sweep_shows_points_about_the_clean_weights(dtype, dist):
    """SweepPlan.show_on_grid (mezo.perturb_about=weights) in the kernel: the torch path's weights and masters
    (bit for bit with rademacher's exact z), and +eps z / -eps z shown the same distance either side of
    cast(master) on large, off-grid masters wherever no point crosses a power of two."""
    def make():
        g = torch.Generator().manual_seed(2)
        segs = []
        for i, n in enumerate([4099, 517, 70004]):
            m = torch.randn(n, generator=g) * 0.4
            segs.append(ParamSegment(m.to(dtype).to(DEV), f"q{i}", offset=8 * i, master=m.to(DEV)))
        return segs

    update = dict(post=[(31, -2e-4), (32, 1e-3)], show_on_grid=True)
    a, b = _fused_and_torch(make, dict(update, show=[(33, 1e-3)]), dist)
    if dist == "gaussian":
        _assert_within_rounding(a, b, dtype, True)
    else:
        for sa, sb in zip(a, b):
            assert torch.equal(sa.tensor, sb.tensor) and torch.equal(sa.master, sb.master), sa.name
    plus, minus = make(), make()
    assert kernels.fused_sweep(plus, SweepPlan(show=[(33, 1e-3)], show_on_grid=True, dist=dist))
    assert kernels.fused_sweep(minus, SweepPlan(show=[(33, -1e-3)], show_on_grid=True, dist=dist))
    uneven = total = 0
    for sp, sm in zip(plus, minus):
        c, p, m = sp.master.to(dtype).float(), sp.tensor.float(), sm.tensor.float()
        binade = [torch.floor(torch.log2(t.abs())) * torch.sign(t) for t in (c, p, m)]
        keep = (binade[0] == binade[1]) & (binade[0] == binade[2]) & (c != 0)
        uneven += int(((p - c) != (c - m))[keep].sum())
        total += int(keep.sum())
    assert total > 60000 and uneven == 0, f"{dtype} {dist}: {uneven} of {total} points round unevenly"


def _assert_within_rounding(a, b, dtype, master: bool) -> None:
    """Segments `a` (fused kernel) within a few ulps of `b` (torch path), and their masters close if `master`."""
    for sa, sb in zip(a, b):
        d = (sa.tensor.float() - sb.tensor.float()).abs()
        ulp = sb.tensor.float().abs() * {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype] + 1e-7
        assert bool((d <= ulp).all()), f"{sa.name} {dtype}: max |d| {d.max().item():.3e}"
        if master:
            assert torch.allclose(sa.master, sb.master, rtol=1e-5, atol=1e-7)


def _fused_and_torch(make, plan: dict, dist: str) -> tuple[list, list]:
    """Two copies of make()'s segments swept by `plan` (a SweepPlan's fields) with `dist`: fused, then torch."""
    a, b = make(), make()
    sweep(a, SweepPlan(**plan, dist=dist), fused=True)
    sweep(b, SweepPlan(**plan, dist=dist), fused=False)
    return a, b


def test_perturb_and_restore_round_trip_fp32():
    """+eps z then -eps z returns fp32 weights to within rounding (z regenerated, never stored)."""
    w = torch.randn(100_003, device=DEV)
    ref = w.clone()
    seg = [ParamSegment(w, "w")]
    sweep(seg, SweepPlan(post=[(5, 1e-3)]))
    assert not torch.equal(w, ref)
    sweep(seg, SweepPlan(post=[(5, -1e-3)]))
    assert (w - ref).abs().max().item() < 1e-6


def test_too_many_seeds_falls_back_to_torch():
    w = torch.zeros(10, device=DEV)
    plan = SweepPlan(post=[(s, 1.0) for s in range(kernels.MAX_SEEDS + 1)])
    assert not kernels.fused_sweep([ParamSegment(w, "w")], plan)
    sweep([ParamSegment(w, "w")], plan)  # torch path still does it
    ref = sum(z_range(s, "w", 0, 10) for s in range(kernels.MAX_SEEDS + 1))
    assert torch.allclose(w.cpu(), ref, atol=1e-5)


def _mixed_segments(dtype, master: bool):
    """Unaligned segments (odd offsets and sizes) and aligned ones (offset, size multiples of 4)."""
    segs = _segments(dtype, master)
    g = torch.Generator().manual_seed(1)
    for i, (n, off) in enumerate([(4096, 0), (70004, 8), (64, 4096)]):
        t = (torch.randn(n, generator=g) * 0.02).to(dtype).to(DEV)
        segs.append(ParamSegment(t, f"a{i}", off, decay=True, master=t.float().clone() if master else None))
    return segs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("master", [False, True])
@pytest.mark.parametrize("vec,align", [(None, True), (0, True), (1, False), (1, True), (2, False), (2, True)])
def test_every_lane_layout_writes_identical_weights(dtype, master, vec, align, monkeypatch):
    """The layouts (kernels.VEC) and the aligned fast path (kernels.ALIGN) only change how elements
    move: the same bits as VEC=0 without it, on odd sizes and offsets (masked edges, counters
    straddling segment starts) and on aligned segments."""
    plan = SweepPlan(pre=[(21, 1e-3)], post=[(21, -2e-4), (22, 1e-3)], decay=1e-2,
                     show=[(23, 1e-3)] if master else [])
    _same_bits_under(monkeypatch, dtype, master, plan, dict(VEC=0, ALIGN=False), dict(VEC=vec, ALIGN=align), "layouts")


def _same_bits_under(monkeypatch, dtype, master, plan, first: dict, second: dict, what: str) -> None:
    """_mixed_segments swept by `plan` with the kernel settings `first`, then `second` (module attributes of
    kernels): the same weights (and masters) bit for bit."""
    out = []
    for settings in (first, second):
        for k, v in settings.items():
            monkeypatch.setattr(kernels, k, v)
        segs = _mixed_segments(dtype, master)
        assert kernels.fused_sweep(segs, plan)
        out.append(segs)
    for sa, sb in zip(*out):
        assert torch.equal(sa.tensor, sb.tensor), f"{sa.name} {dtype}: {what} differ"
        if master:
            assert torch.equal(sa.master, sb.master)


def test_cached_tables_follow_master_buffers():
    """A new list over the same weights but other master buffers must not reuse the old tables
    (Python reuses a freed list's id; the tables would point at the old masters)."""
    w = torch.zeros(4096, device=DEV, dtype=torch.bfloat16)
    m1 = torch.zeros(4096, device=DEV)
    assert kernels.fused_sweep([ParamSegment(w, "w", master=m1)], SweepPlan(post=[(1, 1.0)]))
    m2 = torch.zeros(4096, device=DEV)
    assert kernels.fused_sweep([ParamSegment(w, "w", master=m2)], SweepPlan(post=[(1, 1.0)]))
    assert torch.equal(m1, m2) and m2.abs().sum() > 0


@pytest.mark.parametrize("seed,name,offset,count", [
    (0, "w", 0, 4096), (123456789, "model.layers.0.mlp.up_proj.weight", 3, 1001),
    (2**62 + 5, "lm_head.weight", 10**9 + 1, 777), (42, "x", 5, 1), (7, "y", 8, 70001),
])
def test_kernel_rademacher_z_is_the_cpu_z_bit_for_bit(seed, name, offset, count):
    """Rademacher z (the sign bit of each lane's Philox word) from the kernel equals the CPU path's
    exactly, on aligned and unaligned segments."""
    w = torch.zeros(count, dtype=torch.float32, device=DEV)
    assert kernels.fused_sweep([ParamSegment(w, name, offset)], SweepPlan(post=[(seed, 1.0)], dist="rademacher"))
    assert torch.equal(w.cpu(), z_range(seed, name, offset, count, dist="rademacher"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("master", [False, True])
def test_fused_rademacher_sweep_matches_torch_sweep(dtype, master):
    """A full rademacher sweep (restore + update + next, decay) against the torch path; with only
    post terms and no decay the kernel's fp32 result is bit-identical (z = +-1: products are exact)."""
    plan = dict(pre=[(11, 1e-3)], post=[(11, -2e-4), (12, 1e-3)], decay=1e-2, show=[(13, 1e-3)] if master else [])
    _assert_within_rounding(*_fused_and_torch(lambda: _segments(dtype, master), plan, "rademacher"), dtype, False)
    exact = dict(post=[(21, 1e-3), (22, -5e-4)])
    a, b = _fused_and_torch(lambda: _segments(torch.float32, False), exact, "rademacher")
    assert all(torch.equal(sa.tensor.cpu(), sb.tensor.cpu()) for sa, sb in zip(a, b))


def test_gaussian_and_rademacher_differ_and_gaussian_is_unchanged():
    """The DIST constexpr leaves the gaussian kernel's z as before (within the sin/cos tolerance)."""
    g = torch.zeros(4096, device=DEV)
    r = torch.zeros(4096, device=DEV)
    assert kernels.fused_sweep([ParamSegment(g, "w")], SweepPlan(post=[(9, 1.0)]))
    assert kernels.fused_sweep([ParamSegment(r, "w")], SweepPlan(post=[(9, 1.0)], dist="rademacher"))
    assert (g.cpu() - z_range(9, "w", 0, 4096)).abs().max().item() < Z_ATOL
    assert set(r.unique().tolist()) == {-1.0, 1.0} and not torch.equal(g.sign(), r)


@pytest.mark.parametrize("seed,name,offset,count", [
    (0, "w", 0, 4096), (123456789, "model.layers.0.mlp.up_proj.weight", 3, 1001),
    (2**62 + 5, "lm_head.weight", 10**9 + 1, 777), (42, "x", 5, 1), (7, "y", 8, 70001),
    (9, "z", 128, 2048), (9, "z", 127, 130), (3, "q", 2**32 + 640, 300),
])
def test_kernel_rademacher32_z_is_the_cpu_z_bit_for_bit(seed, name, offset, count):
    """rademacher32 z (a sign per bit of the 4 words, 128 elements a counter) from the packed kernel equals
    the CPU path's exactly, whether the segment starts on a counter (offset multiple of 128: the aligned
    launch) or inside one (the first and last counters partly outside the segment)."""
    w = torch.zeros(count, dtype=torch.float32, device=DEV)
    assert kernels.fused_sweep([ParamSegment(w, name, offset)], SweepPlan(post=[(seed, 1.0)], dist="rademacher32"))
    assert torch.equal(w.cpu(), z_range(seed, name, offset, count, dist="rademacher32"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("master", [False, True])
def test_fused_rademacher32_sweep_matches_torch_sweep(dtype, master):
    """A full rademacher32 sweep (restore + update + next, decay) against the torch path on unaligned and
    aligned segments; with only post (and show) terms and no decay fp32 is bit-identical (z = +-1)."""
    plan = dict(pre=[(11, 1e-3)], post=[(11, -2e-4), (12, 1e-3)], decay=1e-2, show=[(13, 1e-3)] if master else [])
    _assert_within_rounding(*_fused_and_torch(lambda: _mixed_segments(dtype, master), plan, "rademacher32"),
                            dtype, master)
    exact = dict(post=[(21, 1e-3), (22, -5e-4)], show=[(23, 2e-3)] if master else [])
    a, b = _fused_and_torch(lambda: _mixed_segments(torch.float32, master), exact, "rademacher32")
    assert all(torch.equal(sa.tensor.cpu(), sb.tensor.cpu()) for sa, sb in zip(a, b))
    if master:
        assert all(torch.equal(sa.master.cpu(), sb.master.cpu()) for sa, sb in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("master", [False, True])
def test_rademacher32_aligned_launch_writes_identical_weights(dtype, master, monkeypatch):
    """kernels.ALIGN only changes how the packed kernel moves elements (segments starting on a counter
    get their own launch with vector hints): the same bits as with every segment on the unaligned path."""
    plan = SweepPlan(pre=[(21, 1e-3)], post=[(21, -2e-4), (22, 1e-3)], decay=1e-2,
                     show=[(23, 1e-3)] if master else [], dist="rademacher32")
    _same_bits_under(monkeypatch, dtype, master, plan, dict(ALIGN=False), dict(ALIGN=True), "aligned launches")


def test_one_segment_list_takes_both_geometries():
    """The same list swept with rademacher (4-element counters) then rademacher32 (128) gets a block table
    for each (the cache keys on the geometry), and rademacher32's profiling modes are refused."""
    w = torch.zeros(5000, device=DEV)
    segs = [ParamSegment(w, "w", 3)]
    for dist in ("rademacher", "rademacher32", "rademacher"):
        w.zero_()
        assert kernels.fused_sweep(segs, SweepPlan(post=[(9, 1.0)], dist=dist))
        assert torch.equal(w.cpu(), z_range(9, "w", 3, 5000, dist=dist))
    assert not torch.equal(z_range(9, "w", 3, 5000, dist="rademacher"), z_range(9, "w", 3, 5000, dist="rademacher32"))
    with pytest.raises(ValueError, match="profiling mode"):
        kernels.fused_sweep(segs, SweepPlan(post=[(9, 1.0)], dist="rademacher32"), _mode=1)
