"""Evaluation on clean weights: loss, accuracy, reward, MeZO's dev set and task metric, split over ranks."""

from __future__ import annotations

import logging

import torch

from mezo_elastic.data.jsonl import Example, rank_slice
from mezo_elastic.data.tasks.metrics import task_metrics

log = logging.getLogger(__name__)


def eval_metrics(trainer, examples: list[Example], step: int, prefix: str) -> dict[str, float]:
    """`prefix`_loss (and _accuracy, _reward) of `examples`, split over ranks, on clean weights."""
    comm = trainer.comm
    mine = rank_slice(examples, comm.dp_rank, comm.dp_size)
    with trainer.opt.clean_weights():
        sums = trainer.objective.eval_sums(mine, step)
    keys = sorted(sums)  # the same keys on every rank: they depend on the objective only
    vals = dict(zip(keys + ["n"], comm.all_reduce_sum([sums[k] for k in keys] + [len(mine)])))
    n = max(vals["n"], 1)
    out = {f"{prefix}_loss": vals["loss"] / n}
    if "reward" in vals:
        out[f"{prefix}_reward"] = vals["reward"] / n
    if "correct" in vals and vals.get("nonbinary", 0) == 0:
        out[f"{prefix}_accuracy"] = vals["correct"] / n
    return out


def evaluate(trainer, step: int) -> dict[str, float]:
    """Loss (accuracy for classification; mean reward, and accuracy when rewards are 0/1, for the
    reward objective) on the eval set, and with data.task on MeZO's dev set (dev_*); written to metrics."""
    cfg, data = trainer.cfg, trainer.data
    out = eval_metrics(trainer, data.eval, step, "eval")
    if data.dev:
        out.update(eval_metrics(trainer, data.dev, step, "dev"))
    out.update(task_metrics(cfg.data, out))  # data.task: the metric MeZO reports, by its name
    trainer.metrics.write("eval", step, **out, **gpu_memory(trainer))
    log.info("eval step %d%s: %s", step, f" ({cfg.data.task})" if cfg.data.task else "",
             " ".join(f"{k}={v + 0.0:.4f}" for k, v in out.items()))  # + 0.0: never "-0.0000"
    return out


def gpu_memory(trainer) -> dict[str, float]:
    """On CUDA: the allocator's peak so far on this rank (SGLang's pools and the CUDA graphs' included: both
    allocate through torch) and the fp32 master copy's share of it, in GiB, for the eval lines of
    metrics.jsonl. The step-0 eval's peak less the master is the forward-only memory the training's peak is
    compared with (bench/time_to_accuracy.py). {} on CPU."""
    device = trainer.device
    if device.type != "cuda":
        return {}
    master = sum(m.numel() * m.element_size() for _, m in trainer.opt.master_state())
    return {"gpu_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30, "master_gib": master / 2**30}
