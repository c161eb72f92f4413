"""The batched sweep and both Philox paths (compiled C, torch ops) against the frozen definition of
z and of a sweep (tests/zref.py, the per-tensor torch code every earlier step log was made with)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import zref

from mezo_elastic.zo.perturb import ParamSegment, SweepPlan, sweep, z_range
from mezo_elastic.zo.zgen import native, philox_torch

HAVE_CC = native.library() is not None
PATHS = [pytest.param(True, marks=pytest.mark.skipif(not HAVE_CC, reason=f"no compiled path: {native.why_not()}")),
         False]
CASES = [(0, "w", 0, 4096), (123456789, "model.layers.0.mlp.up_proj.weight", 3, 1001),
         (2**62 + 5, "lm_head.weight", 10**9 + 1, 777), (42, "x", 5, 1), (7, "y", 2**35 + 3, 4099)]


@pytest.mark.parametrize("use_native", PATHS)
@pytest.mark.parametrize("seed,name,start,count", CASES)
def test_gaussian_z_is_bit_identical_to_the_definition(use_native, seed, name, start, count):
    assert torch.equal(z_range(seed, name, start, count, native_ok=use_native), zref.z_range(seed, name, start, count))


@pytest.mark.skipif(not HAVE_CC, reason="no compiled path")
def test_compiled_words_equal_torch_words_and_known_answer():
    ctr = torch.tensor([0, 1, 2**32 - 1, 2**32, 2**40 + 17, 2**62 + 3])
    for k0, k1 in [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0x12345678, 0x9ABCDEF0)]:
        ranges = torch.tensor([[int(c), 1, k0, k1, i] for i, c in enumerate(ctr)], dtype=torch.int64).T.contiguous()
        out = torch.zeros(4 * len(ctr), dtype=torch.int32)
        native.fill("philox_words", ranges, [out])
        mine = (out.to(torch.int64) & 0xFFFFFFFF).view(-1, 4)
        assert torch.equal(mine, torch.stack(philox_torch.philox4x32(ctr, k0, k1), 1))
        assert torch.equal(mine, torch.stack(zref.philox4x32(ctr, k0, k1), 1))
    assert philox_torch.philox4x32(torch.tensor([0]), 0, 0)[0].item() == 0x6627E8D5  # Random123's answer


def test_gaussian_tails_many_elements_both_paths():
    """2**20 elements: every u1 floor (clamp) and large |z| the definition produces, equal bit for bit."""
    ref = zref.z_range(99, "big", 5, 1 << 20)
    assert ref.abs().max() > 4.5  # the tail is in the sample
    for use_native in ([True, False] if HAVE_CC else [False]):
        assert torch.equal(z_range(99, "big", 5, 1 << 20, native_ok=use_native), ref)


@pytest.mark.parametrize("use_native", PATHS)
def test_rademacher_is_the_top_bit_of_each_lane(use_native):
    z = z_range(3, "w", 6, 1000, dist="rademacher", native_ok=use_native)
    words = torch.stack(philox_torch.philox4x32(torch.arange(1, 253), *zref.philox_key(3, "w")), 1).reshape(-1)
    expect = torch.where(words >= 2**31, -1.0, 1.0)[6 - 4 : 6 - 4 + 1000]
    assert torch.equal(z, expect)
    assert abs(z.mean().item()) < 0.1 and set(z.unique().tolist()) == {-1.0, 1.0}


def _segments(dtype, master: bool, ref: bool, sizes=(1, 3, 4, 5, 1000, 4097, 70001, 3, 150_000)):
    """Many sizes and odd offsets (pieces that share batches, straddle counters and batch edges)."""
    cls = zref.ParamSegment if ref else ParamSegment
    g = torch.Generator().manual_seed(0)
    segs = []
    for i, n in enumerate(sizes):
        t = (torch.randn(n, generator=g) * 0.02).to(dtype)
        segs.append(cls(t, f"p{i % 4}", offset=(i * 7919) % 50 + (n if i % 3 == 0 else 0), decay=i % 2 == 0,
                        master=t.float().clone() if master else None))
    return segs


@pytest.mark.parametrize("use_native", PATHS)
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False),
                                          (torch.bfloat16, True), (torch.float16, False), (torch.float64, False)])
@pytest.mark.parametrize("chunk", [1 << 20, 1000, 37])
def test_sweep_is_bit_identical_to_the_definition(use_native, dtype, master, chunk, monkeypatch):
    """restore + update + next perturbation with decay, every dtype, batched or not, both paths."""
    from mezo_elastic.zo import cpu_sweep

    monkeypatch.setattr(cpu_sweep.native, "library", (lambda: native._STATE.get("lib")) if use_native else lambda: None)
    terms = dict(pre=[(11, 1e-3)], post=[(11, -2e-4), (12, 1e-3), (11, 0.0)], decay=1e-2,
                 show=[(13, 1e-3), (11, 5e-4)] if master else [])
    sizes = (1, 3, 4, 5, 1000, 4097, 70001, 3, 150_000) if chunk > 37 else (1, 3, 4, 5, 1000, 3, 411)
    a, b = _segments(dtype, master, False, sizes), _segments(dtype, master, True, sizes)
    sweep(a, SweepPlan(**terms), chunk_elems=chunk)
    zref.sweep(b, zref.SweepPlan(**terms), chunk_elems=chunk)
    for sa, sb in zip(a, b):
        assert torch.equal(sa.tensor, sb.tensor), f"{sa.name} n={sa.tensor.numel()}"
        if master:
            assert torch.equal(sa.master, sb.master)


def test_forced_torch_path_env_gives_the_same_sweep_in_a_fresh_process(tmp_path):
    """MEZO_ELASTIC_NATIVE=0, a machine whose compiler fails (CC=/bin/false) and the default give the
    same weights; the first two say why they use torch ops."""
    code = ("import torch,sys;from mezo_elastic.zo.perturb import *;from mezo_elastic.zo.zgen import native;"
            "w=torch.zeros(100003);sweep([ParamSegment(w,'w',3)],SweepPlan(post=[(5,1.0),(6,-.5)],decay=.1));"
            "torch.save(w,sys.argv[1]);print(native.why_not())")
    outs = []
    for i, extra in enumerate(({"MEZO_ELASTIC_NATIVE": "0"}, {"CC": "/bin/false"}, {})):
        path = tmp_path / f"w{i}.pt"
        env = dict(os.environ, MEZO_ELASTIC_CACHE=str(tmp_path / f"cache{i}"), **extra)
        r = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True)
        outs.append((torch.load(path), r.stdout.strip()))
    assert outs[0][1] == "MEZO_ELASTIC_NATIVE=0"
    assert outs[1][1].startswith("compiling philox.c with /bin/false failed")
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][0], outs[2][0])
    if HAVE_CC:
        assert outs[2][1] == "None" and list((tmp_path / "cache2").glob("philox-*.so"))


@pytest.mark.skipif(not HAVE_CC, reason="no compiled path")
def test_fill_split_over_threads_gives_the_same_z():
    """Above native.MIN_PARALLEL counters the fill is cut over threads (ranges cut mid-way)."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        segs = [ParamSegment(torch.zeros(n), f"t{i}", offset=i) for i, n in enumerate((50_001, 200_003, 7))]
        sweep(segs, SweepPlan(post=[(4, 1.0)]), chunk_elems=1 << 20)
        torch.set_num_threads(1)
        for s in segs:
            assert torch.equal(s.tensor, zref.z_range(4, s.name, s.offset, s.tensor.numel()))
    finally:
        torch.set_num_threads(old)


# rademacher32: 128 elements a Philox counter, a sign per bit (perturb's docstring).
RANGES32 = [(0, 1), (5, 133), (127, 129), (1000, 5000), (128, 256), (2**35 + 77, 2**35 + 300)]


def _rademacher32_by_definition(seed: int, name: str, start: int, stop: int) -> torch.Tensor:
    """The definition, element by element in Python, on the frozen Philox words of tests/zref.py."""
    first = start // 128
    words = torch.stack(zref.philox4x32(torch.arange(first, (stop + 127) // 128), *zref.philox_key(seed, name)), 1)
    words = words.tolist()
    out = []
    for i in range(start, stop):
        word = words[i // 128 - first][(i % 128) // 32]
        out.append(-1.0 if (word >> (i % 32)) & 1 else 1.0)
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("use_native", PATHS)
@pytest.mark.parametrize("start,stop", RANGES32)
def test_rademacher32_is_every_bit_of_each_word(use_native, start, stop):
    """Partial counters at both ends (starts and ends anywhere in a counter's 128 elements)."""
    z = z_range(17, "model.layers.0.mlp.up_proj.weight", start, stop - start, dist="rademacher32",
                native_ok=use_native)
    assert torch.equal(z, _rademacher32_by_definition(17, "model.layers.0.mlp.up_proj.weight", start, stop))


@pytest.mark.skipif(not HAVE_CC, reason="no compiled path")
def test_rademacher32_compiled_equals_torch_ops_and_is_balanced():
    for start, stop in RANGES32:
        a = z_range(5, "w", start, stop - start, dist="rademacher32", native_ok=True)
        assert torch.equal(a, z_range(5, "w", start, stop - start, dist="rademacher32", native_ok=False))
    big = z_range(5, "w", 3, 1 << 16, dist="rademacher32", native_ok=True)
    assert torch.equal(big, z_range(5, "w", 3, 1 << 16, dist="rademacher32", native_ok=False))
    assert set(big.unique().tolist()) == {-1.0, 1.0} and abs(big.mean().item()) < 0.02  # 2**16 signs: 4 sigma = 0.016
    assert not torch.equal(big, z_range(5, "w", 3, 1 << 16, dist="rademacher"))  # other z than rademacher's


@pytest.mark.parametrize("use_native", PATHS)
def test_rademacher32_chunked_equals_whole(use_native):
    """z of [start, stop) cut anywhere (mid-counter, mid-word, on boundaries) is the whole range's z."""
    whole = z_range(8, "w", 61, 1000, dist="rademacher32", native_ok=use_native)
    for cuts in ([61, 62, 189, 190, 256, 1061], [61, 64, 128, 300, 557, 1061], [61, 1060, 1061]):
        parts = [z_range(8, "w", a, b - a, dist="rademacher32", native_ok=use_native) for a, b in zip(cuts, cuts[1:])]
        assert torch.equal(torch.cat(parts), whole)


@pytest.mark.parametrize("use_native", PATHS)
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("chunk", [1 << 20, 37])
def test_rademacher32_sweep_is_the_per_tensor_sweep(use_native, dtype, master, chunk, monkeypatch):
    """The batched sweep on 128-element counters (pieces padded to whole counters, batches of at least
    256 elements when chunk_elems is smaller) against the frozen per-tensor sweep fed rademacher32 z."""
    from mezo_elastic.zo import cpu_sweep

    monkeypatch.setattr(cpu_sweep.native, "library", (lambda: native._STATE.get("lib")) if use_native else lambda: None)
    monkeypatch.setattr(zref, "z_range", lambda seed, name, start, count, device="cpu":
                        z_range(seed, name, start, count, device, dist="rademacher32", native_ok=False))
    terms = dict(pre=[(11, 1e-3)], post=[(11, -2e-4), (12, 1e-3)], decay=1e-2, show=[(13, 1e-3)] if master else [])
    sizes = (1, 3, 4, 5, 127, 129, 1000, 4097, 3, 20_001) if chunk > 37 else (1, 3, 4, 5, 127, 129, 1000, 3, 411)
    a, b = _segments(dtype, master, False, sizes), _segments(dtype, master, True, sizes)
    sweep(a, SweepPlan(**terms, dist="rademacher32"), chunk_elems=chunk)
    zref.sweep(b, zref.SweepPlan(**terms))  # per tensor: its own chunking changes no bit
    for sa, sb in zip(a, b):
        assert torch.equal(sa.tensor, sb.tensor), f"{sa.name} n={sa.tensor.numel()}"
        if master:
            assert torch.equal(sa.master, sb.master)


@pytest.mark.skipif(not HAVE_CC, reason="no compiled path")
def test_rademacher32_fill_split_over_threads_gives_the_same_z():
    """Past native.MIN_PARALLEL elements (1024 counters of 128) the fill is cut over threads."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        segs = [ParamSegment(torch.zeros(n), f"t{i}", offset=i * 45) for i, n in enumerate((150_001, 70_003, 7))]
        sweep(segs, SweepPlan(post=[(4, 1.0)], dist="rademacher32"), chunk_elems=1 << 20)
        for s in segs:
            assert torch.equal(s.tensor, z_range(4, s.name, s.offset, s.tensor.numel(), dist="rademacher32",
                                                 native_ok=False))
    finally:
        torch.set_num_threads(old)
