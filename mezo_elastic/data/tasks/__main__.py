"""`python -m mezo_elastic.tasks`: look at MeZO's task rows, and collect runs into the paper's table.

    python -m mezo_elastic.tasks render SST2 --path sst2/train.parquet --n 3
    python -m mezo_elastic.tasks render CB --path cb/ --split eval --n 5      # a DatasetDict dir
    python -m mezo_elastic.tasks table runs/mezo_table --csv mezo_table.csv

render prints one JSON object a line: {"prompt", "candidates", "label"} (ReCoRD adds "correct"),
or {"prompt", "answers"} for SQuAD and DROP; prompt + candidate is exactly MeZO's verbalize string
(train on such a file with --data.verbatim=true).
"""

from __future__ import annotations

import argparse
import json
import sys

from mezo_elastic.errors import MezoError


def _parser() -> argparse.ArgumentParser:
    from mezo_elastic.config import DataConfig
    from mezo_elastic.data.tasks.protocol import SPLITS, Protocol

    d = Protocol.of(DataConfig())  # the config tree's defaults
    ap = argparse.ArgumentParser(prog="python -m mezo_elastic.tasks", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="print a task's rows as the model sees them")
    r.add_argument("task", help="MeZO's task name, any case (SST2, RTE, CB, BoolQ, WSC, WIC, MultiRC, Copa, "
                                "ReCoRD, SQuAD, DROP)")
    r.add_argument("--path", required=True, help="the split: .jsonl, .parquet or a save_to_disk directory")
    r.add_argument("--n", type=int, default=0, help="print the first N rows (0 = all)")
    r.add_argument("--split", choices=SPLITS, default="all",
                   help="all: every row in file order (of a DatasetDict dir: its train split); train/dev: MeZO's sample of a "
                        "train split; eval: of a "
                        "validation split")
    r.add_argument("--num-train", type=int, default=d.num_train, help="as data.num_train")
    r.add_argument("--num-dev", type=int, default=d.num_dev, help="as data.num_dev (-1: MeZO's per task)")
    r.add_argument("--num-eval", type=int, default=d.num_eval, help="as data.num_eval")
    r.add_argument("--seed", type=int, default=d.seed, help="as data.sample_seed")
    t = sub.add_parser("table", help="collect run directories into the paper's table (task x metric)")
    t.add_argument("runs", nargs="+", help="run directories, or directories above them")
    t.add_argument("--csv", default="", help="also write the table as CSV to this file")
    t.add_argument("--format", choices=("text", "csv"), default="text", help="what to print")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a bad file or argument is one line on stderr and exit code 2."""
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "table":
            from mezo_elastic.data.tasks.table import main as table

            return table(args.runs, args.csv, args.format)
        from mezo_elastic.data.tasks.protocol import Protocol, render_rows

        rows = render_rows(args.task, args.path, args.split,
                           Protocol(args.num_train, args.num_dev, args.num_eval, args.seed), limit=args.n)
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    except MezoError as e:
        print(f"mezo_elastic.tasks: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
