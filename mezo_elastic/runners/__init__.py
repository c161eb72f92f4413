"""Runner factory: builds the forward backend named by `model.backend`, importing it lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mezo_elastic.runners.base import (
    ForwardRunner,
    GenerateRequest,
    GenerationSettings,
    ScoreRequest,
)

if TYPE_CHECKING:
    import torch

    from mezo_elastic.cluster.rank_context import RankContext
    from mezo_elastic.config import Config

__all__ = ["ForwardRunner", "GenerateRequest", "GenerationSettings", "ScoreRequest", "make_runner"]


def make_runner(ctx: "RankContext", cfg: "Config", device: "torch.device", model_path: str) -> ForwardRunner:
    """Build the runner for `cfg.model.backend` on `device` from the model directory `model_path`.

    The backend module is imported here, not at package import: the core never imports sglang.

    Raises:
        BackendError: the backend's package is missing or unsupported, or the model cannot load.
    """
    if cfg.model.backend == "hf":
        from mezo_elastic.runners.hf.runner import HFRunner

        return HFRunner(cfg, device, model_path)
    if cfg.model.backend == "sglang":
        from mezo_elastic.runners.sglang.runner import SGLangRunner

        return SGLangRunner(ctx, cfg, device, model_path)
    raise AssertionError(f"unreachable: model.backend={cfg.model.backend!r} passed config validation")
