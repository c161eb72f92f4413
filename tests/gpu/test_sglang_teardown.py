"""Engines come and go in one process: close() gives the GPU memory back, a second engine of the same
size starts and passes the same parity check.

For an engine with decode CUDA graphs (the reward objective) and one with a LoRA pool (the two kinds a
closed engine left ~43-47 GiB behind on an H200, 2026-12-01), twice each in one process, at
mem_fraction_static=0.3 (a ~42 GiB KV pool on an H200):
  - after close(), torch.cuda.mem_get_info's free memory is back within TOLERANCE of what it was
    before the build (the numbers are printed: EngineMemory.line());
  - the second engine gets the same KV pool as the first (within 1 %) and scores the same batch as the
    HF model on the same weights within the parity tolerances of test_sglang_parity.py; with graphs it
    also generates the first engine's greedy tokens.
    PYTHONPATH=. python -m pytest -q -s -m gpu tests/gpu/test_sglang_teardown.py
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("sglang", reason="needs sglang (pip install 'sglang==0.5.17')")

import sglang_models as models  # noqa: E402
from test_sglang_parity import _assert_same_losses  # noqa: E402

from mezo_elastic.config import Config, ModelConfig, PeftConfig  # noqa: E402
from mezo_elastic.runners.base import GenerateRequest, GenerationSettings  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402
from mezo_elastic.runners.sglang.runner import SGLangRunner  # noqa: E402
from mezo_elastic.runners.sglang.teardown import MiB, largest_cuda_tensors  # noqa: E402

NAME = "llama32_tied"
TOLERANCE = 512 * MiB  # CUDA context, cuBLAS workspaces, loaded kernels: per process, not per engine
CASES = {"decode_graphs": None, "lora": PeftConfig(method="lora", targets="q_proj,v_proj")}


def _cfg(path, case: str) -> Config:
    cfg = models.sglang_cfg(path)
    if case == "decode_graphs":
        cfg.data.objective, cfg.data.micro_batch = "reward", 16
    else:
        cfg.peft = CASES[case]
    return cfg


@pytest.mark.parametrize("case", sorted(CASES))
def test_close_gives_the_memory_back_and_a_second_engine_starts(case, tmp_path):
    path = models.save_random_model(models.TINY[NAME], tmp_path / NAME, seed=1)
    dev = torch.device("cuda", 0)
    hf = HFRunner(Config(model=ModelConfig(backend="hf", path=str(path), dtype="bfloat16", device="cuda"),
                         peft=CASES[case] or PeftConfig()), dev, str(path))
    reqs = models.random_requests(12, models.TINY[NAME]["vocab_size"], seed=3)
    prompts = [GenerateRequest(tuple(r.prompt_ids[:8]), seed=i) for i, r in enumerate(reqs)]
    hf.score(reqs)  # HF's own one-time CUDA state (cuBLAS handles) belongs to the baseline
    pools, generated = [], []
    for i in range(2):
        sg = SGLangRunner(models.single_ctx(), _cfg(path, case), dev, str(path))
        pools.append(sg.engine.max_tokens)
        _assert_same_losses(hf, sg, reqs, f"{case} engine {i + 1}")
        if case == "decode_graphs":
            assert sg.engine.model_runner.decode_cuda_graph_runner is not None
            generated.append(sg.generate(prompts, GenerationSettings(max_new_tokens=8)))
        sg.close()
        report = sg.freed_report()
        print(f"\n{case} engine {i + 1}: KV pool {pools[-1]} tokens; {report.line()}")
        leak = "" if report.not_returned <= TOLERANCE else f"; largest live CUDA tensors: {largest_cuda_tensors()}"
        assert report.not_returned <= TOLERANCE, report.line() + leak
        assert report.engine_bytes > 10 * 2**30, "the engine took less than its KV pool should: nothing was measured"
    assert abs(pools[1] - pools[0]) <= 0.01 * pools[0], f"KV pools of {pools} tokens: the second engine is smaller"
    if generated:
        assert generated[0] == generated[1]
    hf.close()
