"""Float32 logits from a 16-bit LM head (model.fp32_lm_head).

A bf16 matmul accumulates in float32 and then rounds its output to bf16: a logit near 20 lands on a grid of
0.125. MeZO scores the same batch at theta +- eps z, whose losses differ by about 2 eps |g| (0.02 at eps 1e-3,
|g| 10), and by less as training converges, so a logit grid that coarse can be most of L+ - L-.
model.fp32_lm_head keeps the accumulator's float32 logits: the same inputs and weights, no 16-bit rounding of the
output (SGLang's enable_fp32_lm_head does the same for its own paths, for RL's probability mismatch).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _mm_out_dtype_ok(device: str, dtype: torch.dtype) -> bool:
    """Whether torch.mm(..., out_dtype=torch.float32) runs here for `dtype` inputs (CUDA, torch >= 2.8): a
    probe on a 2 x 2 product, once per (device, dtype), never inside a CUDA graph capture."""
    try:
        a = torch.ones(2, 2, dtype=dtype, device=device)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def prepare(weight: torch.Tensor) -> None:
    """Run the capability probe for `weight`'s device and dtype now (outside any graph capture)."""
    if weight.dtype in (torch.bfloat16, torch.float16):
        _mm_out_dtype_ok(str(weight.device), weight.dtype)


def fp32_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """hidden @ weight.T (+ bias) as float32 logits, [..., vocab].

    16-bit weights on CUDA: one GEMM with a float32 output (no float32 copy of the head: 4 bytes a
    parameter of vocab x hidden would be 2 GiB at 8B's vocabulary); elsewhere float32 copies of both.
    """
    if weight.dtype in (torch.bfloat16, torch.float16) and _mm_out_dtype_ok(str(weight.device), weight.dtype):
        flat = hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype)
        out = torch.mm(flat, weight.t(), out_dtype=torch.float32).reshape(*hidden.shape[:-1], weight.shape[0])
        return out if bias is None else out + bias.float()
    return F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())


def use_fp32_head(model: torch.nn.Module) -> None:
    """Make a transformers model's output embeddings (an nn.Linear, tied or not) return float32 logits: its
    forward replaced on the instance, so its parameters, their names and the tie stay as they were."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"model.fp32_lm_head: the output embeddings are a {type(head).__name__}, not a Linear")
    prepare(head.weight)
    head.forward = lambda x: fp32_logits(x, head.weight, head.bias)
