"""The run's data recorded by content: the sha256 of each file it trains and evaluates on, in run.json.

A path says where data was, not what it was: a resume pointed at another file with the same name, or a
file edited in place, would train the rest of the run on other data while run.json still named the old
path. So run.json keeps `data: {role: {path, sha256}}` for the roles `train` (data.path, or the built-in
task's train file) and `eval` (data.eval_path, the built-in eval file, or a DatasetDict directory), and a
resume compares contents: other content is refused naming the file; the same content at another path (a
moved directory) is accepted with one log line. Runs recorded before this have no `data`: nothing to
compare, and nothing is added to their run.json (it stays what the run wrote).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROLES = {"train": "data.path", "eval": "data.eval_path"}  # role -> the key that names its file
_CHUNK = 1 << 20


def content_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes; of a directory (a save_to_disk dataset), of its files' relative paths and
    their sha256, in sorted order (so the same files anywhere hash alike).

    Raises:
        OSError: a file cannot be read (the data reader named it already, before this is called).
    """
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        # not datasets' own cache files (cache-<fingerprint>.arrow, written beside the data by a .map()) nor
        # hidden ones: they come and go without the data changing
        for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(("cache-", "."))):
            h.update(f"{f.relative_to(p).as_posix()}\0{content_sha256(f)}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def describe(paths: dict[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    """{role: {"path": absolute path, "sha256": ...}} of the files `paths` names: role -> (the path to read
    now, the path to record: the built-in task is read from its staging folder, recorded where it is
    copied to); an empty path is no file. A file used in two roles (a DatasetDict directory) is read once."""
    seen: dict[str, str] = {}
    out = {}
    for role, (read, shown) in paths.items():
        if read:
            seen.setdefault(read, content_sha256(read))
            out[role] = {"path": str(Path(shown).resolve()), "sha256": seen[read]}
    return out


def _short(sha: str | None) -> str:
    return f"{sha[:12]}..." if sha else "none"


def compare(recorded: dict | None, now: dict[str, dict[str, str]], resolve) -> tuple[list[str], list[str]]:
    """(differences, moves) between run.json's `recorded` data and this launch's `now` (see describe()).

    `resolve(stored_path)` turns a recorded path into an absolute one (run.json keeps paths inside the
    output directory relative to it). A run recorded without data (older than this) has neither.
    Each difference and each move is one phrase naming the key, the file and both sha256, shortened.
    """
    if not recorded:
        return [], []
    diffs, moves = [], []
    for role, key in ROLES.items():
        old, new = recorded.get(role), now.get(role)
        if not old and not new:
            continue
        old_path = resolve(old["path"]) if old else None
        if not new:
            diffs.append(f"{key}: the run recorded {old_path} (sha256 {_short(old['sha256'])}), this launch "
                         f"gives no {role} file")
        elif not old:
            diffs.append(f"{key}={new['path']} (sha256 {_short(new['sha256'])}): the run recorded no {role} file")
        elif old["sha256"] != new["sha256"]:
            where = "" if old_path == new["path"] else f" at {old_path}"
            diffs.append(f"{key}={new['path']} has sha256 {_short(new['sha256'])}, the run recorded "
                         f"{_short(old['sha256'])}{where}")
        elif old_path != new["path"]:
            moves.append(f"{key}={new['path']} has the content the run recorded at {old_path} (sha256 "
                         f"{_short(old['sha256'])})")
    return diffs, moves
