"""What SGLang engine teardown frees and what it leaves alone, on CPU tensors (the GPU test,
tests/gpu/test_sglang_teardown.py, measures the memory on a real engine)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from mezo_elastic.runners.sglang.teardown import (
    EngineMemory,
    GiB,
    _owned_tensors,
    free_storages,
    reachable,
)


def _fake_runner():
    """A ModelRunner's shape: pools of tensors (lists, dicts of lists), a model, an attention backend."""
    kv = SimpleNamespace(k_buffer=[torch.zeros(64, 4) for _ in range(2)], v_buffer=[torch.zeros(64, 4) for _ in range(2)],
                         size=64)
    req = SimpleNamespace(req_to_token=torch.zeros(8, 16, dtype=torch.int32))
    alloc = SimpleNamespace(free_pages=torch.arange(64), _kvcache=kv)
    lora_pool = SimpleNamespace(A_buffer={"qkv_proj": [torch.zeros(2, 8, 4)]}, B_buffer={"qkv_proj": [torch.zeros(2, 4, 8)]})
    model = torch.nn.Linear(4, 4)
    model.register_buffer("cos_sin_cache", torch.ones(16))  # may be shared through SGLang's rope cache: kept
    shared = torch.ones(32)  # an attention workspace another engine could share: kept
    return SimpleNamespace(token_to_kv_pool=kv, req_to_token_pool=req, token_to_kv_pool_allocator=alloc,
                           lora_manager=SimpleNamespace(memory_pool=lora_pool), model=model,
                           attn_backend=SimpleNamespace(workspace=shared), shared=shared)


def test_only_what_the_engine_owns_alone_is_freed():
    mr = _fake_runner()
    views = [mr.token_to_kv_pool.k_buffer[0][3:9], mr.model.weight.view(-1)]  # views die with their storage
    owned = _owned_tensors(mr)
    freed, failed = free_storages(owned + views, device_type="cpu")
    assert not failed
    expected = 4 * (64 * 4 * 4) + 8 * 16 * 4 + 64 * 8 + 2 * (2 * 8 * 4 * 4) + (16 + 4) * 4
    assert freed == expected  # every pool buffer, the LoRA pool and the weights once each (views add nothing)
    for t in [*mr.token_to_kv_pool.k_buffer, mr.req_to_token_pool.req_to_token, mr.model.weight, mr.model.bias,
              mr.lora_manager.memory_pool.A_buffer["qkv_proj"][0]]:
        assert t.untyped_storage().nbytes() == 0
    assert mr.model.cos_sin_cache.untyped_storage().nbytes() == 16 * 4
    assert mr.shared.untyped_storage().nbytes() == 32 * 4
    assert free_storages(owned, device_type="cpu") == (0, [])  # a second close frees nothing twice


def test_reachable_enters_only_what_it_is_told_to():
    inner = SimpleNamespace(t=torch.zeros(1))
    outer = SimpleNamespace(a=[inner], b={"k": (torch.zeros(2),)})
    found = list(reachable([outer], 4, lambda o: o is outer))
    assert any(o is outer.b["k"][0] for o in found) and any(o is inner for o in found)
    assert not any(o is inner.t for o in found)  # inner is reached, not entered
    assert len(list(reachable([outer], 4, lambda o: True))) == len(found) + 1


def test_memory_report_line():
    m = EngineMemory(device=0, total=140 * GiB, free_before_build=139 * GiB, free_after_build=97 * GiB)
    assert m.engine_bytes == 42 * GiB and m.not_returned == 0 and m.line().endswith("; open")
    m.free_after_close, m.allocated_after_close, m.reserved_after_close = 139 * GiB - 300 * 2**20, 10 * 2**20, 30 * 2**20
    assert m.not_returned == 300 * 2**20
    line = m.line()
    assert "the engine took 42.00 GiB" in line and "300 MiB not given back" in line and "20 MiB cached" in line
