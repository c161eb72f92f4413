"""MeZO's sampling protocol (large_models/run.py + tasks.py, with --train_set_seed), and the rows it gives.

MeZO's mezo.sh runs `--train_set_seed 0 --num_train 1000 --num_dev 500 --num_eval 1000` (num_dev 100
for CB and Copa). With a train-set seed s, run.py and Dataset.sample_subset do:
  train+dev = the first num_train + num_dev of np.random.seed(s); np.random.permutation(len(train split))
  dev       = the last num_dev of those, train = the rest (so fewer than num_train when the split is small)
  eval      = the first num_eval of np.random.seed(s); np.random.permutation(len(validation split))
It trains on train, selects checkpoints on dev, and reports eval: the validation split stands in for
the test split, whose labels GLUE and SuperGLUE do not publish. Positions index the split as
published, so a file must hold the whole split in its published order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from mezo_elastic.data.tasks.loading import check_columns, load_split
from mezo_elastic.data.tasks.templates import TASKS, canonical_name, render
from mezo_elastic.errors import DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "eval", "all")
SMALL_DEV = {"CB": 100, "Copa": 100}  # mezo.sh: fewer than 1000 training examples, 100 for dev


@dataclass(frozen=True)
class Protocol:
    """How many examples of each split, sampled with which seed (data.num_* and data.sample_seed, whose
    defaults are MeZO's)."""

    num_train: int
    num_dev: int  # -1: MeZO's, 500 (100 for CB and Copa)
    num_eval: int
    seed: int

    @classmethod
    def of(cls, data) -> "Protocol":
        """The protocol of a DataConfig."""
        return cls(data.num_train, data.num_dev, data.num_eval, data.sample_seed)

    def dev_size(self, task: str) -> int:
        return SMALL_DEV.get(task, 500) if self.num_dev < 0 else self.num_dev


def sample_subset(n: int, num: int, seed: int) -> list[int]:
    """MeZO's Dataset.sample_subset(seed, num): positions of the first `num` of a seeded permutation of n."""
    return np.random.RandomState(seed).permutation(n).tolist()[:num]  # == np.random.seed(seed); permutation(n)


def train_dev_indices(n: int, task: str, p: Protocol, say: bool = True) -> tuple[list[int], list[int]]:
    """(train, dev) positions in a training split of n rows, as MeZO's run.py splits them.

    num_train 0 = the whole permuted split before the dev rows are taken off its end. A split too small
    for MeZO's dev size (num_dev -1) gets a scaled one, logged when `say` (once per run: the train split).
    """
    dev_n = p.dev_size(task)
    if p.num_dev < 0 and n - dev_n < dev_n:  # MeZO's dev size would leave fewer rows to train on than to hold out
        dev_n = scaled_dev_size(n, dev_n, p.num_train)
        if say:
            log.info("data.task=%s: the training split has %d rows, too few for MeZO's %d dev rows beside the training "
                 "ones; holding out %d as dev (data.num_dev=-1 scales MeZO's train:dev ratio to a small split; "
                     "set data.num_dev to choose)", task, n, p.dev_size(task), dev_n)
    take = sample_subset(n, p.num_train + dev_n if p.num_train else n, p.seed)
    train, dev = (take[:-dev_n], take[-dev_n:]) if dev_n else (take, [])
    if not train:
        raise DataError(f"data.task={task}: the training split has {n} rows, which data.num_dev={dev_n} "
                        f"leaves none of for training; lower data.num_dev (or -1: scaled to a small split)")
    return train, dev


def scaled_dev_size(n: int, dev_n: int, num_train: int) -> int:
    """Dev rows of a split of n rows too small for MeZO's dev_n: MeZO's num_train:dev_n ratio (1000:500)
    applied to n (a third of it with num_train 0), at least 1 once there are 2 rows."""
    share = dev_n / (num_train + dev_n) if num_train else 1 / 3
    return min(max(int(n * share), 1), n - 1) if n >= 2 else 0


def eval_indices(n: int, p: Protocol) -> list[int]:
    """Eval positions in a validation split of n rows: num_eval sampled, or all in order when num_eval is 0."""
    return sample_subset(n, p.num_eval, p.seed) if p.num_eval else list(range(n))


def render_rows(task: str, path: str, split: str, p: Protocol, where: list[str] | None = None,
                limit: int = 0) -> list[dict]:
    """The rows of one protocol split of the file at `path` (which holds the task's train split for
    train/dev, its validation split for eval; `all` = every row in file order, no sampling).
    `where`, when given, receives "path row N" of every row returned (N: its position in the file);
    `limit` > 0 renders only the first `limit` rows of the split.

    Raises:
        DataError: an unreadable file, a field missing from the task's schema, a bad example (named by row).
    """
    name = canonical_name(task)
    spec = TASKS[name]
    ds = load_split(path, "validation" if split == "eval" else "train")
    check_columns(ds, path, name, spec.hf_name, spec.fields)
    if split == "all":
        idx = list(range(len(ds)))
    elif split == "eval":
        idx = eval_indices(len(ds), p)
    else:
        train, dev = train_dev_indices(len(ds), name, p, say=split == "train")
        idx = train if split == "train" else dev
    idx = idx[:limit] if limit > 0 else idx
    # The file's length says whether it holds the whole published split: the sample depends on it.
    log.info("data.task=%s %s: %d of the %d rows of %s", name, split, len(idx), len(ds), path)
    rows = []
    for i, ex in zip(idx, ds.select(idx)):
        try:
            rows.append(render(spec, ex))
        except DataError as e:
            raise DataError(f"{path} row {i}: {e}") from None
        if where is not None:
            where.append(f"{path} row {i}")
    return rows
