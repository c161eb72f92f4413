"""GGUF in: `model.path` may name a .gguf file (or a directory holding one); both backends load HF directories,
so the file is dequantized once, through transformers' GGUF reader, into an HF safetensors directory.

Where: `<cache>/gguf/<sha256 of the file>/` (cache: MEZO_ELASTIC_CACHE, else $XDG_CACHE_HOME/mezo_elastic, else
~/.cache/mezo_elastic), so the same file is converted once per machine (or shared cache) whatever its name or
directory, and a changed file gets a new directory. How: the first rank to take `<sha256>.lock` (an flock)
converts into a temp sibling and renames it into place; the others wait on the lock, then load the result.
On a shared filesystem whose flock does not span nodes, two nodes may both convert: the rename still lets only
one complete directory in (the same bytes either way). Weights are saved in float32, the values the GGUF's
dequantization gives (model.dtype converts at load). Before any of it, check_gguf walks the file's header and
compares the size it promises with the file's, so a file cut short is one line, not a reader's traceback.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import mmap
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mezo_elastic.errors import BackendError, ConfigError
from mezo_elastic.state.checkpoint import atomic_write_text, sha256_file
from mezo_elastic.zo.zgen.native import cache_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
EXTRA = "pip install 'mezo_elastic[gguf]'"
SOURCE_FILE = "gguf_source.json"  # in the converted directory: which file, which sha256


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file `path` names (the file itself, or the one .gguf in a directory without config.json), or None.

    Raises:
        ConfigError: a directory holding several .gguf files and no config.json (which one is meant?).
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return p.resolve()
    if p.is_dir() and not (p / "config.json").is_file():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".gguf")
        if len(files) > 1:
            raise ConfigError(f"model.path={str(path)!r} holds {len(files)} .gguf files "
                              f"({', '.join(f.name for f in files[:4])}); name one of them in model.path")
        if files:
            return files[0].resolve()
    return None


def require_packages(path: str | Path) -> None:
    """Raises BackendError (one line, the extra to install) when transformers' GGUF reader cannot run."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendError(f"model.path={str(path)!r} is a GGUF file; reading it needs the package(s) "
                           f"{' and '.join(missing)}: {EXTRA}")


class _Truncated(Exception):
    """A read past the end of the file while walking the GGUF header."""


# GGUF value types (gguf-py's GGUFValueType) of fixed size, as struct codes; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
MAGIC = b"GGUF"


class _Header:
    """A bounds-checked cursor over a GGUF file's bytes (little- or big-endian, as the version says)."""

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf, self.pos, self.end = buf, 4, "<"
        if struct.unpack_from("<I", buf, 4)[0] > 0xFFFF:  # a big-endian file's version reads huge in LE
            self.end = ">"

    def take(self, code: str, count: int = 1) -> tuple:
        size = struct.calcsize(self.end + code) * count
        if self.pos + size > len(self.buf):
            raise _Truncated
        out = struct.unpack_from(f"{self.end}{count}{code}", self.buf, self.pos)
        self.pos += size
        return out

    def string(self) -> str:
        (n,) = self.take("Q")
        if self.pos + n > len(self.buf):
            raise _Truncated
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", "replace")

    def value(self, vtype: int, key: str) -> object:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])[0]
        if vtype == 8:
            return self.string()
        if vtype == 9:
            item, n = self.take("I")[0], self.take("Q")[0]
            if item in _SCALARS:  # skipped whole: a tokenizer's scores are 100k+ floats
                self.take(_SCALARS[item], n)
                return None
            for _ in range(n):
                self.value(item, key)
            return None
        raise ValueError(f"value type {vtype} of key {key!r} is not a GGUF type")


def check_gguf(path: str | Path) -> None:
    """The file is a whole GGUF file: the magic bytes, a header that parses, and tensor data that ends
    within the file. Cheap (the header is read, the tensor data is not): a file cut short by a failed
    download or copy is told apart here, where gguf-py and transformers answer with a struct or reshape
    traceback.

    Raises:
        BackendError: one line naming the file, its size and what is wrong.
    """
    p, size = Path(path), Path(path).stat().st_size
    head = f"model.path={str(path)!r} ({size} bytes)"
    again = "download or copy it again"
    if size < 24:  # magic, version, two counts
        raise BackendError(f"{head} is truncated or not a GGUF file: shorter than a GGUF header; {again}")
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != MAGIC:
            raise BackendError(f"{head} is not a GGUF file: it starts with {bytes(buf[:4])!r}, a GGUF file with "
                               f"{MAGIC!r}")
        try:
            promised = _promised_size(_Header(buf))
        except _Truncated:
            raise BackendError(f"{head} is truncated: it ends inside its GGUF header; {again}") from None
        except (ValueError, KeyError) as e:
            raise BackendError(f"{head} is not a valid GGUF file: {e}") from None
    if promised > size:
        raise BackendError(f"{head} is truncated: its GGUF header promises {promised} bytes of header and tensor "
                           f"data; {again}")


def _promised_size(h: _Header) -> int:
    """Bytes the header says the file holds: the aligned end of the tensor infos plus the furthest tensor."""
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:  # the header is still walked; tensor sizes need gguf-py's table (require_packages says so)
        GGML_QUANT_SIZES, GGMLQuantizationType = None, None

    version, n_tensors, n_kv = h.take("I")[0], h.take("Q")[0], h.take("Q")[0]
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (readable: 2 and 3)")
    if n_tensors > len(h.buf) or n_kv > len(h.buf):  # each takes bytes: a count past the size is garbage
        raise ValueError(f"header counts {n_tensors} tensors and {n_kv} keys")
    align = 32
    for _ in range(n_kv):
        key = h.string()
        val = h.value(h.take("I")[0], key)
        if key == "general.alignment" and isinstance(val, int) and val > 0:
            align = val
    end = 0
    for _ in range(n_tensors):
        name = h.string()
        dims = h.take("Q", h.take("I")[0])
        gtype, offset = h.take("I")[0], h.take("Q")[0]
        if GGML_QUANT_SIZES is None:
            continue
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(gtype)]
        except (ValueError, KeyError):
            raise ValueError(f"tensor {name!r} has type {gtype}, not a GGML type") from None
        n = 1
        for d in dims:
            n *= d
        end = max(end, offset + n // block * type_size)
    return -(-h.pos // align) * align + end


# Bumped when what _dequantize writes changes, so a directory converted by an older version is not reused:
# "-v2": tied embeddings stored under the embedding's name (v1 stored lm_head.weight, which SGLang skips).
LAYOUT = "-v2"


def hf_dir_for(gguf: Path, root: Path | None = None) -> tuple[Path, str]:
    """(HF directory converted from `gguf`, the file's sha256): converted now unless already cached.

    Raises:
        BackendError: gguf/accelerate missing, the file truncated or not GGUF, or transformers cannot read it.
    """
    check_gguf(gguf)  # also where the run's file changed since (export, resume): one line, not a traceback
    base = Path(root) if root is not None else cache_dir() / "gguf"
    sha = _sha256(gguf, base)
    target = base / f"{sha}{LAYOUT}"
    if (target / ".complete").is_file():
        return target, sha
    require_packages(gguf)
    base.mkdir(parents=True, exist_ok=True)
    with _exclusive(base / f"{sha}.lock"):
        if not (target / ".complete").is_file():  # another process may have finished while we waited
            log.warning("converting %s (sha256 %s) to an HF directory at %s (once; dequantizing takes about "
                     "40 s for 135M parameters on 2 CPU cores)", gguf, sha[:12], target)
            _build(gguf, sha, target)
    return target, sha


_SHA_SEEN: dict[tuple, str] = {}


def _sha256(path: Path, base: Path) -> str:
    """The file's sha256, hashed once per machine (or shared cache) while the file's stat stays the same.

    Hashing reads the whole file (~2 s a GB here: a 16 GB file ~30 s), and every rank of every launch needs the
    sha (the converted directory's name, run.json's identity check), so it is kept under `<base>/sha/` (base:
    the conversions' folder, `<cache>/gguf`), keyed by the file's path, size, mtime (ns), inode and device, as
    git's index keys its hashes: any write to the file changes its mtime and so the key, and a changed file is
    hashed again.
    """
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    if key in _SHA_SEEN:
        return _SHA_SEEN[key]
    index = base / "sha" / hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    try:
        rec = json.loads(index.read_text())
        sha = rec["sha256"] if rec.get("key") == list(key) else None
    except (OSError, ValueError, KeyError, TypeError):
        sha = None
    if sha is None:
        sha = sha256_file(path)
        try:  # a cache that cannot be written (read-only home) costs the hash next time, nothing else
            index.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(index, json.dumps({"key": list(key), "sha256": sha}))
        except OSError as e:
            log.debug("GGUF sha256 not cached at %s: %s", index, e)
    _SHA_SEEN[key] = sha
    return sha


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes, also when the holder dies
        yield
    finally:
        os.close(fd)


def _build(gguf: Path, sha: str, target: Path) -> None:
    """Convert into a temp sibling, mark it complete, rename it into place (a leftover without the mark goes)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:16]}.", dir=target.parent))
    # mkdtemp makes 0700 and safetensors writes 0600, whatever the umask: a shared MEZO_ELASTIC_CACHE must
    # be readable as the umask allows, as mkdir and open() would have made them.
    mask = _umask()
    os.chmod(tmp, 0o777 & ~mask)
    try:
        _dequantize(gguf, tmp)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf), "sha256": sha}, indent=1) + "\n")
        (tmp / ".complete").write_text("ok\n")
        if target.exists() and not (target / ".complete").is_file():
            shutil.rmtree(target)  # a conversion that died before its rename cannot be here; a torn copy can
        try:
            os.rename(tmp, target)
        except OSError:  # another node renamed first: identical content
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask sets it, and another
    thread could create a file in between)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # the strictest value for the instant it is set
    os.umask(mask)
    return mask


def _dequantize(gguf: Path, out: Path) -> None:
    """transformers reads and dequantizes the file; its model refuses save_pretrained ("quantized with gguf"),
    so config, weights and tokenizer are written here. Not save_pretrained either way: under a process group
    transformers writes only on global rank 0, and any rank may be the converter."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    except (ValueError, OSError, KeyError, RuntimeError) as e:  # not GGUF, an architecture transformers cannot read
        raise BackendError(f"model.path={str(gguf)!r}: transformers cannot read this GGUF file: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain floats
    config.architectures = [type(model).__name__]  # SGLang picks the model class from it
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_file(untied_state(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(out)


def untied_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor stored once, under its FIRST name (the input embedding's, as
    save_pretrained does). safetensors' save_model keeps the alphabetically first name instead,
    lm_head.weight, and SGLang's Llama loader skips lm_head.weight when tie_word_embeddings is set: the
    embedding was never loaded (measured on an H200: mean completion NLL 10.80 = ln 49152, uniform, where
    HF gave 4.40)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            out[name] = t.contiguous()
    return out


def resolve(path: str) -> tuple[str, dict | None]:
    """(HF directory to load, {"path", "sha256"} of the GGUF file or None) for a `model.path` value."""
    gguf = find_gguf(path) if path else None
    if gguf is None:
        return path, None
    hf, sha = hf_dir_for(gguf)
    return str(hf), {"path": str(gguf), "sha256": sha}
