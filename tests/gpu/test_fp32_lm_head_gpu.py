"""model.fp32_lm_head on a GPU: float32 logits from the bf16 head's GEMM on both backends, through the scoring
graphs (graph == eager after sweeps), and SGLang's own per-call path (its enable_fp32_lm_head) agreeing with ours.
Run: `python -m pytest -m gpu -s tests/gpu/test_fp32_lm_head_gpu.py`.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from sglang_models import TINY, random_requests, save_random_model, sglang_cfg, single_ctx  # noqa: E402
from test_scoring_graphs import _check_runner  # noqa: E402  (graph == eager after +-eps sweeps, scores and choices)

from mezo_elastic.config import Config, ModelConfig  # noqa: E402
from mezo_elastic.runners import lm_head  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402

NAME = "llama32_tied"
DEV = torch.device("cuda", 0)


def test_one_gemm_gives_the_float32_product():
    g = torch.Generator(device=DEV).manual_seed(0)
    h = torch.randn(37, 576, device=DEV, generator=g).to(torch.bfloat16)
    w = (torch.randn(4099, 576, device=DEV, generator=g) * 0.05).to(torch.bfloat16)
    assert lm_head._mm_out_dtype_ok(str(w.device), w.dtype), "torch.mm(out_dtype=float32) missing: a float32 copy"
    out = lm_head.fp32_logits(h, w)
    want = h.double() @ w.double().t()
    rounded = (h @ w.t()).double()
    err, err16 = float((out.double() - want).abs().max()), float((rounded - want).abs().max())
    print(f"\nfp32 head max |err| {err:.3g}, bf16 logits {err16:.3g}")
    assert out.dtype == torch.float32 and err < 1e-3 and err16 > 20 * err


def test_hf_fp32_head_scores_in_float32_through_the_graphs(tmp_path):
    path = save_random_model(TINY[NAME], tmp_path / NAME, seed=1)
    vocab = TINY[NAME]["vocab_size"]
    runs = {}
    for fp32 in (False, True):
        cfg = Config(model=ModelConfig(path=str(path), dtype="bfloat16", device="cuda", fp32_lm_head=fp32))
        runner = HFRunner(cfg, DEV, str(path))
        try:
            ids = torch.tensor([[5, 17, 230, 9, 41]], device=DEV)
            with torch.no_grad():
                logits = runner.model(input_ids=ids).logits
            assert (logits.dtype == torch.float32) == fp32
            assert runner.graphs is not None
            _check_runner(runner, runner.graphs, vocab)  # graph == eager after sweeps
            reqs = random_requests(8, vocab, seed=7, prompt=(4, 60), completion=(1, 6))
            runs[fp32] = runner.score(reqs)[0]
        finally:
            runner.close()
    d = float((runs[True] - runs[False]).abs().max())
    print(f"\nhf: fp32 head vs bf16 logits, max |d| of a completion's sum {d:.3g}")
    assert 0 < d < 0.5


def test_sglang_fp32_head_graph_matches_sglangs_own(tmp_path):
    pytest.importorskip("sglang", reason="needs sglang (pip install 'sglang==0.5.17')")
    from mezo_elastic.runners.sglang.runner import SGLangRunner

    path = save_random_model(TINY[NAME], tmp_path / NAME, seed=1)
    vocab = TINY[NAME]["vocab_size"]
    sg = SGLangRunner(single_ctx(), sglang_cfg(path, fp32_lm_head=True), DEV, str(path))
    try:
        assert sg.engine.model_runner.server_args.enable_fp32_lm_head
        _check_runner(sg, sg.graphs, vocab)
        reqs = random_requests(9, vocab, seed=8, prompt=(4, 60), completion=(1, 6))
        got, n = sg.score(reqs)
        seqs = [list(r.prompt_ids) + list(r.completion_ids) for r in reqs]
        want = sg.engine.logprob_sums(seqs, [len(r.prompt_ids) - 1 for r in reqs])  # SGLang's fp32 LM head
        d = float(((got - want) / n).abs().max())
        print(f"\nsglang fp32 head: graph vs SGLang's per-call path, max |d| per token {d:.3g}")
        assert d < 0.05
    finally:
        sg.close()
