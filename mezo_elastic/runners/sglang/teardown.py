"""An SGLang engine's GPU memory given back on close, and the record of what came back.

SGLang 0.5.17 runs one engine a process: its own code never tears a ModelRunner down (its servers end
the scheduler process; `cleanup_dist_env_and_memory` only destroys the parallel groups and empties
torch's cache), and it keeps process-wide state next to the runner: the CUDA-graph memory pool handle,
named buffers and the expert-location slot (runtime_context's Resources), the graph input-buffer pool
(model_executor.input_buffers), rotary-embedding modules cached by shape (rotary_embedding.factory),
its parallel groups (distributed.parallel_state). Dropping our references is not enough while any of it
still reaches the runner (a closed engine left ~43 GiB on an H200, 2026-12-01), so close_engine:
  1. resets every captured CUDA graph (the graph backends' own cleanup(), then CUDAGraph.reset() on any
     graph still reachable), so the graphs' private memory pool can be released;
  2. frees the storage of what only this engine uses, whoever still holds a reference: the KV pool, the
     request-to-token pool, the KV allocator's tables, the LoRA pool, the weights. resize_(0) keeps the
     tensor objects and gives their memory back (FSDP frees parameters the same way); buffers that
     other engines may share (attention workspaces, the rope cache) are only dropped, never resized;
  3. clears the ModelRunner's attributes: lambdas and back-references make cycles that would keep the
     graph runners and attention backends until some later gc run;
  4. destroys SGLang's parallel groups (never torch.distributed's default group: the runner destroys it
     only when it created it) and resets SGLang's process-wide state to a fresh process's;
  5. collects, empties torch's cache and measures.
EngineMemory records torch.cuda.mem_get_info around build and close. What closed engines did not give
back is remembered per process, so the next engine's memory check can say so in one line.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)
GiB = 1 << 30
MiB = 1 << 20
WARN_BYTES = 1 * GiB  # a close that leaves more than this in use logs the largest live CUDA tensors
# ModelRunner attributes holding what only this engine uses (its tensors are freed in place on close).
OWNED_POOLS = ("token_to_kv_pool", "req_to_token_pool", "token_to_kv_pool_allocator", "_unified_memory_pool")
GRAPH_RUNNERS = ("decode_cuda_graph_runner", "prefill_cuda_graph_runner")


def gpu_free(device: int | torch.device) -> tuple[int, int]:
    """(free, total) bytes on `device` as SGLang measures it: after collecting and emptying torch's cache."""
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info(device)


@dataclass
class EngineMemory:
    """GPU memory around one engine's life (bytes, from torch.cuda.mem_get_info), and what close freed."""

    device: int
    total: int
    free_before_build: int
    free_after_build: int = 0
    free_after_close: int | None = None
    allocated_after_close: int = 0  # torch tensors still alive in this process after the close
    reserved_after_close: int = 0  # ... plus torch's cache
    storage_freed: int = 0  # bytes close_engine freed by resizing the engine's own storages
    graphs_reset: int = 0
    not_freed: list[str] = field(default_factory=list)  # what close could not free, one entry each

    @classmethod
    def before_build(cls, device: int) -> EngineMemory:
        free, total = gpu_free(device)
        return cls(device, total, free)

    def built(self) -> None:
        self.free_after_build = torch.cuda.mem_get_info(self.device)[0]

    def closed(self) -> None:
        """Measure after close (again after the runner dropped its own views: the last call counts)."""
        self.free_after_close = gpu_free(self.device)[0]
        self.allocated_after_close = torch.cuda.memory_allocated(self.device)
        self.reserved_after_close = torch.cuda.memory_reserved(self.device)

    @property
    def engine_bytes(self) -> int:
        """What building the engine took (weights, KV pool, graphs, SGLang's buffers)."""
        return self.free_before_build - self.free_after_build

    @property
    def not_returned(self) -> int:
        """Bytes still in use after close that were free before the build (0 while open)."""
        if self.free_after_close is None:
            return 0
        return max(0, self.free_before_build - self.free_after_close)

    def line(self) -> str:
        """One line for logs and test output."""
        g = lambda b: f"{b / GiB:.2f}"
        head = (f"SGLang engine memory (GPU {self.device}, {g(self.total)} GiB): free {g(self.free_before_build)} GiB "
                f"before build, {g(self.free_after_build)} after (the engine took {g(self.engine_bytes)} GiB)")
        if self.free_after_close is None:
            return head + "; open"
        return (f"{head}, {g(self.free_after_close)} after close: {self.not_returned / MiB:.0f} MiB not given back "
                f"(torch: {self.allocated_after_close / MiB:.0f} MiB in live tensors, "
                f"{(self.reserved_after_close - self.allocated_after_close) / MiB:.0f} MiB cached); "
                f"{g(self.storage_freed)} GiB of engine storage freed in place, {self.graphs_reset} CUDA graphs reset"
                + (f"; not freed: {'; '.join(self.not_freed)}" if self.not_freed else ""))


# ---- the process's record: engines open now, and what closed ones did not give back ----
_OPEN: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> Engine (dropped when collected)
_CLOSED: list[EngineMemory] = []


def opened(engine: Any) -> None:
    """Note a built engine (Engine.memory set) as open in this process."""
    _OPEN[id(engine)] = engine


def held_in_process() -> tuple[int, int, int]:
    """(engines open, bytes they took, bytes engines closed in this process did not give back)."""
    open_ = [e for e in _OPEN.values() if e.model_runner is not None]
    return len(open_), sum(e.memory.engine_bytes for e in open_), sum(m.not_returned for m in _CLOSED)


# ---- finding what the engine owns ----
_CONTAINERS = (list, tuple, dict, set, frozenset)


def _children(obj: Any) -> list:
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, _CONTAINERS):
        return list(obj)
    out = list(vars(obj).values()) if isinstance(getattr(obj, "__dict__", None), dict) else []
    for cls in type(obj).__mro__:
        slots = getattr(cls, "__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__"):
                out.append(getattr(obj, name, None))
    return out


def reachable(roots: Iterable[Any], depth: int, descend: Callable[[Any], bool]) -> Iterator[Any]:
    """Objects reachable from `roots` within `depth` steps through attributes and containers, entering
    only containers and objects `descend` accepts (tensors are yielded, never entered)."""
    seen: set[int] = set()
    frontier = [(r, 0) for r in roots]
    while frontier:
        obj, d = frontier.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if d < depth and not isinstance(obj, torch.Tensor) and (isinstance(obj, _CONTAINERS) or descend(obj)):
            frontier.extend((c, d + 1) for c in _children(obj))


def is_sglang(obj: Any) -> bool:
    return type(obj).__module__.startswith("sglang.")


def free_storages(tensors: Iterable[Any], device_type: str = "cuda") -> tuple[int, list[str]]:
    """Give back the memory of every distinct storage among `tensors` on `device_type` (resize_(0)).

    Returns (bytes freed, one entry per storage that could not be resized, e.g. memory torch did not
    allocate). The tensors stay valid objects of no storage: using one afterwards is an error.
    """
    done: set[int] = set()
    freed, failed = 0, []
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type != device_type:
            continue
        st = t.untyped_storage()
        n = st.nbytes()
        if n == 0 or st.data_ptr() in done:
            continue
        done.add(st.data_ptr())
        try:
            st.resize_(0)
            freed += n
        except RuntimeError as e:
            failed.append(f"{tuple(t.shape)} {t.dtype} ({n / MiB:.0f} MiB): {str(e).splitlines()[0]}")
    return freed, failed


def _reset_graphs(mr: Any) -> int:
    """Drop every CUDA graph the runner captured; returns how many graphs were reset."""
    runners = [getattr(mr, name, None) for name in GRAPH_RUNNERS]
    for runner in runners:
        cleanup = getattr(getattr(runner, "backend", None), "cleanup", None)
        if callable(cleanup):
            cleanup()  # SGLang's own: drops its graphs, outputs and pool handle
    graphs = [g for g in reachable(runners, 6, is_sglang) if isinstance(g, torch.cuda.CUDAGraph)]
    for g in graphs:
        g.reset()
    return len(graphs)


def _owned_tensors(mr: Any) -> list[torch.Tensor]:
    """The tensors only this engine uses: its pools' and LoRA pool's (a few levels in) and its weights."""
    lora = getattr(getattr(mr, "lora_manager", None), "memory_pool", None)
    roots = [getattr(mr, name, None) for name in OWNED_POOLS] + [lora]
    pools = [t for root in roots if root is not None
             for t in reachable(_children(root), 3, lambda o: False) if isinstance(t, torch.Tensor)]
    model = getattr(mr, "model", None)
    return pools + (list(model.parameters()) if isinstance(model, torch.nn.Module) else [])


def _guarded(memory: EngineMemory, what: str, fn: Callable[[], Any]) -> Any:
    """Run one teardown step; a step that fails is written into the report (and the log line) and the
    next steps still run: a close must not mask the error that led to it, nor fail a finished run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 (SGLang internals: whatever they raise is reported, not raised)
        memory.not_freed.append(f"{what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None


def dismantle(mr: Any, memory: EngineMemory) -> None:
    """Steps 1-3 of the module docstring on one ModelRunner (unusable afterwards)."""
    try:
        torch.cuda.synchronize()  # nothing queued may still use what is freed below
    except RuntimeError as e:  # a broken CUDA context (device-side assert): only drop the references
        memory.not_freed.append(f"nothing freed in place, CUDA failed: {str(e).splitlines()[0]}")
        vars(mr).clear()
        return
    memory.graphs_reset = _guarded(memory, "CUDA graphs", lambda: _reset_graphs(mr)) or 0
    freed = _guarded(memory, "engine storages", lambda: free_storages(_owned_tensors(mr)))
    if freed is not None:
        memory.storage_freed = freed[0]
        memory.not_freed += freed[1]
    vars(mr).clear()


def destroy_sglang_groups() -> None:
    """SGLang's parallel groups (TP, PP, ..., and its world coordinator), not the default group."""
    from sglang.srt.distributed import parallel_state as ps

    ps.destroy_model_parallel()
    if ps._WORLD is not None:  # destroy_distributed_environment would also destroy the default group
        ps._WORLD.destroy()
        ps._WORLD = None
    ps._MODEL_PARALLEL_GROUP_TIMEOUT = None


def reset_sglang_state() -> None:
    """SGLang's process-wide state back to a fresh process's (step 4 of the module docstring).

    reset_context is SGLang's own unit-test teardown: a fresh Resources (graph pool handle, named
    buffers, expert-location slot: a second MoE engine asserts it is empty) and published config.
    """
    from sglang.srt import runtime_context
    from sglang.srt.layers.rotary_embedding import factory as rope
    from sglang.srt.model_executor import forward_context, input_buffers

    destroy_sglang_groups()
    forward_context.set_forward_context(None)
    # Graph input buffers are pooled process-wide by (name, size, dtype): a later engine would capture
    # on this one's stale contents (KV slot indices past its own pool: a device-side assert, H200).
    input_buffers._forward_input_buffer_pool.clear()
    rope._ROPE_DICT.clear()  # rotary modules (with their cos/sin cache on the GPU) cached by shape
    runtime_context.reset_context()


def _holders(obj: Any, skip: set[int]) -> list[str]:
    """Type names of what references `obj` (an instance's __dict__ named by its owner's class)."""
    names = set()
    for r in gc.get_referrers(obj):
        if id(r) in skip:
            continue
        if isinstance(r, dict):
            owners = [type(o).__qualname__ for o in gc.get_referrers(r) if getattr(o, "__dict__", None) is r]
            names.update(owners or ["dict"])
        else:
            names.add(type(r).__qualname__)
    return sorted(names - {"frame"})[:4]


def largest_cuda_tensors(n: int = 5) -> list[str]:
    """The `n` largest CUDA storages that live Python tensors still hold, and who holds them: what a leak
    consists of (logged when a close leaves more than WARN_BYTES in use)."""
    objs = gc.get_objects()
    sizes: dict[int, tuple[int, int]] = {}  # storage pointer -> (bytes, index of one tensor in objs)
    for i, obj in enumerate(objs):
        if not issubclass(type(obj), torch.Tensor):  # type(), not isinstance: no proxy's __class__ runs
            continue
        try:
            st = obj.untyped_storage() if obj.is_cuda else None
        except (RuntimeError, NotImplementedError):  # tensors without storage (meta, some subclasses)
            st = None
        if st is not None and st.nbytes():
            sizes[st.data_ptr()] = (st.nbytes(), i)
    out = []
    for nbytes, i in sorted(sizes.values(), reverse=True)[:n]:
        t = objs[i]
        out.append(f"{nbytes / MiB:.0f} MiB {tuple(t.shape)} {t.dtype} held by {_holders(t, {id(objs)})}")
    return out


def after_failed_build() -> None:
    """A build that raised: SGLang's groups and process-wide state reset (when no other engine is open),
    so the process can build again; the half-built runner goes with the exception. Never raises: the
    build's own error is the one to see."""
    if held_in_process()[0] == 0:
        try:
            reset_sglang_state()
        except Exception as e:  # noqa: BLE001 (the build's error is re-raised by the caller)
            log.warning("after a failed SGLang engine build, resetting SGLang's state failed too: %s", e)


def close_engine(engine: Any) -> None:
    """Engine.close: free the engine's GPU memory and SGLang's process-wide state, record what came back."""
    mr, engine.model_runner, engine._kept = engine.model_runner, None, None
    if mr is None:
        return
    memory = engine.memory or EngineMemory(torch.cuda.current_device(), 0, 0)  # an Engine not from start_engine
    dismantle(mr, memory)
    del mr
    if held_in_process()[0] == 0:  # SGLang's groups and context are shared by every engine of the process
        _guarded(memory, "SGLang's process-wide state", reset_sglang_state)
    _guarded(memory, "measuring after close", memory.closed)
    _CLOSED.append(memory)
    if memory.not_returned > WARN_BYTES:
        log.warning("%s; largest live CUDA tensors: %s", memory.line(), largest_cuda_tensors())
    else:
        log.info("%s", memory.line())
