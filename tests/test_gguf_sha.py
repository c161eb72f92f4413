"""runners/gguf.py's sha256 of a GGUF file, kept per machine: every rank of every launch needs it."""

from __future__ import annotations

import hashlib
import os

from mezo_elastic.runners import gguf


def test_a_gguf_is_hashed_once_per_machine_while_its_stat_stays(tmp_path, monkeypatch):
    """Every rank of every launch needs the file's sha256 (~2 s a GB to hash): kept in the cache, keyed by the
    file's stat; a rewritten file, or an unreadable index, is hashed again."""
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(1000))
    calls = []
    real = gguf.sha256_file
    monkeypatch.setattr(gguf, "sha256_file", lambda p: calls.append(p) or real(p))

    def sha() -> str:
        gguf._SHA_SEEN.clear()  # as a new process (launch) would start
        return gguf._sha256(f, tmp_path / "cache")

    assert sha() == hashlib.sha256(f.read_bytes()).hexdigest() and len(calls) == 1
    assert sha() == hashlib.sha256(f.read_bytes()).hexdigest() and len(calls) == 1  # the next launch reads it
    (index,) = (tmp_path / "cache" / "sha").iterdir()
    index.write_text("{torn")
    assert sha() == hashlib.sha256(f.read_bytes()).hexdigest() and len(calls) == 2
    f.write_bytes(b"GGUF" + bytes(999) + b"x")  # same size, other bytes: a new mtime
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # coarse-mtime filesystems: make sure it moved
    assert sha() == hashlib.sha256(f.read_bytes()).hexdigest() and len(calls) == 3
