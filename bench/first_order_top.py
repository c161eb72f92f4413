"""A model near the top of a classification task, the cheap way: first-order fine-tuning (backprop, Adam) of the
float32 model on the task's own loss until its eval accuracy reaches --until; saved as an HF directory for
bench/g_noise.py to measure how much of MeZO's g is rounding where a trained model is confident.

    python bench/first_order_top.py --model SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/top     # real model, cls task
    python bench/g_noise.py --model /tmp/top/top-model --out /tmp/gn-top --forwards hf:float32,hf:bfloat16,...
    python bench/first_order_top.py --smoke --out /tmp/top-smoke     # CPU, the built-in model and task, seconds

Why: ours' spsa in 16-bit forwards (bf16 or fp16 on SGLang, fp32 masters) fell back from ~0.8-0.87 to chance past
~1600 steps on the real model's classification task where the float32 reference MeZO climbed on to 0.999
(docs/benchmarks.md#time-to-accuracy). At zero-shot the 16-bit forwards' g is close to float32's; the question is
whether it still is where the model is confident (large logits, the true |g| small), and reaching that point by
MeZO takes ~2000 GPU steps, by backprop a few dozen CPU steps. A backprop-trained model is not the MeZO run's own
point (other weights, the same task and confidence), so what it measures is indicative.

The loss is the classification objective's (mezo_elastic.objectives.scoring.example_losses): cross-entropy over
the candidates, each scored by the summed log-likelihood of its tokens, here with gradients. Writes OUT/top-model
(HF, float32) and OUT/first_order.json (accuracy per eval, the settings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tta.models import ensure_hf_model  # noqa: E402

from mezo_elastic.config import from_dict  # noqa: E402
from mezo_elastic.data.jsonl import BatchSchedule, Example  # noqa: E402
from mezo_elastic.state.checkpoint import atomic_write_text  # noqa: E402
from mezo_elastic.training.inputs import load_inputs  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="", help="HF directory or .gguf (the real model; its cls task)")
    p.add_argument("--smoke", action="store_true", help="the built-in tiny model and classification task (a test)")
    p.add_argument("--out", required=True, help="output directory: top-model/, first_order.json")
    p.add_argument("--lr", type=float, default=1e-5, help="Adam's lr")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-examples", type=int, default=200,
                   help="eval rows per check (the last check: the whole loaded eval set, data.eval_examples' default)")
    p.add_argument("--until", type=float, default=0.97, help="stop once the eval accuracy reaches this")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda where there is one; --smoke: cpu)")
    a = p.parse_args(argv)
    if not a.model and not a.smoke:
        p.error("--model is needed (an HF directory or .gguf), or --smoke for the built-in model")
    a.device = a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    return a


def task_files(a: argparse.Namespace, out: Path) -> tuple[str, str, str, bool]:
    """(HF model directory, train JSONL, eval JSONL, verbatim): the real model's cls task, or the built-in's."""
    if a.smoke:
        from mezo_elastic.data import builtin

        root = out / "builtin"
        train, evl = builtin.ensure_task(root, "classification")[:2]
        return str(builtin.ensure_tiny_model(root)), str(train), str(evl), False
    from real_tasks import write_tasks

    files = write_tasks(out / "tasks")
    return ensure_hf_model(a.model, out), str(files["cls_train"]), str(files["cls_eval"]), True


def scores(model: torch.nn.Module, examples: list[Example]) -> torch.Tensor:
    """[examples, candidates] summed log-likelihood of each candidate's tokens after its prompt (differentiable)."""
    device = next(model.parameters()).device
    seqs = [(ex.prompt_ids, c) for ex in examples for c in ex.candidates]
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    pick = torch.zeros(len(seqs), width, dtype=torch.bool)  # positions whose next token is a candidate token
    for i, (p, c) in enumerate(seqs):
        ids[i, : len(p) + len(c)] = torch.tensor(list(p) + list(c))
        mask[i, : len(p) + len(c)] = 1
        pick[i, len(p) - 1 : len(p) + len(c) - 1] = True
    ids, mask, pick = ids.to(device), mask.to(device), pick.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    per_seq = (logp * pick[:, :-1]).sum(1)
    return per_seq.view(len(examples), -1)  # the real tasks: every example has as many candidates


def accuracy(model: torch.nn.Module, examples: list[Example], chunk: int = 16) -> float:
    """Eval accuracy (argmax over the candidates' scores), no gradients."""
    right = 0
    with torch.no_grad():
        for lo in range(0, len(examples), chunk):
            part = examples[lo : lo + chunk]
            pred = scores(model, part).argmax(1)
            right += sum(int(p) == ex.label for p, ex in zip(pred.tolist(), part))
    return right / len(examples)


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM

    model_dir, train, evl, verbatim = task_files(a, out)
    cfg = from_dict({"seed": 0, "model": {"backend": "hf", "path": model_dir, "dtype": "float32", "device": a.device},
                     "data": {"objective": "classification", "path": train, "eval_path": evl, "seed": 1234,
                              "verbatim": verbatim},
                     "train": {"batch_size": a.batch_size}})
    _, data, stage = load_inputs(cfg, True)
    stage.discard()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(a.device)
    model.train(False)  # no dropout: the same function MeZO's forwards see
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = BatchSchedule(len(data.train), a.batch_size, cfg.data.seed)
    few = list(data.eval[: a.eval_examples])
    curve = [{"step": 0, "accuracy": accuracy(model, few), "loss": None}]
    print(f"step 0: eval accuracy {curve[-1]['accuracy']:.3f}", flush=True)
    t0 = time.perf_counter()
    for t in range(a.max_steps):
        batch = [data.train[i] for i in sched.global_batch(t)]
        sc = scores(model, batch)
        loss = torch.nn.functional.cross_entropy(sc, torch.tensor([ex.label for ex in batch], device=sc.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (t + 1) % a.eval_every == 0:
            curve.append({"step": t + 1, "accuracy": accuracy(model, few), "loss": loss.item()})
            print(f"step {t + 1}: loss {loss.item():.4f}, eval accuracy {curve[-1]['accuracy']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if curve[-1]["accuracy"] >= a.until:
                break
    final = accuracy(model, list(data.eval))
    print(f"final eval accuracy on {len(data.eval)} examples: {final:.3f}", flush=True)
    dst = out / "top-model"
    model.save_pretrained(dst)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_dir).save_pretrained(dst)
    result = {"model": a.model or "built-in", "device": a.device, "lr": a.lr, "batch_size": a.batch_size,
              "curve": curve, "final_accuracy": final, "eval_examples": len(data.eval),
              "seconds": time.perf_counter() - t0, "torch": torch.__version__}
    atomic_write_text(out / "first_order.json", json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
