"""The tasks and the model a bench invocation runs: built-in (--smoke, no --model), the real model's
(bench/real_tasks.py), or the user's own (--task NAME --objective --train --eval)."""

from __future__ import annotations

from pathlib import Path

import torch

from tta.runners import DEFAULT_METRIC, Task

OBJECTIVE = {"cls": "classification", "reward": "reward"}


def ensure_hf_model(model: str, out: Path) -> str:
    """An HF directory for `model`: itself, or a .gguf file (or a directory holding one) dequantized once
    through transformers into out/hf-model (shared/notes/gpu-real-model.md's recipe)."""
    p = Path(model)
    if p.is_dir() and (p / "config.json").is_file():
        return str(p)
    gguf = p if p.suffix == ".gguf" else next(iter(sorted(p.glob("*.gguf"))), None)
    if gguf is None or not gguf.is_file():
        raise SystemExit(f"--model {model}: neither an HF model directory nor a .gguf file")
    dst = out / "hf-model"
    if (dst / "config.json").is_file():
        return str(dst)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained; a fresh one does not
    fresh = type(src)(config)
    fresh.load_state_dict(src.state_dict())
    fresh.tie_weights()
    tmp = out / ".hf-model.tmp"
    fresh.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    tmp.rename(dst)
    return str(dst)


def hf_model(args, out: Path) -> str:
    """The HF model directory to train, converted once from a GGUF; --report-only trains nothing and reads
    only the run files, so it converts nothing (the stored result's OUT need not hold a 0.5 GB model)."""
    return args.model if args.report_only else ensure_hf_model(args.model, out)


def task_list(args, out: Path) -> tuple[dict[str, Task], str]:
    """({name: Task}, the HF model directory) for this invocation."""
    if args.task:
        if not args.model:
            raise SystemExit("--task needs --model (an HF directory or .gguf)")
        metric = args.metric or DEFAULT_METRIC[args.objective]
        task = Task(args.task, args.objective, str(Path(args.train).resolve()), str(Path(args.eval).resolve()),
                    metric, args.steps, args.reward, args.verbatim, args.max_new_tokens)
        return {task.name: task}, hf_model(args, out)
    steps = {"cls": args.steps_cls, "reward": args.steps_reward}
    names = [t for t in args.tasks.split(",") if t]
    if bad := [t for t in names if t not in OBJECTIVE]:
        raise SystemExit(f"--tasks {bad}: the built-in tasks are cls and reward (your own: --task NAME ...)")
    if args.builtin:
        from mezo_elastic.data import builtin

        root = out / "builtin"
        model = str(builtin.ensure_tiny_model(root))
        files = {t: tuple(map(str, builtin.ensure_task(root, OBJECTIVE[t]))) for t in names}
        new_tokens = 1  # the built-in reward task's answers are one token
    else:
        from real_tasks import write_tasks

        paths = {k: str(v) for k, v in write_tasks(out / "tasks").items()}
        files = {t: (paths[f"{t}_train"], paths[f"{t}_eval"]) for t in names}
        model = hf_model(args, out)
        new_tokens = 6
    tasks = {t: Task(t, OBJECTIVE[t], *files[t], DEFAULT_METRIC[OBJECTIVE[t]], steps[t], "exact_match",
                     not args.builtin, new_tokens) for t in names}
    return tasks, model
