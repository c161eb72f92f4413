"""SGLang's in-process API, one adapter per API generation (no monkey-patching of SGLang).

The sequence mirrors sglang's own `sglang/benchmark/one_batch.py` (`bench_one_batch.py` before)
of the same release: ModelConfig.from_server_args -> ParallelState -> ModelRunner ->
alloc_memory_pool -> init_attention_backends; an EXTEND batch is Req -> ScheduleBatch.init_new ->
prepare_for_extend -> ForwardBatch.init_new -> ModelRunner.forward; KV slots are freed by clearing
both pools. Only what differs between releases lives here and in generate.py (Engine.generate's
prefill + decode loop, split out to keep Engine small; it names SGLang internals too); runner.py sees
`Engine`.

Supported: sglang >= 0.5.17, < 0.5.18 (the API generation where ModelRunner takes a ParallelState and
initialises torch.distributed itself). 0.5.23's generation (publish(server_args, role=...) and
bootstrap.init_parallel_runtime before ModelRunner) is not implemented: no machine here runs it, and
an adapter that was never run is worse than a clear error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from mezo_elastic.errors import BackendError
from mezo_elastic.runners.sglang import teardown
from mezo_elastic.runners.sglang.generate import generate as generate_tokens

SUPPORTED = ((0, 5, 17), (0, 5, 18))  # [lo, hi)
INSTALL = 'pip install "sglang==0.5.17"  (or: pip install "mezo_elastic[sglang]")'
log = logging.getLogger(__name__)


def _parse(version: str) -> tuple[int, ...]:
    """(major, minor, patch) from '0.5.17', '0.5.17.post1', '0.5.17rc1', '0.5.17-0trim'."""
    import re

    return tuple(int(x) for x in re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version).groups(default="0"))


def sglang_version() -> str:
    """The installed sglang version, or raise BackendError with the install command."""
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        raise BackendError(f"model.backend=sglang needs the sglang package, which is not installed; {INSTALL}") from None


def check_version(version: str | None = None) -> str:
    """Raise BackendError unless sglang's version is in the supported range; return it."""
    version = version or sglang_version()
    lo, hi = SUPPORTED
    if not lo <= _parse(version)[:3] < hi:
        raise BackendError(
            f"sglang {version} is not supported by model.backend=sglang; supported: "
            f">={'.'.join(map(str, lo))},<{'.'.join(map(str, hi))}; {INSTALL}"
        )
    return version


class _NoTreeCache(SimpleNamespace):
    """The tree cache ScheduleBatch wants: allocation only, no prefix reuse (as one_batch.py)."""

    def supports_swa(self) -> bool:
        return False

    def supports_mamba(self) -> bool:
        return False

    def is_chunk_cache(self) -> bool:
        return False

    def is_tree_cache(self) -> bool:
        return True

    def evict(self, params: Any) -> None:
        pass


def row_sums(flat: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Per request, the sum of its `rows` log-prob rows but the last (which predicts past the end).

    One device-to-host copy and the sums on the CPU (a few thousand values): no extra kernels or
    host syncs after the forward, and a fixed summation order (float64 index_add_ on the GPU is not).
    """
    vals = flat.cpu().double()
    lens = torch.tensor(rows, dtype=torch.int64)
    keep = torch.ones_like(vals)
    keep[lens.cumsum(0) - 1] = 0.0
    seq_of = torch.repeat_interleave(torch.arange(len(rows)), lens)
    return torch.zeros(len(rows), dtype=torch.float64).index_add_(0, seq_of, vals * keep)


@dataclass
class Engine:
    """A loaded SGLang ModelRunner plus the handles the runner needs (0.5.17 generation)."""

    model_runner: Any
    server_args: Any
    # The last logprob_sums batch, still allocated: MeZO scores the same batch twice a step (theta +
    # eps z, theta - eps z), and building it again costs ~2 ms of host time on the 1B bench batch.
    _kept: tuple | None = None
    graph_forwards: int = 0  # forwards that replayed a captured CUDA graph (decode, or prefill when enabled)
    # peft.method=lora: the id of the adapter resident in SGLang's LoRA pool (runners/sglang/lora.py);
    # every request carries it, so ForwardBatch.init_new prepares the batch with that adapter.
    lora_id: str | None = None
    memory: teardown.EngineMemory | None = None  # GPU memory around build and close (start_engine sets it)
    # seconds of each of start_engine's phases (the runner logs them): where a short run's wall-clock goes
    startup: dict[str, float] | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.model_runner.model

    @property
    def max_tokens(self) -> int:
        """Tokens the KV pool holds (one forward's prompt+completion tokens must fit)."""
        return int(self.model_runner.max_total_num_tokens)

    @property
    def max_requests(self) -> int:
        """Requests the req->token pool holds (one slot kept back, as SGLang pads slot 0)."""
        return int(self.model_runner.req_to_token_pool.size) - 1

    def clear(self) -> None:
        """Free every KV slot and request slot, the kept batch's too (no KV is ever reused: a kept batch
        recomputes and rewrites its own slots on every forward)."""
        self._kept = None
        self.model_runner.req_to_token_pool.clear()
        self.model_runner.token_to_kv_pool_allocator.clear()

    def _req(self, rid: int, ids: Sequence[int], start: int | None, prefix: torch.Tensor | None = None) -> Any:
        """One EXTEND request: `ids` whole, its first len(prefix) tokens' KV already at slots `prefix`,
        log-probs from position `start` on (None: no log-probs)."""
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        req = Req(rid=str(rid), origin_input_text="", origin_input_ids=array("q", ids),
                  sampling_params=SamplingParams(temperature=0, max_new_tokens=1), return_logprob=start is not None,
                  lora_id=self.lora_id)
        req.full_untruncated_fill_ids = req.origin_input_ids
        if start is not None:
            req.logprob_start_len = start
        if prefix is not None:
            req.prefix_indices = prefix  # what a radix-cache hit sets: KV slot of each prefix token
        req.set_extend_range(len(req.prefix_indices), len(req.origin_input_ids))
        return req

    def _run(self, fb: Any) -> Any:
        """ModelRunner.forward of a ForwardBatch -> its LogitsProcessorOutput (counts graph replays)."""
        out = self.model_runner.forward(fb)
        self.graph_forwards += bool(out.can_run_graph)
        return out.logits_output

    @contextlib.contextmanager
    def eager(self):
        """Within the block every forward runs eagerly, without the captured graphs (tests compare)."""
        mr = self.model_runner
        saved = mr.decode_cuda_graph_runner, mr.prefill_cuda_graph_runner
        mr.decode_cuda_graph_runner = mr.prefill_cuda_graph_runner = None
        try:
            yield
        finally:
            mr.decode_cuda_graph_runner, mr.prefill_cuda_graph_runner = saved

    def _forward(self, reqs: list) -> tuple[Any, Any]:
        """Run one EXTEND batch of `reqs`; (ScheduleBatch, LogitsProcessorOutput). Slots stay allocated."""
        batch, fb = self._prepare(reqs)
        return batch, self._run(fb)

    def _prepare(self, reqs: list) -> tuple[Any, Any]:
        """(ScheduleBatch, ForwardBatch) of one EXTEND batch of `reqs`, its KV and request slots allocated."""
        batch = self._schedule(reqs)
        return batch, self._forward_batch(batch)

    def _schedule(self, reqs: list) -> Any:
        """The EXTEND ScheduleBatch of `reqs`, prepared (KV and request slots allocated, inputs on the GPU)."""
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        mr = self.model_runner
        tree = _NoTreeCache(page_size=mr.server_args.page_size, device=mr.device,
                            token_to_kv_pool_allocator=mr.token_to_kv_pool_allocator)
        batch = ScheduleBatch.init_new(reqs=reqs, req_to_token_pool=mr.req_to_token_pool,
                                       token_to_kv_pool_allocator=mr.token_to_kv_pool_allocator, tree_cache=tree,
                                       model_config=mr.model_config, enable_overlap=False,
                                       spec_algorithm=SpeculativeAlgorithm.NONE)
        batch.prepare_for_extend()
        if batch.input_ids is None and getattr(batch, "prefill_input_ids_cpu", None) is not None:
            batch.input_ids = batch.prefill_input_ids_cpu.to(batch.device, non_blocking=True)
            batch.prefill_input_ids_cpu = None
        return batch

    def _forward_batch(self, batch: Any) -> Any:
        """The ForwardBatch ModelRunner.forward takes, of a prepared ScheduleBatch."""
        from sglang.srt.model_executor.forward_batch_info import ForwardBatch

        return ForwardBatch.init_new(batch, self.model_runner, return_hidden_states_before_norm=False)

    # Kept as a static method: tests and bench/profile_forward.py call Engine._row_sums.
    _row_sums = staticmethod(row_sums)

    @torch.no_grad()
    def logprob_sums(self, seqs: Sequence[Sequence[int]], starts: Sequence[int]) -> torch.Tensor:
        """One EXTEND forward; per sequence, sum of log p(token j | tokens < j) for j in (start, len).

        With logprob_start_len = s, SGLang returns len - s values per sequence: rows s .. len-1
        predict tokens s+1 .. len, the last one a padding token (left out of the sum).
        Returns float64 sums on the CPU.
        """
        key = (tuple(tuple(ids) for ids in seqs), tuple(starts))
        try:
            if self._kept is not None and self._kept[0] == key:
                fb = self._kept[1]  # the same tokens again (the other side of a MeZO step)
            else:
                self.clear()
                _, fb = self._prepare([self._req(i, ids, start) for i, (ids, start) in enumerate(zip(seqs, starts))])
            out = self._run(fb)
            self._kept = (key, fb)
            return self._row_sums(out.input_token_logprobs, [len(ids) - s for ids, s in zip(seqs, starts)])
        except BaseException:
            self.clear()  # free KV and request slots when the forward failed
            raise

    @torch.no_grad()
    def shared_prompt_sums(self, prompts: Sequence[Sequence[int]],
                           choices: Sequence[Sequence[Sequence[int]]]) -> list[torch.Tensor]:
        """Per prompt, the summed log-prob of each of its candidates; each prompt's KV computed once.

        Two EXTEND forwards. The first runs every prompt but its last token (no log-probs) and
        keeps the KV slots. The second has one request per candidate, prompt + candidate, whose
        prefix is its prompt's slots (as a radix-cache hit would set it), so it computes only
        [last prompt token] + candidate, with log-probs from the last prompt token on. A prompt of P
        tokens with k candidates of length L costs P - 1 + k(L + 1) positions instead of k(P + L).
        """
        mr = self.model_runner
        self.clear()
        try:
            heads = [(b, p[:-1]) for b, p in enumerate(prompts) if len(p) > 1]
            slots: dict[int, torch.Tensor] = {}
            if heads:
                batch, _ = self._forward([self._req(b, h, None) for b, h in heads])
                for req, (b, h) in zip(batch.reqs, heads):
                    slots[b] = mr.req_to_token_pool.req_to_token[req.req_pool_idx, : len(h)].to(torch.int64)
            reqs, rows = [], []
            for b, (p, cs) in enumerate(zip(prompts, choices)):
                for c in cs:
                    ids = list(p) + list(c)
                    reqs.append(self._req(len(reqs), ids, len(p) - 1, slots.get(b)))
                    rows.append(len(c) + 1)
            _, out = self._forward(reqs)
            return list(self._row_sums(out.input_token_logprobs, rows).split([len(cs) for cs in choices]))
        finally:
            self.clear()

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new: int, temperature: float = 0.0,
                 seeds: Sequence[int] = (), eos_ids: Sequence[int] = (), eager: bool = False,
                 logits: list | None = None) -> list[list[int]]:
        """Generate up to `max_new` tokens per prompt: one EXTEND (prefill) forward, then DECODE forwards.

        `eager` runs every forward without the graphs (tests compare both); `logits`, when a list,
        receives each step's next-token logits. Every KV and request slot is free again on return.
        The loop lives in generate.py (generate.generate).
        """
        return generate_tokens(self, prompts, max_new, temperature, seeds, eos_ids, eager, logits)

    def close(self) -> None:
        """Give the engine's GPU memory back (weights, KV and request pools, LoRA pool, CUDA graphs) and
        reset SGLang's process-wide state; torch.distributed's default group stays (teardown.py)."""
        teardown.close_engine(self)

    def freed_report(self) -> teardown.EngineMemory | None:
        """GPU memory before build, after build and after close (`.line()` says it in one line)."""
        return self.memory


def make_server_args(fields: dict[str, Any]) -> Any:
    """ServerArgs from MeZO's fields; a field this sglang lacks is an error naming it."""
    from sglang.srt.server_args import ServerArgs

    known = set(ServerArgs.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise BackendError(f"sglang {sglang_version()} ServerArgs has no field(s) {unknown}; supported: {INSTALL}")
    return ServerArgs(**fields)


def start_engine(server_args: Any, gpu_id: int, tp_rank: int, nccl_port: int) -> Engine:
    """Build the ModelRunner as one_batch.py's load_model does (CUDA graphs as server_args say).

    torch.distributed's default group must already be this replica's TP world (size tp_size) or
    absent; SGLang then builds its TP groups on it.
    """
    t = [time.monotonic()]
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.distributed.parallel_state_wrapper import ParallelState
    from sglang.srt.layers.dp_attention import compute_dp_attention_world_info
    from sglang.srt.layers.moe import initialize_moe_config
    from sglang.srt.layers.quantization.fp4_utils import initialize_fp4_gemm_config
    from sglang.srt.layers.quantization.fp8_utils import initialize_fp8_gemm_config
    from sglang.srt.model_executor.model_runner import ModelRunner

    t.append(time.monotonic())
    sa = server_args
    memory = teardown.EngineMemory.before_build(gpu_id)
    initialize_moe_config(sa)
    initialize_fp8_gemm_config(sa)
    initialize_fp4_gemm_config(sa)
    model_config = ModelConfig.from_server_args(sa)
    attn_tp_rank, attn_tp_size, attn_dp_rank, attn_dp_size = compute_dp_attention_world_info(
        sa.enable_dp_attention, tp_rank, sa.tp_size, sa.dp_size, sa.attn_cp_size)
    ps = ParallelState(
        tp_rank=tp_rank, tp_size=sa.tp_size, pp_rank=0, pp_size=1, dp_rank=None, dp_size=sa.dp_size,
        attn_tp_rank=attn_tp_rank, attn_tp_size=attn_tp_size, attn_cp_rank=0, attn_cp_size=sa.attn_cp_size,
        attn_dp_rank=attn_dp_rank, attn_dp_size=attn_dp_size, moe_ep_rank=tp_rank // (sa.tp_size // sa.ep_size),
        moe_ep_size=sa.ep_size, moe_dp_rank=None, moe_dp_size=sa.moe_dp_size, dcp_size=sa.dcp_size, gpu_id=gpu_id,
    )
    mr = ModelRunner(model_config=model_config, mem_fraction_static=sa.mem_fraction_static, gpu_id=gpu_id, ps=ps,
                     nccl_port=nccl_port, server_args=sa)
    t.append(time.monotonic())
    mr.alloc_memory_pool()
    mr.init_attention_backends()
    t.append(time.monotonic())
    # With disable_cuda_graph every phase's backend is "disabled": this captures nothing and only
    # sets up the eager runner the forward path dispatches to. Generation turns the decode graphs on.
    mr.init_cuda_graphs()
    if sa.disable_cuda_graph and mr.decode_cuda_graph_runner is not None:
        raise BackendError("sglang captured a decode CUDA graph although disable_cuda_graph=True")
    t.append(time.monotonic())
    memory.built()
    phases = ("import", "model_runner", "pools", "cuda_graphs")  # model_runner: config, weights, distributed
    engine = Engine(mr, sa, memory=memory, startup={k: b - a for k, a, b in zip(phases, t, t[1:])})
    teardown.opened(engine)
    return engine
