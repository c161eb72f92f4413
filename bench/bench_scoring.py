"""Classification scoring: prompt shared between candidates vs one sequence per candidate.

    python bench/bench_scoring.py                       # CPU, hf backend, a 4-layer Llama of hidden 512, fp32
    python bench/bench_scoring.py --device cuda --dtype bfloat16 --layers 16 --hidden 2048
    python bench/bench_scoring.py --backend sglang --device cuda --dtype bfloat16 --layers 16 --hidden 2048

One row per task shape (prompt length, candidates and their lengths): milliseconds per scoring of a
batch (median of --repeats after a warm-up), token positions fed to the model, the speed-up, and the
largest |loss difference| between the two paths on the same batch. Random weights from a config,
random token ids: no downloads. Prints a Markdown table; --out also writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "gpu")]

from sglang_models import save_random_model, sglang_cfg, single_ctx  # noqa: E402  (shared with the tests)

from mezo_elastic.config import Config, ModelConfig  # noqa: E402
from mezo_elastic.data.jsonl import Example  # noqa: E402
from mezo_elastic.objectives.scoring import example_losses  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402

# (name, prompt tokens, candidate lengths): SST-2-like verbalizers, a 3-way NLI, multi-token options.
TASKS = [
    ("2 x 1-token, prompt 64", 64, (1, 1)),
    ("2 x 1-token, prompt 256", 256, (1, 1)),
    ("3 x 1-token, prompt 128", 128, (1, 1, 1)),
    ("4 x 4-token, prompt 128", 128, (4, 4, 4, 4)),
]


def build(args):
    out = Path(args.workdir)
    if not (out / "config.json").is_file():
        spec = dict(model_type="llama", vocab_size=args.vocab, hidden_size=args.hidden,
                    intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                    num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 256))
        save_random_model(spec, out, seed=0, dtype=torch.float32)
    if args.backend == "sglang":
        from mezo_elastic.runners.sglang.runner import SGLangRunner

        cfg = sglang_cfg(out, dtype=args.dtype, sglang_share_min_tokens=0)  # time the shared path everywhere
        cfg.data.micro_batch = args.batch * 4
        return SGLangRunner(single_ctx(), cfg, torch.device("cuda", 0), str(out))
    cfg = Config(model=ModelConfig(path=str(out), dtype=args.dtype, device=args.device))
    return HFRunner(cfg, torch.device(args.device), str(out))


def examples(n: int, prompt: int, lengths: tuple[int, ...], vocab: int) -> list[Example]:
    rng = random.Random(0)
    tok = lambda k: tuple(rng.randrange(3, vocab) for _ in range(k))  # noqa: E731
    return [Example(tok(prompt), tuple(tok(L) for L in lengths), rng.randrange(len(lengths))) for _ in range(n)]


def timed(fn, repeats: int) -> float:
    for _ in range(3):  # warm-up: Triton kernels specialise (and compile) per shape on first use
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="hf", choices=["hf", "sglang"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=16, help="examples per scoring")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tasks", default="", help="comma-separated task indices to run, in this order (default all)")
    ap.add_argument("--workdir", default="/tmp/mezo_bench_scoring_model")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    runner = build(args)
    rows = []
    order = [int(i) for i in args.tasks.split(",")] if args.tasks else range(len(TASKS))
    for name, prompt, lengths in [TASKS[i] for i in order]:
        exs = examples(args.batch, prompt, lengths, args.vocab)
        mb = args.batch * len(lengths)  # the whole batch in one forward on both paths
        def run(share: bool, exs=exs, mb=mb):
            return example_losses(runner, exs, "classification", mb, share)

        sep_ms, sh_ms = timed(lambda: run(False), args.repeats), timed(lambda: run(True), args.repeats)  # noqa: B023
        diff = (run(True)[0] - run(False)[0]).abs().max().item()
        pos_sep = args.batch * len(lengths) * prompt + args.batch * sum(lengths)
        pos_sh = (args.batch * prompt + args.batch * sum(L - 1 for L in lengths) if args.backend == "hf"
                  else args.batch * (prompt - 1) + args.batch * sum(L + 1 for L in lengths))
        rows.append(dict(task=name, separate_ms=sep_ms, shared_ms=sh_ms, speedup=sep_ms / sh_ms,
                         positions_separate=pos_sep, positions_shared=pos_sh, max_abs_loss_diff=diff))
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nclassification scoring ({args.backend} backend), batch {args.batch}, Llama {args.layers}x{args.hidden} vocab {args.vocab} "
          f"{args.dtype} on {dev}; torch {torch.__version__}\n")
    print("| task | separate ms | shared ms | speed-up | positions sep/shared | max abs loss diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['separate_ms']:.1f} | {r['shared_ms']:.1f} | {r['speedup']:.2f}x | "
              f"{r['positions_separate']}/{r['positions_shared']} | {r['max_abs_loss_diff']:.1e} |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=dev, args=vars(args), rows=rows), indent=1))


if __name__ == "__main__":
    main()
