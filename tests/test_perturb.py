import torch

from mezo_elastic.zo.perturb import (
    ParamSegment,
    SweepPlan,
    philox4x32,
    step_seed,
    sweep,
    z_range,
)


def test_philox_known_answer():
    # Random123's published answer for philox4x32-10 with counter 0 and key 0
    out = [int(x) for x in philox4x32(torch.tensor([0]), 0, 0)]
    assert out == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_z_is_a_function_of_seed_name_index_only():
    z = z_range(11, "layer.weight", 0, 10_000)
    assert torch.equal(z_range(11, "layer.weight", 1234, 77), z[1234:1311])  # any offset, any length
    assert not torch.equal(z_range(12, "layer.weight", 0, 100), z[:100])
    assert not torch.equal(z_range(11, "other.weight", 0, 100), z[:100])
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05


def test_sweep_is_chunk_independent_and_matches_formula():
    w0 = torch.randn(1000)
    a, b = w0.clone(), w0.clone()
    plan = SweepPlan(pre=[(1, 0.5)], post=[(2, -0.25), (1, 0.1)], decay=0.01)
    sweep([ParamSegment(a, "w")], plan, chunk_elems=1000)
    sweep([ParamSegment(b, "w")], plan, chunk_elems=37)
    assert torch.equal(a, b)
    z1, z2 = z_range(1, "w", 0, 1000), z_range(2, "w", 0, 1000)
    expect = (1 - 0.01) * (w0 + 0.5 * z1) + (-0.25 * z2 + 0.1 * z1)
    assert torch.allclose(a, expect, atol=1e-6)


def test_segment_offset_maps_a_slice_of_a_named_parameter():
    # an engine that holds rows 10.. of "w" must see the same z as the full parameter there
    full, part = torch.zeros(100), torch.zeros(60)
    sweep([ParamSegment(full, "w")], SweepPlan(post=[(5, 1.0)]))
    sweep([ParamSegment(part, "w", offset=40)], SweepPlan(post=[(5, 1.0)]))
    assert torch.equal(full[40:], part)


def test_perturb_unperturb_restores_fp32_weights():
    w0 = torch.randn(5000) * 0.02
    w = w0.clone()
    seg = [ParamSegment(w, "w")]
    sweep(seg, SweepPlan(post=[(3, 1e-3)]))
    sweep(seg, SweepPlan(post=[(3, -2e-3)]))
    sweep(seg, SweepPlan(post=[(3, 1e-3)]))
    # in place, fp32 rounding only: within 2 ulps of the largest perturbed magnitude
    ulp = torch.finfo(torch.float32).eps * (w0.abs().max().item() + 1e-3 * 6)
    assert (w - w0).abs().max().item() <= 2 * ulp
    # with an fp32 master copy the restore is exact
    m = w0.clone()
    w2 = w0.clone()
    seg = [ParamSegment(w2, "w", master=m)]
    sweep(seg, SweepPlan(show=[(3, 1e-3)]))
    sweep(seg, SweepPlan(show=[(3, -1e-3)]))
    sweep(seg, SweepPlan(show=[]))
    assert torch.equal(w2, w0)


def test_step_seeds_differ_by_step_and_slot_and_not_by_anything_else():
    assert step_seed(0, 1) == step_seed(0, 1)
    assert len({step_seed(0, t, s) for t in range(50) for s in range(4)}) == 200
