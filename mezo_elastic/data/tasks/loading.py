"""Local copies of MeZO's datasets, read offline with the `datasets` library, in each dataset's own schema.

A split is one of:
  FILE.jsonl / FILE.json   one JSON object a line (e.g. `ds.to_json(...)`)
  FILE.parquet             e.g. the HF hub's own parquet export of the split
  DIR                      `Dataset.save_to_disk(DIR)`, or `DatasetDict.save_to_disk(DIR)`: then the split
                           named by `split` ("train" for data.path, "validation" for data.eval_path)
The rows must stay in the published order: MeZO samples by position (protocol.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mezo_elastic.errors import DataError

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()  # one rank's bars in a job log are noise
    datasets.logging.set_verbosity_error()
    return datasets


def is_dataset_dict(path: str) -> bool:
    """Whether `path` is a directory written by `DatasetDict.save_to_disk` (several splits)."""
    return (Path(path) / "dataset_dict.json").is_file()


def load_split(path: str, split: str):
    """The `datasets.Dataset` at `path` (a file or a save_to_disk directory; see the module docstring).

    Raises:
        DataError: no such file, an unknown suffix, a DatasetDict without `split`, or an unreadable file.
    """
    datasets = _quiet_datasets()
    p = Path(path)
    if p.is_dir():
        try:
            ds = datasets.load_from_disk(str(p))
        except FileNotFoundError as e:
            raise DataError(f"{path!r} is a directory but not a datasets save_to_disk directory ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path!r} holds the splits {list(ds)}, not {split!r}; give the split's own "
                                f"directory ({path}/SPLIT) or file instead")
            ds = ds[split]
        return ds
    if not p.is_file():
        raise DataError(f"data file {path!r} does not exist")
    builder = _BUILDERS.get(p.suffix)
    if builder is None:
        raise DataError(f"{path!r}: unknown suffix {p.suffix!r}; use .jsonl, .json, .parquet or a save_to_disk directory")
    # A private cache that goes away: ranks reading the same file never share (or race on) a cache dir.
    with tempfile.TemporaryDirectory(prefix="mezo-tasks-") as cache:
        try:
            return datasets.load_dataset(builder, data_files=str(p), split="train", cache_dir=cache,
                                         keep_in_memory=True)
        except Exception as e:  # datasets raises many kinds for a malformed file; say which file
            raise DataError(f"{path!r}: cannot be read as {builder} ({type(e).__name__}: {e})") from None


def check_columns(ds, path: str, task: str, hf_name: str, fields: tuple[str, ...]) -> None:
    """Every field the task's template reads is a column of the split, else a DataError naming them."""
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise DataError(f"{path!r}: data.task={task} reads the fields {list(fields)} of {hf_name}'s schema; "
                        f"missing {missing} (columns present: {ds.column_names})")
    if len(ds) == 0:
        raise DataError(f"{path!r} has no examples")
