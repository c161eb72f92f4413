"""GGUF in: `model.path` may name a .gguf file (or a directory holding one); both backends load HF directories,
so the file is dequantized once, through transformers' GGUF reader, into an HF safetensors directory.

Where: `<cache>/gguf/<sha256 of the file>/` (cache: MEZO_ELASTIC_CACHE, else $XDG_CACHE_HOME/mezo_elastic, else
~/.cache/mezo_elastic), so the same file is converted once per machine (or shared cache) whatever its name or
directory, and a changed file gets a new directory. How: the first rank to take `<sha256>.lock` (an flock)
converts into a temp sibling and renames it into place; the others wait on the lock, then load the result.
On a shared filesystem whose flock does not span nodes, two nodes may both convert: the rename still lets only
one complete directory in (the same bytes either way). Weights are saved in float32, the values the GGUF's
dequantization gives (model.dtype converts at load).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mezo_elastic.errors import BackendError, ConfigError
from mezo_elastic.state.checkpoint import sha256_file
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


# Bumped when what _dequantize writes changes, so a directory converted by an older version is not reused:
# "-v2": tied embeddings stored under the embedding's name (v1 stored lm_head.weight, which SGLang skips).
LAYOUT = "-v2"


def hf_dir_for(gguf: Path, root: Path | None = None) -> tuple[Path, str]:
    """(HF directory converted from `gguf`, the file's sha256): converted now unless already cached.

    Raises:
        BackendError: gguf/accelerate missing, or transformers cannot read the file.
    """
    sha = _sha256(gguf)
    base = Path(root) if root is not None else cache_dir() / "gguf"
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


_SHA_SEEN: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """The file's sha256, hashed once per process while its size and mtime stay (a 16 GB file takes ~30 s)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_SEEN:
        _SHA_SEEN[key] = sha256_file(path)
    return _SHA_SEEN[key]


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
    try:
        _dequantize(gguf, tmp)
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
