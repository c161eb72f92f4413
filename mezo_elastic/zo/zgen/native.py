"""The compiled Philox path: philox.c built at first use with the system C compiler, loaded by ctypes.

No build step at install: the first CPU sweep compiles philox.c (about a second) into a per-user
cache folder (MEZO_ELASTIC_CACHE, else $XDG_CACHE_HOME/mezo_elastic, else ~/.cache/mezo_elastic),
named by a hash of the source and flags, written atomically so concurrent ranks do not collide.
Without a compiler, or with MEZO_ELASTIC_NATIVE=0, `library()` is None and the torch ops of
zgen.philox_torch generate the same z (tests check both paths bit for bit).

The C code is integer math plus exact float steps (-ffp-contract=off, no -ffast-math), so its
output does not depend on the compiler or the instruction set it picks at run time.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("philox.c")
CFLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-std=c99"]
ENV_SWITCH = "MEZO_ELASTIC_NATIVE"  # "0": never compile or load; the torch ops generate z
_STATE: dict[str, object] = {}  # "lib": the loaded library or None, "why": why not
MIN_PARALLEL = 1 << 17  # elements below which one thread does the whole fill (thread hand-off costs more)
# Elements a counter gives per C function: the parallel threshold counts elements, not counters, since a
# rademacher32 counter is 32x the output of the others.
COUNTER_ELEMS = {"philox_words": 4, "gauss_inputs": 4, "rademacher": 4, "rademacher32": 128}


def enabled() -> bool:
    """False when MEZO_ELASTIC_NATIVE=0 forces the torch path."""
    return os.environ.get(ENV_SWITCH, "1") != "0"


def cache_dir() -> Path:
    """This package's cache folder: MEZO_ELASTIC_CACHE, else $XDG_CACHE_HOME/mezo_elastic, else ~/.cache/mezo_elastic."""
    root = os.environ.get("MEZO_ELASTIC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mezo_elastic")
    return Path(root)


def _compile(cc: str, target: Path) -> None:
    """Compile SOURCE to `target` through a temporary file renamed into place (atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run([cc, *CFLAGS, str(SOURCE), "-o", tmp], check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        _STATE["why"] = "no C compiler (cc/gcc) on PATH"
        return None
    tag = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *CFLAGS]).encode()).hexdigest()[:16]
    target = cache_dir() / f"philox-{tag}.so"
    try:
        if not target.exists():
            _compile(cc, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        err = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()
        _STATE["why"] = f"compiling {SOURCE.name} with {cc} failed: {e}" + (f": {err[0]}" if err else "")
        return None
    for fn in COUNTER_ELEMS:
        f = getattr(lib, fn)
        f.restype = None  # (n, first, count, k0, k1, out slot, output[, output]): plain addresses
        f.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * (7 if fn == "gauss_inputs" else 6)
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library, compiled on first use; None if disabled or no compiler (see `why_not`)."""
    if not enabled():
        return None
    if "lib" not in _STATE:
        _STATE["lib"] = _load()
    return _STATE["lib"]  # type: ignore[return-value]


def why_not() -> str | None:
    """Why the compiled path is not used, or None when it is."""
    if not enabled():
        return f"{ENV_SWITCH}=0"
    return None if library() is not None else str(_STATE.get("why"))


_POOL: list[ThreadPoolExecutor] = []


def _pool(threads: int) -> ThreadPoolExecutor:
    if not _POOL or _POOL[0]._max_workers != threads:  # noqa: SLF001 - resize on set_num_threads
        _POOL[:] = [ThreadPoolExecutor(threads, thread_name_prefix="mezo-philox")]
    return _POOL[0]


def _split(ranges: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """`ranges` cut into `parts` lists of about equal counters (a range may be cut in two)."""
    count = ranges[1]
    end = torch.cumsum(count, 0)
    start = end - count
    total = int(end[-1])
    out = []
    for k in range(parts):
        lo, hi = total * k // parts, total * (k + 1) // parts
        a, b = torch.clamp(start, min=lo), torch.clamp(end, max=hi)
        keep = b > a
        sub = ranges[:, keep].contiguous()
        skip = (a - start)[keep]
        sub[0] += skip  # first counter
        sub[1] = (b - a)[keep]
        sub[4] += skip  # output slot
        out.append(sub)
    return out


def _call(f, ranges: torch.Tensor, outs: list[torch.Tensor]) -> None:
    n = ranges.shape[1]
    base = ranges.data_ptr()
    f(n, *(base + 8 * n * i for i in range(5)), *(o.data_ptr() for o in outs))


def fill(fn: str, ranges: torch.Tensor, outs: list[torch.Tensor]) -> None:
    """Run C function `fn` over `ranges` into `outs` (contiguous CPU tensors).

    ranges: contiguous int64 [5, n]: rows first counter, count, k0, k1, output slot (a slot holds one
    counter's output: COUNTER_ELEMS[fn] elements). Splits the counters over torch.get_num_threads()
    threads when there is enough work, so the fill uses the same cores as the torch ops around it
    (ctypes releases the GIL during the call).
    """
    lib = library()
    assert lib is not None, "fill() without the compiled library"
    assert ranges.dtype == torch.int64 and ranges.is_contiguous() and all(o.is_contiguous() for o in outs)
    f = getattr(lib, fn)
    threads = torch.get_num_threads()
    if threads <= 1 or int(ranges[1].sum()) * COUNTER_ELEMS[fn] < MIN_PARALLEL:
        _call(f, ranges, outs)
        return
    jobs = [_pool(threads).submit(_call, f, sub, outs) for sub in _split(ranges, threads)]
    for j in jobs:
        j.result()
