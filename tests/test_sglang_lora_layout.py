"""The SGLang LoRA pool layout (runners/sglang_lora.py) on CPU, without sglang.

SGLang's loader is restated here from its 0.5.17 source (lora/lora.py normalize_qkv_proj and
normalize_gate_up_proj, lora/layers.py slice_lora_a/b_weights): it turns PEFT tensors into one pool
slot per module and TP rank. The pieces must read every PEFT element back from those slots, at any
TP size (KV heads replicated when tp > kv heads), so the runner perturbs and exports the right
elements. The real pool is checked against peft on a GPU by tests/gpu/test_sglang_lora.py.
"""

from __future__ import annotations

import pytest
import torch

from mezo_elastic.config import PeftConfig
from mezo_elastic.data import builtin
from mezo_elastic.errors import ConfigError
from mezo_elastic.runners import lora
from mezo_elastic.runners.sglang import layout as lay
from mezo_elastic.runners.sglang.lora import (
    Geometry,
    check_targets,
    peft_name,
    slot_pieces,
)

ALL = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
# (heads, kv heads, head size, intermediate, hidden): builtin.TINY_LLAMA (GQA 2:1), and the GPU suite's
# llama_untied (tests/gpu/sglang_models.py: multi-head, kv heads == heads, the one case run with ALL there)
GEOMS = {"gqa": (4, 2, 16, 128, 64), "mha": (4, 4, 64, 512, 256)}


def _sglang_slots(module: str, adapter: dict[str, torch.Tensor], geom: tuple, tp: int, rank: int) -> dict[str, torch.Tensor]:
    """{"A": slot, "B": slot} of one module on TP rank `rank`, as SGLang 0.5.17 fills them."""
    heads, kv_heads, head, inter, _ = geom
    parent, _, leaf = module.rpartition(".")
    get = lambda sub, w: adapter.get(f"base_model.model.{parent}.{sub}.lora_{w}.weight")  # noqa: E731
    if leaf == "qkv_proj":
        k_a = get("k_proj", "A") if get("k_proj", "A") is not None else torch.zeros_like(get("v_proj", "A"))
        k_b = get("k_proj", "B") if get("k_proj", "B") is not None else torch.zeros_like(get("v_proj", "B"))
        a = torch.cat((get("q_proj", "A"), k_a, get("v_proj", "A")))
        b = torch.cat((get("q_proj", "B"), k_b, get("v_proj", "B")))
        replicas = max(1, tp // kv_heads)
        q_n, kv_n = heads * head // tp, max(1, kv_heads // tp) * head
        q_size, k_size, kv_shard = heads * head, kv_heads * head, rank // replicas
        b = torch.cat((b[q_n * rank : q_n * (rank + 1)], b[q_size + kv_n * kv_shard : q_size + kv_n * (kv_shard + 1)],
                       b[q_size + k_size + kv_n * kv_shard : q_size + k_size + kv_n * (kv_shard + 1)]))
        return {"A": a, "B": b}
    if leaf == "gate_up_proj":
        a = torch.cat((get("gate_proj", "A"), get("up_proj", "A")))
        n = inter // tp
        b = torch.cat((get("gate_proj", "B")[n * rank : n * (rank + 1)], get("up_proj", "B")[n * rank : n * (rank + 1)]))
        return {"A": a, "B": b}
    a, b = get(leaf, "A"), get(leaf, "B")  # row-parallel: A by columns, B whole
    n = a.shape[1] // tp
    return {"A": a[:, n * rank : n * (rank + 1)].contiguous(), "B": b}


def _geometry(module: str, in_features: int, tp: int, geom: tuple) -> Geometry:
    heads, kv_heads, head, inter, _ = geom
    leaf = module.rpartition(".")[2]
    if leaf == "qkv_proj":
        return Geometry("qkv", tp, total_heads=heads, total_kv_heads=kv_heads, head_size=head, v_head_size=head)
    if leaf == "gate_up_proj":
        return Geometry("merged", tp, output_sizes=(inter, inter))
    return Geometry("row", tp, in_per_rank=in_features // tp)


@pytest.fixture(scope="module", params=list(GEOMS))
def model(request, tmp_path_factory):
    """(path, geometry): the built-in tiny model, or a config-only Llama of the MHA geometry
    (adapter_shapes builds on the meta device: no weights needed)."""
    if request.param == "gqa":
        return builtin.ensure_tiny_model(tmp_path_factory.mktemp("sglang-lora-layout")), GEOMS["gqa"]
    from transformers import LlamaConfig

    heads, kv, head, inter, hidden = GEOMS["mha"]
    path = tmp_path_factory.mktemp("sglang-lora-layout-mha")
    LlamaConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=head,
                tie_word_embeddings=False).save_pretrained(path)
    return path, GEOMS["mha"]


@pytest.mark.parametrize("targets", ["q_proj,v_proj", ALL])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_pieces_read_every_adapter_element_back_from_sglang_slots(model, targets, tp):
    path, geom = model
    heads, _, head, inter, hidden = geom
    cfg = PeftConfig(method="lora", targets=targets)
    shapes = lora.adapter_shapes(str(path), cfg)
    adapter = {n: torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, (n, s) in enumerate(shapes.items())}
    modules = [f"model.layers.{i}.{m}" for i in range(2) for m in
               ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")]
    out = {n: torch.full(s, float("nan")) for n, s in shapes.items()}
    covered: list[list[lay.Piece]] = [[] for _ in range(tp)]
    for module in modules:
        in_features = {"o_proj": heads * head, "down_proj": inter}.get(module.rpartition(".")[2], hidden)
        g = _geometry(module, in_features, tp, geom)
        for which in ("A", "B"):
            by_rank = [slot_pieces(module, g, which, shapes, cfg.rank, r) for r in range(tp)]
            if not any(by_rank):
                continue
            slots = [_sglang_slots(module, adapter, geom, tp, r)[which] for r in range(tp)]
            lay.assemble(slots, by_rank, out)
            for r in range(tp):
                covered[r] += by_rank[r]
                for pc in by_rank[r]:  # segments are views of the slot (perturbed in place), HF-indexed
                    for seg in lay.piece_segments(slots[r], pc, decay=True):
                        assert seg.tensor.untyped_storage().data_ptr() == slots[r].untyped_storage().data_ptr()
                        assert torch.equal(seg.tensor, adapter[seg.name].view(-1)[seg.offset : seg.offset + seg.tensor.numel()])
    lay.check_cover(covered, shapes)
    for n in shapes:
        assert torch.equal(out[n], adapter[n]), n


def test_peft_names_of_fused_and_plain_modules():
    assert peft_name("model.layers.3.self_attn.qkv_proj", "v_proj", "B") == \
        "base_model.model.model.layers.3.self_attn.v_proj.lora_B.weight"
    assert peft_name("model.layers.0.mlp.down_proj", None, "A") == "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"


@pytest.mark.parametrize("targets, words", [
    (["q_proj", "lm_head"], "['lm_head'] not supported"),
    (["q_proj", "v_proj", "embed_tokens"], "['embed_tokens'] not supported"),
    (["q_proj"], "needs both q_proj and v_proj"),
    (["k_proj", "v_proj"], "needs both q_proj and v_proj"),
    (["up_proj"], "up_proj needs gate_proj"),
])
def test_targets_sglang_cannot_stack_are_one_line_config_errors(targets, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_targets(targets)
    check_targets(["q_proj", "v_proj"])
    check_targets(ALL.split(","))


def test_the_sglang_backend_checks_lora_targets_before_any_gpu_work():
    from mezo_elastic.config import parse_args
    from mezo_elastic.runners.sglang.runner import validate_mezo_config

    cfg = parse_args(["--model.backend=sglang", "--model.dtype=bfloat16", "--peft.method=lora", "--peft.targets=q_proj"])
    with pytest.raises(ConfigError, match="needs both q_proj and v_proj"):
        validate_mezo_config(cfg)
