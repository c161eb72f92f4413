"""mezo.perturb_about: where the shown point's rounding is centred with fp32 masters in a 16-bit dtype.

master (today's default): weights = cast(master + eps z); weights: cast(cast(master) + eps z), so the points at
+eps z and -eps z round to the same distance either side of the clean weights the model shows.
"""

import pytest
import torch

from mezo_elastic.config import MezoConfig
from mezo_elastic.errors import ConfigError
from mezo_elastic.zo.optimizer import MezoOptimizer, StepRecord
from mezo_elastic.zo.perturb import ParamSegment, SweepPlan, sweep


def _segments(dtype: torch.dtype) -> list[ParamSegment]:
    """Weights as large as a real model's largest (|w| up to ~1: a bf16 ulp of up to 7.8e-3 > eps), in several
    segments of one HF parameter name each; masters off the weights' grid (a trained master is)."""
    g = torch.Generator().manual_seed(0)
    segs = []
    for i, n in enumerate([4099, 517, 65536 + 3]):
        master = torch.randn(n, generator=g) * 0.4
        segs.append(ParamSegment(master.to(dtype), f"layer.{i}.weight", master=master.clone()))
    return segs


def _shown(segs: list[ParamSegment], about: str, scale: float) -> list[torch.Tensor]:
    opt = MezoOptimizer(segs, MezoConfig(eps=1e-3, perturb_about=about), master_weights=False)
    opt.master = True  # the segments carry their (off-grid) masters already
    opt.perturb(seed=7, scale=scale)
    return [s.tensor.float().clone() for s in segs]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weights_about_puts_both_points_symmetric_about_the_clean_weights(dtype):
    clean = [s.master.to(dtype).float() for s in _segments(dtype)]
    for about, want_symmetric in (("weights", True), ("master", False)):
        plus = _shown(_segments(dtype), about, +1.0)
        minus = _shown(_segments(dtype), about, -1.0)
        asym = total = 0
        for c, p, m in zip(clean, plus, minus):
            # a point that crosses a power of two (or zero) has another ulp on each side: not symmetric by
            # construction; every other one must be
            binade = [torch.floor(torch.log2(t.abs())) * torch.sign(t) for t in (c, p, m)]
            same_binade = (binade[0] == binade[1]) & (binade[0] == binade[2]) & (c != 0)
            asym += int(((p - c) != (c - m))[same_binade].sum())
            total += int(same_binade.sum())
        if want_symmetric:
            assert asym == 0, f"{dtype} about weights: {asym} of {total} elements round unevenly"
        else:  # today's rounding about the off-grid master: many do (what bench/g_noise.py measured)
            assert asym > total // 10, f"{dtype} about master: only {asym} of {total} uneven"


def test_weights_about_leaves_the_master_and_the_clean_weights_alone():
    """The rounding centre changes the points shown, never the master's update or the clean weights."""
    out = {}
    for about in ("master", "weights"):
        segs = _segments(torch.bfloat16)
        opt = MezoOptimizer(segs, MezoConfig(eps=1e-3, lr=1e-3, perturb_about=about), master_weights=False)
        opt.master = True
        opt.perturb(seed=3)
        rec = StepRecord(step=0, seeds=[3], grads=[2.5], lr=1e-3, weight_decay=0.0)
        opt.update(rec, next_seed=4)  # restore + update + next point, one sweep
        opt.clean()
        out[about] = [(s.master.clone(), s.tensor.clone()) for s in segs]
    for (ma, wa), (mb, wb) in zip(out["master"], out["weights"]):
        assert torch.equal(ma, mb) and torch.equal(wa, wb)
        assert torch.equal(wa, ma.to(torch.bfloat16))


def test_float32_weights_are_unchanged_by_the_setting():
    a, b = _segments(torch.float32), _segments(torch.float32)
    sweep(a, SweepPlan(post=[(5, 1e-4)], show=[(6, 1e-3)]))
    sweep(b, SweepPlan(post=[(5, 1e-4)], show=[(6, 1e-3)], show_on_grid=True))
    assert all(torch.equal(x.tensor, y.tensor) for x, y in zip(a, b))


def test_bad_value_is_one_line():
    with pytest.raises(ConfigError, match=r"mezo.perturb_about='centre' is not allowed; choose one of \['master', 'weights'\]"):
        MezoConfig(perturb_about="centre")
