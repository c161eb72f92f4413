"""The built-in model and task of a run, staged: made in a temporary folder outside train.output_dir,
read and checked from there, and copied into OUTPUT_DIR/builtin only once the run has passed every
check. A refused run therefore leaves nothing in its output directory (docs/elastic.md)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mezo_elastic.data import builtin


class BuiltinStage:
    """OUTPUT_DIR/builtin as this launch needs it: what is there already is used in place, the rest is
    made in a staging folder until commit()."""

    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir) / "builtin"
        self._tmp: Path | None = None
        self._moves: list[tuple[Path, Path]] = []  # (staged, final)

    def _staged(self, name: str, make) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="mezo_elastic-builtin-"))
        make(self._tmp)  # builds self._tmp / name
        self._moves.append((self._tmp / name, self.root / name))
        return self._tmp / name

    def model(self) -> tuple[str, str]:
        """(path to read now, path once committed) of the built-in tiny model."""
        final = self.root / "tiny-model"
        if (final / ".complete").exists():
            return str(final), str(final)
        return str(self._staged("tiny-model", builtin.ensure_tiny_model)), str(final)

    def task(self, objective: str) -> tuple[str, str]:
        """(train, eval) JSONL paths of the built-in task for `objective`, to read now."""
        final = self.root / f"task-{objective}"
        if not ((final / "train.jsonl").exists() and (final / "eval.jsonl").exists()):
            final = self._staged(final.name, lambda tmp: builtin.ensure_task(tmp, objective))
        return str(final / "train.jsonl"), str(final / "eval.jsonl")

    def shown(self, path: str) -> str:
        """`path` as it will be once committed (for messages that name a file:line)."""
        for staged, final in self._moves:
            if path.startswith(str(staged)):
                return str(final) + path[len(str(staged)):]
        return path

    def commit(self) -> None:
        """Copy what was staged into OUTPUT_DIR/builtin (each folder atomically) and drop the staging folder."""
        for staged, final in self._moves:
            builtin.install_copy(staged, final)
        self.discard()

    def discard(self) -> None:
        """Drop the staging folder (a refused run: nothing reaches the output directory)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
