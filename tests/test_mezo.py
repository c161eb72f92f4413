import math

import pytest
import torch

from mezo_elastic.cluster.distributed import WorldComm
from mezo_elastic.cluster.rank_context import detect
from mezo_elastic.config import MezoConfig, parse_args
from mezo_elastic.training.trainer import Trainer
from mezo_elastic.zo.optimizer import MezoOptimizer, lr_at, projected_grad
from mezo_elastic.zo.perturb import ParamSegment, SweepCounter, step_seed, z_range


def test_estimator_points_along_the_autograd_gradient_fp64():
    """E[g z] = grad L for Gaussian z. With K samples in d dimensions the cosine of the average
    with the true gradient is about sqrt(K / (K + d)); K=1500, d=61 gives 0.98, so 0.95 leaves
    room for sampling noise while a wrong sign, scale-free bug or mismatched z would fail it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    loss_fn = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    loss_fn().backward()
    true = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    segs = [ParamSegment(p.data.view(-1), n) for n, p in model.named_parameters()]
    opt = MezoOptimizer(segs, MezoConfig(eps=1e-4), master_weights=False)
    est = torch.zeros_like(true)
    K = 1500
    with torch.no_grad():
        for k in range(K):
            s = step_seed(7, k)
            opt.perturb(s, +1.0)
            lp = loss_fn().item()
            opt.perturb(s, -1.0)
            lm = loss_fn().item()
            opt.clean()
            g = projected_grad(lp, lm, 1e-4, 0.0)
            est += g * torch.cat([z_range(s, seg.name, 0, seg.tensor.numel()).double() for seg in segs])
    est /= K
    cos = torch.nn.functional.cosine_similarity(est, true, dim=0).item()
    assert cos > 0.95, cos
    assert 0.8 < est.norm().item() / true.norm().item() < 1.25  # unbiased: the right length too


def test_lr_schedules():
    c = MezoConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(c, 0, 110) == pytest.approx(0.1) and lr_at(c, 9, 110) == pytest.approx(1.0)
    assert lr_at(c, 10, 110) == pytest.approx(1.0) and lr_at(c, 110, 110) == pytest.approx(0.1)
    assert lr_at(c, 60, 110) == pytest.approx(0.55)
    lin = MezoConfig(lr=1.0, schedule="linear")
    assert lr_at(lin, 50, 100) == pytest.approx(0.5)
    assert lr_at(MezoConfig(lr=0.3), 77, 100) == 0.3


def test_clip_and_nonfinite():
    assert projected_grad(2.0, 1.0, 0.5, 0.5) == 0.5
    assert projected_grad(1.0, 2.0, 0.5, 0.0) == -1.0
    assert math.isnan(projected_grad(float("nan"), 1.0, 0.5, 1.0))


def _run_counting(tmp_path, *flags):
    cfg = parse_args([f"--train.output_dir={tmp_path}", "--train.steps=12", "--train.batch_size=8",
                      "--train.progress=false", "--checkpoint.every=0", "--data.eval_examples=8", *flags])
    trainer = Trainer(detect({}), cfg, WorldComm(torch.device("cpu")))
    before = SweepCounter.count
    trainer.run()
    trainer.close()
    return SweepCounter.count - before


@pytest.mark.parametrize("flags, expected", [
    (["--train.eval_every=0"], 2 * 12 + 1),  # 2 a step, plus the first perturbation
    (["--train.eval_every=4"], 2 * 12 + 1 + 2),  # eval after steps 4 and 8 needs clean weights: +1 each
    (["--train.eval_every=0", "--mezo.fold_next_perturbation=false"], 3 * 12),  # the 3-sweep form
    (["--train.eval_every=0", "--mezo.master_weights=on"], 2 * 12 + 1),
])
def test_sweeps_per_step_are_counted(tmp_path, flags, expected):
    assert _run_counting(tmp_path, *flags) == expected


def test_rademacher32_trains_resumes_exactly_and_refuses_rademacher(tmp_path):
    """--mezo.distribution=rademacher32 end to end in process on the built-in tiny model: the loss falls, a
    stop at step 5 resumes to the same weights bit for bit (the step log replays with its z), and a resume
    with rademacher (the same distribution, other z) is refused."""
    import json

    from helpers import final_weights, max_abs_diff

    from mezo_elastic.errors import ConfigError

    def run(out, *flags):
        cfg = parse_args([f"--train.output_dir={out}", "--train.batch_size=16", "--train.progress=false",
                          "--train.eval_every=0", "--checkpoint.every=5", "--mezo.distribution=rademacher32", *flags])
        trainer = Trainer(detect({}), cfg, WorldComm(torch.device("cpu")))
        try:
            trainer.run()
        finally:
            trainer.close()

    a, b = tmp_path / "a", tmp_path / "b"
    run(a, "--train.steps=10")
    run(b, "--train.steps=5")
    run(b, "--train.steps=10")
    summary = json.loads((a / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["final_eval_loss"] < summary["first_eval_loss"], summary
    assert json.loads((a / "run.json").read_text())["trajectory"]["mezo.distribution"] == "rademacher32"
    assert max_abs_diff(final_weights(a), final_weights(b)) == 0.0
    with pytest.raises(ConfigError, match="mezo.distribution: 'rademacher32' -> 'rademacher'"):
        run(b, "--train.steps=12", "--mezo.distribution=rademacher")
