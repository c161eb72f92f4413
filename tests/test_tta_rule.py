"""bench/tta/curves.py: the time-to-accuracy rule of docs/benchmarks.md on synthetic curves (no model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from tta import curves, store  # noqa: E402
from tta.curves import INF, Rule  # noqa: E402


def curve(metrics: list[float], secs_per_eval: float = 1.0, fwd_per_eval: int = 100) -> list[dict]:
    """Evals at steps 0, 50, 100, ... spaced `secs_per_eval` training seconds and `fwd_per_eval` forwards."""
    return [{"step": 50 * i, "seconds": secs_per_eval * i, "forwards": fwd_per_eval * i, "metric": m}
            for i, m in enumerate(metrics)]


def test_smoothing_is_the_trailing_mean_of_w_evals_step0_included():
    assert curves.smoothed([0.0, 3.0, 6.0, 9.0], 3) == [0.0, 1.5, 3.0, 6.0]
    assert curves.final_smoothed(curve([0.5, 0.6, 0.7, 0.8, 0.9]), 3) == pytest.approx(0.8)


def test_target_is_zero_shot_plus_f_of_the_reference_gain_medians_over_seeds():
    refs = [curve([0.50, 0.60, 0.70, 0.70, 0.70]), curve([0.52, 0.60, 0.80, 0.80, 0.80]),
            curve([0.48, 0.55, 0.60, 0.60, 0.60])]
    t = curves.target(refs, Rule())
    assert t["zero_shot"] == 0.50  # median of the step-0 evals
    assert t["ref_final"] == pytest.approx(0.70)  # median of the last-3 means (0.7, 0.8, 0.6)
    assert t["target"] == pytest.approx(0.50 + 0.8 * 0.20)
    assert t["gain"] == pytest.approx(0.20) and t["learned"]


def test_reached_at_the_first_full_window_whose_mean_is_at_the_target():
    rule = Rule()  # W = 3
    # a single early spike does not count: eval 1 is 0.9, but the window is not full until eval 2
    # (mean 0.633 < 0.66); eval 3's window (0.9, 0.5, 0.7) = 0.7 >= 0.66 is the crossing
    c = curve([0.5, 0.9, 0.5, 0.7, 0.7])
    assert curves.hit(c, 0.66, rule) == 3
    assert curves.time_to_target(c, 0.66, rule) == {"step": 150, "seconds": 3.0, "forwards": 300}
    # exactly at the target counts as reached
    assert curves.hit(curve([0.6, 0.6, 0.6]), 0.6, rule) == 2


def test_not_reached_is_infinite_and_counts_in_the_median():
    rule = Rule()
    assert curves.time_to_target(curve([0.5, 0.55, 0.6, 0.6]), 0.7, rule)["seconds"] == INF
    refs = [curve([0.5, 0.6, 0.8, 0.8, 0.8])] * 3
    tgt = curves.target(refs, rule)  # 0.5 + 0.8 * 0.3 = 0.74
    runs = [curve([0.5, 0.8, 0.8, 0.8], 0.5), curve([0.5, 0.5, 0.5, 0.5]), curve([0.5, 0.5, 0.5, 0.5])]
    s = curves.summarise(runs, tgt, rule, ref_seconds=4.0)
    # run 0: the window at eval 2 is (0.5, 0.8, 0.8) = 0.7 < 0.74; eval 3's (0.8) is the crossing, at 1.5 s
    assert s["reached"] == 1 and s["seconds"]["median"] == INF and s["seconds"]["min"] == 1.5
    runs[1] = curve([0.5, 0.8, 0.8, 0.8], 1.0)  # the same crossing, at 3 s
    s = curves.summarise(runs, tgt, rule, ref_seconds=4.0)
    assert s["reached"] == 2 and s["seconds"]["median"] == 3.0 and s["seconds"]["max"] == INF
    assert curves.speedup(4.0, 2.0) == 2.0 and curves.speedup(4.0, INF) is None


def test_the_reference_reaches_its_own_target_by_construction():
    rule = Rule()
    refs = [curve([0.5, 0.52, 0.58, 0.61, 0.66, 0.63, 0.69]), curve([0.5, 0.6, 0.55, 0.7, 0.64, 0.72, 0.68]),
            curve([0.5, 0.51, 0.53, 0.60, 0.62, 0.61, 0.65])]
    tgt = curves.target(refs, rule)
    s = curves.summarise(refs, tgt, rule, ref_seconds=6.0)
    assert s["seconds"]["median"] < INF and s["reached"] >= 2


def test_did_not_learn_below_the_minimum_gain():
    refs = [curve([0.50, 0.52, 0.56, 0.58, 0.58])] * 3  # gain 0.073 < 0.10
    t = curves.target(refs, Rule())
    assert not t["learned"] and t["gain"] == pytest.approx((0.56 + 0.58 + 0.58) / 3 - 0.50)
    assert curves.target(refs, Rule(min_gain=0.05))["learned"]


def test_loss_metric_is_lower_is_better():
    rule = Rule(higher=False, min_gain=0.1)
    refs = [curve([2.0, 1.8, 1.5, 1.5, 1.5])]
    t = curves.target(refs, rule)
    assert t["gain"] == pytest.approx(0.5) and t["learned"] and t["target"] == pytest.approx(1.6)
    assert curves.hit(curve([2.0, 1.5, 1.5, 1.5]), t["target"], rule) == 3  # window means 1.667, then 1.5
    assert curves.hit(curve([2.0, 1.5, 1.4]), t["target"], rule) is None  # (2.0 + 1.5 + 1.4) / 3 = 1.633 > 1.6
    assert curves.hit(curve([2.0, 2.0, 2.0, 2.0]), t["target"], rule) is None


def test_metric_at_the_reference_wall_clock_is_the_last_eval_at_or_before_it():
    c = curve([0.5, 0.6, 0.7, 0.8, 0.9], secs_per_eval=2.0)  # evals at 0, 2, 4, 6, 8 s
    assert curves.metric_at_seconds(c, 5.0, 3) == pytest.approx(0.6)  # eval at 4 s: mean(0.5, 0.6, 0.7)
    assert curves.metric_at_seconds(c, 6.0, 3) == pytest.approx(0.7)  # at 6 s exactly
    assert curves.metric_at_seconds(c, 100.0, 3) == pytest.approx(0.8)  # past the end: the last eval
    assert curves.metric_at_seconds(c, 1.0, 3) == 0.5  # before the first training eval: zero-shot


def test_stop_at_target_waits_w_evals_past_the_crossing_and_the_reference_wall_clock():
    rule = Rule()
    c = curve([0.5, 0.9, 0.9, 0.9, 0.9, 0.9])  # crossing (0.74) at eval 2: (0.5 + 0.9 + 0.9) / 3 = 0.767
    assert not curves.should_stop(c[:5], 0.74, rule, ref_seconds=0.0)  # 2 evals past it
    assert curves.should_stop(c[:6], 0.74, rule, ref_seconds=5.0)  # 3 evals past, at 5 s
    assert not curves.should_stop(c[:6], 0.74, rule, ref_seconds=5.5)  # the reference ran longer
    assert not curves.should_stop(curve([0.5] * 10), 0.74, rule, ref_seconds=0.0)  # never reached


def test_a_run_stopped_under_a_further_target_still_shows_a_nearer_crossing():
    # 2026-12-07: two reference seeds set 0.609, the third lowered it to 0.594; ours had stopped under 0.609.
    rule, low = Rule(), Rule(higher=False)
    c = curve([0.45, 0.55, 0.62, 0.65, 0.66, 0.66])
    assert curves.time_to_target(c, 0.594, rule)["step"] <= curves.time_to_target(c, 0.609, rule)["step"]
    assert curves.stop_covers(0.609, 0.594, rule) and curves.stop_covers(0.609, 0.609, rule)
    assert not curves.stop_covers(0.594, 0.609, rule)  # its crossing of the further bar may lie past its end
    assert curves.stop_covers(None, 0.9, rule)  # never stopped early
    assert curves.stop_covers(1.0, 1.2, low) and not curves.stop_covers(1.2, 1.0, low)  # a loss: lower is further


def test_seed_paired_speedups_compare_each_seeds_pair_and_keep_never_reached_apart():
    ref = {0: 86.4, 1: 161.9, 2: INF, 3: INF}  # 2026-12-07's reward verdict: the reference's seed 2 never reached
    ours = {0: 13.0, 1: 18.3, 2: 8.0, 3: INF, 4: 5.0}  # seed 4 has no reference run: left out
    got = curves.paired_speedups(ref, ours)
    assert got == [pytest.approx(86.4 / 13.0), pytest.approx(161.9 / 18.3), INF]  # seed 3: neither reached
    assert curves.spread(got)["median"] == pytest.approx(161.9 / 18.3)
    assert curves.paired_speedups({0: 10.0}, {0: INF}) == [0.0]  # only ours never reached


def test_pick_lr_grid_rules():
    rule = Rule()
    runs = [{"lr": 1e-5, "seed": 0, "curve": curve([0.5, 0.6, 0.7, 0.75])},
            {"lr": 3e-5, "seed": 0, "curve": curve([0.5, 0.6, 0.8, 0.90])},
            {"lr": 1e-4, "seed": 0, "curve": curve([0.5, 0.8, 0.8, 0.60])},
            {"lr": 1e-3, "seed": 1, "curve": curve([0.5, 0.9, 0.9, 0.90])}]  # not seed 0: not in the grid
    assert store.pick_lr(runs, rule) == 3e-5  # the best final smoothed metric: 0.767 (1e-4: 0.733)
    assert store.pick_lr(runs, rule, target=0.66) == 1e-4  # the soonest to the target: eval 2 (3e-5: eval 3)
    assert store.pick_lr([], rule) is None
    assert store.pick_lr(runs[3:], rule) == 1e-3  # no seed-0 run: the lowest seed's


def test_eval_standard_error():
    assert curves.eval_stderr(0.5, 1000) == pytest.approx(0.0158, abs=1e-4)
    assert curves.eval_stderr(2.0, 1000) is None and curves.eval_stderr(0.5, 0) is None


def test_frozen_curves_are_flagged():
    from tta.report import frozen_curve

    assert frozen_curve(curve([0.485] * 21), 1000)
    assert not frozen_curve(curve([0.485] * 21), 64)  # a small eval set: a discrete metric may stay put
    assert not frozen_curve(curve([0.485] * 3), 1000)  # too few evals to say
    assert not frozen_curve(curve([0.485] * 20 + [0.486]), 1000)


H100_LATE = Path(__file__).resolve().parents[1] / "bench" / "results" / "2026-12-06-h100-late" / "tta"
H100_0607 = Path(__file__).resolve().parents[1] / "bench" / "results" / "2026-12-07-h100" / "combined"
H100_0607_LATE = Path(__file__).resolve().parents[1] / "bench" / "results" / "2026-12-07-h100-late" / "tta"


def test_the_rule_on_the_h100_runs_of_2026_12_06():
    """The report over the real model's runs kept in bench/results (H100, 2026-12-06): the reward task
    learned under the reference (0.453 -> 0.666), ours (spsa) reached its target 7.6x sooner in wall-clock;
    gv at 2 x the reference's lr collapsed; the classification reference's evals were frozen (the stale
    graphs, fixed since) and are flagged."""
    from tta import report

    reward = report.task_result(H100_LATE, "reward", ["reference", "spsa", "gv"], Rule())
    assert reward["learned"] and reward["zero_shot"] == pytest.approx(0.453) and reward["ref_final"] == pytest.approx((0.651 + 0.653 + 0.693) / 3)
    spsa, gv = reward["methods"]["spsa"], reward["methods"]["gv"]
    assert spsa["reached"] == 1 and spsa["speedup_seconds"] == pytest.approx(99.1 / 13.0, rel=0.02)
    assert gv["reached"] == 0 and gv["seconds"]["median"] == INF
    cls = report.task_result(H100_LATE, "cls", ["reference", "spsa"], Rule())
    assert not cls["learned"]
    assert all(report.frozen_curve(r["curve"], r["n_eval"]) for r in cls["methods"]["reference"]["runs"])
    assert not any(report.frozen_curve(r["curve"], r["n_eval"]) for r in cls["methods"]["spsa"]["runs"])
    text = report.table({"card": "H100", "date": "2026-12-06", "versions": {"torch": "", "transformers": "", "sglang": ""},
                         "backend": "sglang", "model": "m", "budget": 3, "rule": {"window": 3, "fraction": 0.8, "min_gain": 0.1},
                         "tasks": {"cls": cls}})
    assert "cls reference MeZO: seeds [0, 1]: every eval gave the same metric" in text


def test_the_reward_verdict_over_3_seeds_of_2026_12_06_and_07():
    """The reward verdict's run files (docs/benchmarks.md): seed 0's pair from 2026-12-06's machine, seeds 1
    and 2 from 2026-12-07's. The seed-paired speed-up compares each pair on its machine (86.4 / 13.0,
    161.9 / 18.3, and inf: the reference's seed 2 never reached); the report names both machines, and ours'
    seed 1, stopped under the two-seed target 0.609, still shows its crossing of the three-seed 0.594."""
    from tta import report

    r = report.task_result(H100_0607, "reward", ["reference", "spsa"], Rule())
    assert r["learned"] and r["target"] == pytest.approx(0.594, abs=1e-3)
    spsa, ref = r["methods"]["spsa"], r["methods"]["reference"]
    assert ref["reached"] == 2 and spsa["reached"] == 3 and spsa["stopped_under_other_target"] == []
    assert spsa["speedup_paired"]["median"] == pytest.approx(161.9 / 18.3, rel=0.01)
    assert spsa["speedup_paired"]["min"] == pytest.approx(86.4 / 13.0, rel=0.01) and spsa["speedup_paired"]["max"] == INF
    assert len(r["machines"]) == 2
    text = report.table({"card": "H100", "date": "2026-12-07", "versions": {"torch": "", "transformers": "", "sglang": ""},
                         "backend": "sglang", "model": "m", "budget": 3, "rule": {"window": 3, "fraction": 0.8, "min_gain": 0.1},
                         "tasks": {"reward": r}})
    assert "8.84x [6.63x-inf]" in text and "runs from 2 machines" in text and "stopped early" not in text


def test_the_classification_verdict_over_3_seeds_of_2026_12_07():
    """The classification verdict's run files (docs/benchmarks.md; one H100, one machine): the reference
    learned 0.485 -> 0.704 in 800 steps; ours (spsa) reached the target 0.660 on every seed, 14.1x sooner
    seed-paired (61.9 / 5.02, 58.3 / 4.14, 64.5 / 3.7 in some order); fzoo's lr grid on seed 0 picks 3e-3 (first to
    the target, 405 forwards); ours' spsa runs and gv's fell back to chance past ~1500 steps (flagged), the
    reference's small dip is not."""
    from tta import report

    r = report.task_result(H100_0607_LATE, "cls", ["reference", "spsa", "fzoo", "gv"], Rule())
    assert r["learned"] and r["zero_shot"] == pytest.approx(0.485) and r["target"] == pytest.approx(0.660, abs=1e-3)
    spsa, fzoo, ref = r["methods"]["spsa"], r["methods"]["fzoo"], r["methods"]["reference"]
    assert ref["reached"] == 3 and spsa["reached"] == 3 and len(r["machines"]) == 1
    assert 12 < spsa["speedup_paired"]["min"] <= spsa["speedup_paired"]["median"] <= spsa["speedup_paired"]["max"] < 18
    assert spsa["speedup_paired"]["median"] == pytest.approx(14.09, abs=0.01)
    assert fzoo["lr"] == pytest.approx(3e-3) and fzoo["lrs_tried"] == [1e-5, 3e-4, 1e-3, 3e-3]
    assert fzoo["forwards"]["median"] == 405 and fzoo["fell_back"] == []
    assert [f["seed"] for f in spsa["fell_back"]] == [0, 1, 2] and ref["fell_back"] == []
    assert all(f["last"] < 0.52 < 0.7 < f["best"] for f in spsa["fell_back"])
    assert [f["seed"] for f in r["methods"]["gv"]["fell_back"]] == [0]
    text = report.table({"card": "H100", "date": "2026-12-07", "versions": {"torch": "", "transformers": "", "sglang": ""},
                         "backend": "sglang", "model": "m", "budget": 3, "rule": {"window": 3, "fraction": 0.8, "min_gain": 0.1},
                         "tasks": {"cls": r}})
    assert "cls ours, spsa: seeds [0, 1, 2] reached the target, then fell back" in text
    assert "cls reference MeZO: seeds" not in text


def test_fell_back_needs_the_target_reached_and_a_real_fall_past_it():
    rule = Rule()  # target 0.66 from zero-shot 0.5: a fall counts below 0.66 - 0.04
    rise_fall = curve([0.5, 0.6, 0.7, 0.72, 0.74, 0.6, 0.5, 0.5, 0.5])
    f = curves.fell_back(rise_fall, 0.66, rule, 0.5)
    assert f["best"] == pytest.approx((0.7 + 0.72 + 0.74) / 3) and f["best_step"] == 200 and f["last"] == pytest.approx(0.5)
    assert curves.fell_back(curve([0.5, 0.6, 0.7, 0.72, 0.74, 0.66, 0.64, 0.63]), 0.66, rule, 0.5) is None  # noise
    assert curves.fell_back(curve([0.5, 0.55, 0.6, 0.5, 0.5]), 0.66, rule, 0.5) is None  # never reached
    assert curves.fell_back(curve([0.5, 0.6, 0.7, 0.72, 0.74]), 0.66, rule, 0.5) is None  # still there
    loss = Rule(higher=False)  # a loss falls back by rising
    assert curves.fell_back(curve([2.0, 1.5, 1.2, 1.1, 1.0, 1.6, 2.0, 2.0]), 1.3, loss, 2.0)["last"] == pytest.approx(
        (1.6 + 2.0 + 2.0) / 3)


def test_grad_curve_is_read_from_an_ours_runs_step_log(tmp_path):
    """bench/tta/runners.read_grad_curve: median and max |g| of the logged steps between evals (a population's
    K each; skipped steps left out)."""
    from tta.runners import read_grad_curve

    from mezo_elastic.state.checkpoint import StepLog
    from mezo_elastic.zo.optimizer import StepRecord

    log = StepLog(tmp_path / "steps.jsonl")
    grads = {0: [1.0, -3.0], 1: [2.0, 2.0], 2: [-8.0, 4.0], 3: [100.0, 100.0]}
    for step, g in grads.items():
        log.append(StepRecord(step=step, seeds=[1, 2], grads=g, lr=1e-3, weight_decay=0.0, skipped=step == 3))
    got = read_grad_curve(tmp_path / "steps.jsonl", [0, 2, 4])
    assert got == [{"step": 2, "median_abs_g": 2.0, "max_abs_g": 3.0}, {"step": 4, "median_abs_g": 6.0, "max_abs_g": 8.0}]
    assert read_grad_curve(tmp_path / "none.jsonl", [0, 2]) == []


def test_from_launch_adds_each_runs_start_up_to_its_time_to_target(tmp_path):
    """The report's from-launch line: per seed ready_s (launch to the step-0 eval's end) + training seconds to
    the target, medians; ours' slow start (an engine, CUDA graphs) narrows its training-time speed-up."""
    from tta import report

    def run(method, seed, metrics, secs_per_eval, ready):
        store.write_json(store.run_path(tmp_path, "t", method, 1e-3, seed), {
            "task": "t", "method": method, "lr": 1e-3, "seed": seed, "settings": {"eps": 1e-3, "dtype": "float32"},
            "forwards_per_step": 2, "n_eval": 1000, "curve": curve(metrics, secs_per_eval), "ready_s": ready})

    for seed in (0, 1, 2):
        run("reference", seed, [0.5, 0.6, 0.7, 0.8, 0.8, 0.8], 10.0, 5.0 + seed)
        run("spsa", seed, [0.5, 0.7, 0.8, 0.8, 0.8, 0.8], 1.0, 30.0)
    r = report.task_result(tmp_path, "t", ["reference", "spsa"], Rule())
    ref, spsa = r["methods"]["reference"], r["methods"]["spsa"]
    # target 0.74: the reference's smoothed curve crosses at its eval 4 (40 s), spsa's at eval 3 (3 s)
    assert ref["seconds"]["median"] == 40.0 and spsa["seconds"]["median"] == 3.0
    assert ref["from_launch"] == {"ready": 6.0, "seconds": 46.0} and spsa["from_launch"] == {"ready": 30.0, "seconds": 33.0}
    assert spsa["speedup_from_launch"] == pytest.approx(46.0 / 33.0) and spsa["speedup_seconds"] == pytest.approx(40 / 3)
    text = report.table({"card": "CPU", "date": "d", "versions": {"torch": "", "transformers": "", "sglang": ""},
                         "backend": "hf", "model": "m", "budget": 3, "rule": {"window": 3, "fraction": 0.8, "min_gain": 0.1},
                         "tasks": {"t": r}})
    assert "from launch to the target" in text and "spsa 33 s (ready after 30 s), 1.39x" in text
    (tmp_path / "runs" / "t" / "spsa-0.001-s0.json").write_text(
        (tmp_path / "runs" / "t" / "spsa-0.001-s0.json").read_text().replace('"ready_s": 30.0', '"ready_s": null'))
    r = report.task_result(tmp_path, "t", ["reference", "spsa"], Rule())  # a run without it: no line for spsa
    assert r["methods"]["spsa"]["from_launch"] is None and r["methods"]["spsa"]["speedup_from_launch"] is None


def test_peak_memory_is_the_runs_peak_over_its_forward_only_memory():
    c = curve([0.5, 0.6, 0.7])
    assert curves.peak_memory(c) is None  # CPU runs carry no memory keys
    for p, peak in zip(c, (3.0, 3.2, 3.3)):
        p.update(gpu_peak_gib=peak, master_gib=0.5)
    assert curves.peak_memory(c) == pytest.approx((3.3, 3.3 / 2.5))
