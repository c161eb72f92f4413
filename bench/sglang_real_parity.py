"""HF vs SGLang mean completion NLL on the real model (GPU, about a minute): one run says which variant is right.

    PYTHONPATH=/tmp/site:$PWD MEZO_GPU_COMPAT=1 MEZO_REAL_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf \
        python bench/sglang_real_parity.py

Variants on sglang (each line: mean NLL hf, sglang, |d|):
  fixed       the directory runners/gguf.py writes now (tied embedding stored as model.embed_tokens.weight);
  old-layout  the same weights stored only as lm_head.weight (what safetensors' save_model wrote before):
              SGLang's Llama loader skips lm_head.weight when tied, so the embedding is never loaded (the
              suspected cause of hf 4.40 vs sglang 10.80 = ln 49152);
  torch_native  `fixed` with attention_backend=torch_native instead of triton (rules the triton kernels out,
              GQA 9:3 is not a power of 2).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"), str(Path(__file__).resolve().parents[1] / "tests/gpu")]
from real_model import chat_prompts  # noqa: E402
from sglang_models import sglang_cfg, single_ctx  # noqa: E402

from mezo_elastic.config import Config, ModelConfig  # noqa: E402
from mezo_elastic.runners import gguf  # noqa: E402
from mezo_elastic.runners.base import ScoreRequest  # noqa: E402
from mezo_elastic.runners.hf.runner import HFRunner  # noqa: E402
from mezo_elastic.runners.sglang.runner import SGLangRunner  # noqa: E402

ANSWERS = ["Paris is the capital of France.", "Red, green and blue.", "Rain taps the roof.", "56."]


def _nll(runner, reqs) -> float:
    lp, n = runner.score(reqs)
    return float(-lp.sum() / n.sum())


def _old_layout(src: Path, dst: Path) -> Path:
    """A copy of `src` whose weights hold the tied tensor only under lm_head.weight."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (dst / f.name).symlink_to(f)
    state = load_file(str(src / "model.safetensors"))
    state["lm_head.weight"] = state.pop("model.embed_tokens.weight")
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def main() -> None:
    from transformers import AutoTokenizer

    path = Path(gguf.resolve(os.environ["MEZO_REAL_GGUF"])[0])
    keys = set(load_file(str(path / "model.safetensors")))
    print(f"{path}: embed_tokens stored {'model.embed_tokens.weight' in keys}, lm_head stored {'lm_head.weight' in keys}")
    tok = AutoTokenizer.from_pretrained(path)
    reqs = [ScoreRequest(tuple(tok.encode(p)), tuple(tok.encode(a + "<|im_end|>")))
            for p, a in zip(chat_prompts(16), ANSWERS * 4)]
    dev = torch.device("cuda", 0)
    hf = HFRunner(Config(model=ModelConfig(path=str(path), dtype="bfloat16", device="cuda")), dev, str(path))
    ref = _nll(hf, reqs)
    hf.close()
    with tempfile.TemporaryDirectory() as tmp:
        for name, where, kw in [("fixed", path, {}), ("old-layout", _old_layout(path, Path(tmp) / "old"), {}),
                                ("torch_native", path, {"attention_backend": "torch_native"})]:
            try:
                sg = SGLangRunner(single_ctx(), sglang_cfg(where, **kw), dev, str(where))
                got = _nll(sg, reqs)
                sg.close()
                print(f"{name:13s} mean completion NLL hf {ref:.4f} sglang {got:.4f} |d| {abs(ref - got):.4f}", flush=True)
            except Exception as e:  # noqa: BLE001 - one variant failing must not hide the others
                print(f"{name:13s} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
