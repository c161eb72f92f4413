"""From the finished runs in OUT: the per-task verdict, the markdown table, tta.json and a PNG per task."""

from __future__ import annotations

import importlib.metadata
import platform
import statistics
import time
from pathlib import Path

from tta import curves, store
from tta.curves import INF, Rule


def at_ref_cell(m: dict) -> str:
    """The metric at the reference's wall-clock; where some seeds' training ended sooner, their last smoothed
    metric stands in for it (a lower bound while the curve still rose) and the cell says how many."""
    n = m.get("ended_before_ref_seconds", 0)
    cell = f"{m['metric_at_ref_seconds']:.3f}"
    return cell if not n else f"{cell} ({n}/{m['seeds']} ended sooner: their last)"


def versions() -> dict:
    """Installed versions of the packages a result depends on ("not installed" where absent)."""
    out = {}
    for name in ("torch", "transformers", "sglang"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def card(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}"


def task_result(out: Path, task: str, methods: list[str], rule: Rule) -> dict | None:
    """Target, verdict and per-method summaries of one task from OUT's runs; None without reference runs."""
    refs_all = store.load_runs(out, task, "reference")
    lr_ref = store.pick_lr(refs_all, rule)
    refs = store.at_lr(refs_all, lr_ref)
    if not refs:
        return None
    tgt = curves.target([r["curve"] for r in refs], rule)
    ref_s = store.total_seconds(refs)
    res = {**tgt, "ref_lr": lr_ref, "ref_seconds": ref_s, "n_eval": refs[0]["n_eval"],
           "stderr_at_target": curves.eval_stderr(tgt["target"], refs[0]["n_eval"]),
           "stderr_at_zero_shot": curves.eval_stderr(tgt["zero_shot"], refs[0]["n_eval"]), "methods": {}}
    for name in ["reference"] + [m for m in methods if m != "reference"]:
        runs_all = refs_all if name == "reference" else store.load_runs(out, task, name)
        lr = lr_ref if name == "reference" else store.pick_lr(runs_all, rule, tgt["target"])
        runs = store.at_lr(runs_all, lr)
        if not runs:
            continue
        s = curves.summarise([r["curve"] for r in runs], tgt, rule, ref_s)
        # Only a run that stopped under a nearer target than the current one misses its crossing (more
        # reference seeds can move the target either way).
        stale = [r["seed"] for r in runs if not curves.stop_covers(r.get("target_at_stop"), tgt["target"], rule)]
        res["methods"][name] = {**s, "lr": lr, "eps": runs[0]["settings"]["eps"], "runs": runs,
                                "lrs_tried": sorted({r["lr"] for r in runs_all if r["seed"] == 0}),
                                "stopped_under_other_target": stale,
                                "fell_back": fell_back_runs(runs, tgt["target"], tgt["zero_shot"], rule),
                                "from_launch": from_launch(runs, s["hits"])}
    ref = res["methods"]["reference"]
    ref_by_seed = {r["seed"]: h["seconds"] for r, h in zip(ref["runs"], ref["hits"])}
    for m in res["methods"].values():  # no verdict where the reference did not learn
        for k in ("seconds", "forwards"):
            m[f"speedup_{k}"] = curves.speedup(ref[k]["median"], m[k]["median"]) if tgt["learned"] else None
        paired = curves.paired_speedups(ref_by_seed, {r["seed"]: h["seconds"] for r, h in zip(m["runs"], m["hits"])})
        m["speedup_paired"] = curves.spread(paired) if paired and tgt["learned"] else None
        launch = ref["from_launch"] and m["from_launch"] and tgt["learned"]
        m["speedup_from_launch"] = (curves.speedup(ref["from_launch"]["seconds"], m["from_launch"]["seconds"])
                                    if launch else None)
    res["machines"] = sorted({r.get("machine") or "unrecorded" for m in res["methods"].values() for r in m["runs"]})
    return res


def from_launch(runs: list[dict], hits: list[dict]) -> dict | None:
    """Medians over seeds of ready_s (launch to the end of the step-0 eval: start-up as a user waits for it)
    and of ready_s + training seconds to the target (inf where not reached); None where a run lacks ready_s
    (runs made before it was recorded)."""
    if not runs or any(r.get("ready_s") is None for r in runs):
        return None
    return {"ready": statistics.median(r["ready_s"] for r in runs),
            "seconds": statistics.median(r["ready_s"] + h["seconds"] for r, h in zip(runs, hits))}


def fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "-"
    return "not reached" if v == INF else f"{v:.{digits}g}"


def secs(v: float) -> str:
    return "not reached" if v == INF else f"{v:.3g} s"


def span(s: dict) -> str:
    """'median [min-max]', 'not reached' where the median seed never reached."""
    if s["median"] == INF:
        return "not reached"
    hi = "n.r." if s["max"] == INF else f"{s['max']:.3g}"
    return f"{s['median']:.3g} [{s['min']:.3g}-{hi}]"


def ratio_cell(s: dict | None) -> str:
    """'median [min-max]' of seed-paired speed-ups, 'inf' where the reference's seed never reached."""
    if s is None:
        return "-"
    f = lambda v: "inf" if v == INF else f"{v:.2f}x"  # noqa: E731
    return f"{f(s['median'])} [{f(s['min'])}-{f(s['max'])}]"


def memory_cell(runs: list[dict]) -> str:
    """'peak (x forward-only)' of the method's runs, the largest ratio of its seeds; '-' without GPU memory."""
    mem = [p for p in (curves.peak_memory(r["curve"]) for r in runs) if p is not None]
    if not mem:
        return "-"
    peak, ratio = max(mem, key=lambda p: p[1])
    return f"{peak:.2f} ({ratio:.2f}x)"


def frozen_curve(curve: list[dict], n_eval: int) -> bool:
    """Whether every eval of a run of 4 or more, each on 200 examples or more, gave the very same metric. On
    1000 examples that does not happen to a run whose weights move; it did to the reference's evals while its
    graphs read the step-0 weights (2026-12-06), and is what a run whose update never lands looks like. (On
    the smoke's 64 examples a discrete reward can stay put for real: not flagged.)"""
    return n_eval >= 200 and len(curve) >= 4 and len({p["metric"] for p in curve}) == 1


def table(result: dict) -> str:
    """Markdown: one row per (task, method), then a verdict line per task."""
    head = (f"{result['card']}; {result['date']}; torch {result['versions']['torch']}, transformers "
            f"{result['versions']['transformers']}, sglang {result['versions']['sglang']}; backend "
            f"{result['backend']}; model {result['model']}; rule: W={result['rule']['window']}, "
            f"F={result['rule']['fraction']}, min gain {result['rule']['min_gain']}, budget "
            f"{result['budget']}x the reference's forwards\n")
    lines = [head, "| task | method | dtype | lr | zero-shot | ref final | target | seeds reaching | time to target s, "
             "median [min-max] | forwards to target | speed-up (s) | speed-up (s), seed-paired | speed-up (forwards) | "
             "metric at ref wall-clock | peak GiB (x forward-only) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for task, r in result["tasks"].items():
        for name, m in r["methods"].items():
            label = "reference MeZO" if name == "reference" else f"ours, {name}"
            up = [f"{v:.2f}x" if v is not None else ("no verdict" if not r["learned"] else "n/a")
                  for v in (m["speedup_seconds"], m["speedup_forwards"])]
            dtype = m["runs"][0]["settings"].get("dtype", "?")
            lines.append(f"| {task} | {label} | {dtype} | {m['lr']:.3g} | {r['zero_shot']:.3f} | "
                         f"{r['ref_final']:.3f} | {r['target']:.3f} | {m['reached']}/{m['seeds']} | {span(m['seconds'])} | "
                         f"{fmt(m['forwards']['median'])} | {up[0]} | "
                         f"{ratio_cell(m.get('speedup_paired'))} | {up[1]} | {at_ref_cell(m)} | "
                         f"{memory_cell(m['runs'])} |")
            frozen = [run for run in m["runs"] if frozen_curve(run["curve"], run["n_eval"])]
            if frozen:
                notes.append(f"{task} {label}: seeds {[run['seed'] for run in frozen]}: every eval gave the same "
                             f"metric ({frozen[0]['curve'][0]['metric']:.3f} on seed {frozen[0]['seed']}); its evals "
                             "never saw the weights change: a broken run, not a result")
            if m.get("fell_back"):
                notes.append(fell_note(task, label, m["fell_back"]))
            if m["stopped_under_other_target"]:
                notes.append(f"{task} {label}: seeds {m['stopped_under_other_target']} stopped early under an "
                             "earlier target (more reference seeds came later); rerun them in a fresh OUT")
        if len(r.get("machines", [])) > 1:
            notes.append(f"{task}: runs from {len(r['machines'])} machines ({'; '.join(r['machines'])}): the "
                         "median-of-seconds speed-up mixes them; the seed-paired one compares each seed's pair, "
                         "where both ran on one machine")
        launched = [(name, m) for name, m in r["methods"].items() if m.get("from_launch")]
        if launched:
            notes.append(f"{task}: from launch to the target (start-up and the step-0 eval, then training; later "
                         "evals not counted), median: " + "; ".join(
                             f"{'reference' if name == 'reference' else name} {secs(m['from_launch']['seconds'])} "
                             f"(ready after {m['from_launch']['ready']:.3g} s)"
                             + (f", {m['speedup_from_launch']:.2f}x" if name != "reference" and m.get("speedup_from_launch")
                                else "") for name, m in launched))
        se = r["stderr_at_target"]
        notes.append(f"{task}: {r['n_eval']} eval examples, one eval's standard error at the target "
                     f"{'n/a' if se is None else f'{se:.4f}'}; reference total training {r['ref_seconds']:.3g} s")
        if not r["learned"]:
            notes.append(f"{task}: task did not learn: no verdict (the reference's median gain {r['gain']:.3f} "
                         f"< {result['rule']['min_gain']})")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def fell_back_runs(runs: list[dict], tgt: float, zero_shot: float, rule: Rule) -> list[dict]:
    """curves.fell_back of each run that reached the target and ended short of it, with its seed and, where
    the run recorded them, the median |projected gradient| of its first and last eval intervals."""
    out = []
    for run in runs:
        f = curves.fell_back(run["curve"], tgt, rule, zero_shot)
        if f:
            g = run.get("grad_curve") or []
            out.append({"seed": run["seed"], **f, **({"g_first": g[0]["median_abs_g"], "g_last": g[-1]["median_abs_g"]}
                                                      if g else {})})
    return out


def fell_note(task: str, label: str, fell: list[dict]) -> str:
    """One line for the seeds that reached the target and then fell back short of it by their last eval."""
    med = lambda k: statistics.median(f[k] for f in fell)  # noqa: E731
    g = [f for f in fell if "g_first" in f]
    grads = (f"; median |g| {statistics.median(f['g_first'] for f in g):.3g} in the first eval interval, "
             f"{statistics.median(f['g_last'] for f in g):.3g} in the last" if g else "")
    return (f"{task} {label}: seeds {[f['seed'] for f in fell]} reached the target, then fell back short of it by "
            f"their last eval (smoothed, median: best {med('best'):.3f} at step {med('best_step'):.0f}, last "
            f"{med('last'):.3f}{grads}): the time to target holds, but past its best the run ended worse; stop at "
            "the best eval (export --step best) or decay the lr (mezo.schedule)")


def plot(out: Path, task: str, r: dict, metric: str) -> Path:
    """OUT/tta-<task>.png: eval metric against training seconds and against forwards, every method (a
    colour) and seed (thin, raw evals), the method's median smoothed curve (thick), the target (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, (name, m) in enumerate(r["methods"].items()):
        col = colours[c % len(colours)]
        label = "reference MeZO" if name == "reference" else f"ours, {name}"
        for ax, x in zip(axes, ("seconds", "forwards")):
            for run in m["runs"]:
                ax.plot([p[x] for p in run["curve"]], curves.metrics(run["curve"]), color=col, lw=0.7, alpha=0.45)
            xs, ys = median_curve([run["curve"] for run in m["runs"]], x, r["window"])
            ax.plot(xs, ys, color=col, lw=2.4, label=f"{label} (lr {m['lr']:.3g})")
    for ax, x in zip(axes, ("training seconds", "forward passes")):
        ax.axhline(r["target"], color="k", ls="--", lw=1, label=f"target {r['target']:.3f}")
        ax.axhline(r["zero_shot"], color="grey", ls=":", lw=1, label="zero-shot")
        ax.set_xlabel(x)
        ax.set_ylabel(f"eval {metric}")
        ax.grid(alpha=0.3)
    axes[0].axvline(r["ref_seconds"], color="grey", ls="-.", lw=0.8, label="reference's wall-clock")
    axes[0].legend(fontsize=7)
    verdict = "" if r["learned"] else " (task did not learn: no verdict)"
    fig.suptitle(f"{task}: eval {metric}; thin: seeds, thick: median of the smoothed curves (W={r['window']}){verdict}")
    fig.tight_layout()
    path = out / f"tta-{task}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def median_curve(cs: list[list[dict]], x: str, window: int) -> tuple[list[float], list[float]]:
    """Per eval index (the same forwards on every seed): median x and median smoothed metric over the
    seeds that have that eval."""
    import statistics

    sm = [curves.smoothed(curves.metrics(c), window) for c in cs]
    xs, ys = [], []
    for i in range(max(len(c) for c in cs)):
        have = [j for j, c in enumerate(cs) if i < len(c)]
        xs.append(statistics.median(cs[j][i][x] for j in have))
        ys.append(statistics.median(sm[j][i] for j in have))
    return xs, ys


def build(out: Path, tasks: dict, methods: list[str], rule_of, meta: dict) -> dict:
    """tta.json, the table (printed and written as tta.md) and the PNGs from OUT's runs."""
    # --report-only over runs made elsewhere: the card, versions, date and model of the machine that ran them
    measured = meta.pop("measured", {})
    result = {**meta, "versions": versions(), "date": time.strftime("%Y-%m-%d"), **measured, "tasks": {}}
    for name, task in tasks.items():
        rule = rule_of(task)
        r = task_result(out, name, methods, rule)
        if r is None:
            print(f"{name}: no finished reference runs in {out}: nothing to report", flush=True)
            continue
        r.update(window=rule.window, metric=task.metric)
        r["picture"] = plot(out, name, r, task.metric).name
        result["tasks"][name] = r
    store.write_json(out / "tta.json", result)
    text = table(result)
    (out / "tta.md").write_text(text + "\n")
    print(text, flush=True)
    return result
