"""CPU tests of the SGLang <-> HF layout, the version gate and the config checks (no sglang needed)."""

from __future__ import annotations

import pytest
import torch

from mezo_elastic.cluster.rank_context import RankContext
from mezo_elastic.config import Config, ModelConfig
from mezo_elastic.errors import BackendError, ConfigError
from mezo_elastic.runners.sglang import engine as compat
from mezo_elastic.runners.sglang import layout as lay
from mezo_elastic.runners.sglang.dist import layout
from mezo_elastic.zo.perturb import SweepPlan, sweep, z_range


def _shard(full: dict[str, torch.Tensor], pieces: list[lay.Piece], local_shape) -> torch.Tensor:
    """Build one rank's local tensor from HF tensors, as SGLang's weight loaders do."""
    any_t = next(iter(full.values()))
    local = torch.full(local_shape, float("nan"), dtype=any_t.dtype)
    for p in pieces:
        lay.read_piece(local, p).copy_(lay.hf_slice(full[p.hf_name], p))
    return local


def _qkv(tp: int, heads=8, kv=2, hs=4, hidden=16, bias=False):
    names = ["m.l.qkv_proj.bias" if bias else "m.l.qkv_proj.weight"]
    rest = () if bias else (hidden,)
    out = []
    for r in range(tp):
        out.append(lay.qkv_pieces(names[0], total_heads=heads, total_kv_heads=kv, head_size=hs, v_head_size=hs,
                                  tp_rank=r, tp_size=tp, rest=rest))
    return out


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_qkv_layout_covers_hf_tensors_and_replicates_kv_heads(tp):
    by_rank = _qkv(tp)
    shapes = {p.hf_name: p.hf_shape for p in by_rank[0]}
    assert shapes == {"m.l.q_proj.weight": (32, 16), "m.l.k_proj.weight": (8, 16), "m.l.v_proj.weight": (8, 16)}
    lay.check_cover(by_rank, shapes)
    full = {n: torch.randn(s) for n, s in shapes.items()}
    locals_ = [_shard(full, ps, (sum(p.length for p in ps), 16)) for ps in by_rank]
    assert all(not torch.isnan(t).any() for t in locals_)
    rebuilt = {n: torch.zeros(s) for n, s in shapes.items()}
    for ps, t in zip(by_rank, locals_):
        for p in ps:
            lay.hf_slice(rebuilt[p.hf_name], p).copy_(lay.read_piece(t, p))
    assert all(torch.equal(rebuilt[n], full[n]) for n in full)


def test_merged_vocab_row_parallel_cover():
    for tp in (1, 2, 4):
        merged = [lay.merged_pieces("a.gate_up_proj.weight", [24, 24], (8,), r, tp) for r in range(tp)]
        lay.check_cover(merged, {"a.gate_proj.weight": (24, 8), "a.up_proj.weight": (24, 8)})
        rows = [lay.row_parallel_pieces("a.down_proj.weight", 8, 24 // tp, r, tp) for r in range(tp)]
        lay.check_cover(rows, {"a.down_proj.weight": (8, 24)})
    vocab = [lay.vocab_pieces("e.weight", 100, 4, 0, 64), lay.vocab_pieces("e.weight", 100, 4, 64, 100)]
    lay.check_cover(vocab, {"e.weight": (100, 4)})
    with pytest.raises(ValueError, match="not fully covered"):
        lay.check_cover(vocab[:1], {"e.weight": (100, 4)})


def test_hf_leaf_names():
    assert lay.hf_leaf_names("model.layers.3.self_attn.qkv_proj.weight") == (
        "model.layers.3.self_attn.q_proj.weight", "model.layers.3.self_attn.k_proj.weight",
        "model.layers.3.self_attn.v_proj.weight")
    assert lay.hf_leaf_names("model.norm.weight") == ("model.norm.weight",)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_sharded_sweep_equals_unsharded_sweep(tp):
    """The same seed moves TP shards exactly as it moves the whole HF tensors (z keyed by HF index)."""
    hidden, inter = 16, 24
    full = {"l.gate_proj.weight": torch.randn(inter, hidden), "l.up_proj.weight": torch.randn(inter, hidden),
            "l.down_proj.weight": torch.randn(hidden, inter)}
    ref = {n: t.clone() for n, t in full.items()}
    plan = SweepPlan(pre=[(3, 1e-2)], post=[(4, -1e-2)], decay=0.1)
    sweep([lay.ParamSegment(t.view(-1), n) for n, t in ref.items()], plan)
    out = {n: torch.zeros_like(t) for n, t in full.items()}
    for r in range(tp):
        gu = lay.merged_pieces("l.gate_up_proj.weight", [inter, inter], (hidden,), r, tp)
        dn = lay.row_parallel_pieces("l.down_proj.weight", hidden, inter // tp, r, tp)
        t_gu = _shard(full, gu, (2 * inter // tp, hidden))
        t_dn = _shard(full, dn, (hidden, inter // tp))
        segs = [s for p in gu for s in lay.piece_segments(t_gu, p, True)]
        segs += [s for p in dn for s in lay.piece_segments(t_dn, p, True)]
        sweep(segs, plan)
        for t, ps in ((t_gu, gu), (t_dn, dn)):
            for p in ps:
                lay.hf_slice(out[p.hf_name], p).copy_(lay.read_piece(t, p))
    for n in full:
        assert torch.allclose(out[n], ref[n], atol=1e-6), n


def _gather_like_tp(tp: int, theta: dict[str, torch.Tensor], master: bool) -> dict[str, torch.Tensor]:
    """What SGLangRunner.hf_state_dict assembles from tp ranks holding bf16 shards of theta (gate_up,
    down and a qkv with 2 KV heads, replicated when tp > 2), each with its own fp32 master slices."""
    hidden, inter = 16, 24
    entries = [  # (pieces by rank, local shape)
        ([lay.merged_pieces("l.gate_up_proj.weight", [inter, inter], (hidden,), r, tp) for r in range(tp)],
         (2 * inter // tp, hidden)),
        ([lay.row_parallel_pieces("l.down_proj.weight", hidden, inter // tp, r, tp) for r in range(tp)],
         (hidden, inter // tp)),
        (_qkv(tp, heads=8, kv=2, hs=4, hidden=hidden), None),
    ]
    bf16 = {n: t.to(torch.bfloat16) for n, t in theta.items()}
    out = {n: torch.empty(t.shape, dtype=torch.float32 if master else torch.bfloat16) for n, t in theta.items()}
    for by_rank, shape in entries:
        parts = []
        for ps in by_rank:
            local = _shard(bf16, ps, shape or (sum(p.length for p in ps), hidden))
            segs = [sg for p in ps for sg in lay.piece_segments(local, p, True)]
            pairs = [(sg, theta[sg.name].view(-1)[sg.offset : sg.offset + sg.tensor.numel()].clone()) for sg in segs]
            parts.append(lay.with_master(local, pairs) if master else local)
        lay.assemble(parts, by_rank, out)
    return out


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_tp_checkpoint_holds_every_ranks_exact_master(tp):
    """Each TP rank gathers an fp32 copy of its bf16 shard with its own master slices written in:
    assembled, that is theta exactly (every rank's), where gathering the shards gives bf16 theta."""
    torch.manual_seed(0)
    theta = {"l.gate_proj.weight": torch.randn(24, 16), "l.up_proj.weight": torch.randn(24, 16),
             "l.down_proj.weight": torch.randn(16, 24), "m.l.q_proj.weight": torch.randn(32, 16),
             "m.l.k_proj.weight": torch.randn(8, 16), "m.l.v_proj.weight": torch.randn(8, 16)}
    exact = _gather_like_tp(tp, theta, master=True)
    rounded = _gather_like_tp(tp, theta, master=False)
    for n in theta:
        assert exact[n].dtype == torch.float32 and torch.equal(exact[n], theta[n]), n
        assert torch.equal(rounded[n], theta[n].to(torch.bfloat16)), n
        assert not torch.equal(rounded[n].float(), theta[n]), n  # so the first check means something


def test_with_master_refuses_a_segment_of_another_tensor():
    a, b = torch.zeros(4, 3), torch.zeros(4, 3)
    (p,) = lay.row_parallel_pieces("w", 4, 3, 0, 2)
    seg = lay.piece_segments(b, p, True)[0]
    with pytest.raises(ValueError, match="not a contiguous view"):
        lay.with_master(a, [(seg, torch.ones(3))])


def test_piece_segments_offsets_are_hf_element_indices():
    t = torch.zeros(4, 3)  # rank 1 of 2 of a [4, 6] row-parallel weight
    (p,) = lay.row_parallel_pieces("w", 4, 3, 1, 2)
    segs = lay.piece_segments(t, p, True)
    assert [s.offset for s in segs] == [3, 9, 15, 21]
    sweep(segs, SweepPlan(post=[(9, 1.0)]))
    assert torch.allclose(t[2], z_range(9, "w", 15, 3))


def test_version_gate():
    assert compat.check_version("0.5.17") == "0.5.17"
    assert compat.check_version("0.5.17-0trim") == "0.5.17-0trim"
    for bad in ("0.5.16", "0.5.23", "0.4.10", "1.0.0"):
        with pytest.raises(BackendError, match="pip install"):
            compat.check_version(bad)


def _ctx(world=4, local=4, rank=0):
    return RankContext(rank=rank, local_rank=rank % local, world_size=world, local_world_size=local, node_rank=0,
                       master_addr="127.0.0.1", master_port=29500, restart_count=0, run_id="t", launcher="torchrun")


def test_dp_tp_layout():
    assert layout(_ctx(rank=3), 2) == (1, 2, 1, 2)
    assert layout(_ctx(rank=3), 1) == (0, 1, 3, 4)
    with pytest.raises(ConfigError, match="must divide the world size 4"):
        layout(_ctx(), 3)
    with pytest.raises(ConfigError, match="never spans nodes"):
        layout(_ctx(world=8, local=2), 4)


def test_validate_mezo_config_errors_name_the_field(tmp_path):
    from mezo_elastic.runners.sglang.runner import validate_mezo_config

    with pytest.raises(ConfigError, match="model.dtype='float32'"):
        validate_mezo_config(Config(model=ModelConfig(backend="sglang", dtype="float32")))
    with pytest.raises(ConfigError, match="model.device='cpu'"):
        validate_mezo_config(Config(model=ModelConfig(backend="sglang", dtype="bfloat16", device="cpu")))
    with pytest.raises(ConfigError, match="no config.json"):
        validate_mezo_config(Config(model=ModelConfig(backend="sglang", dtype="bfloat16", path=str(tmp_path))))
    with pytest.raises(ConfigError, match="model.tp_size=3"):
        validate_mezo_config(Config(model=ModelConfig(backend="sglang", dtype="bfloat16", tp_size=3)), _ctx())
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="needs a CUDA GPU"):
            validate_mezo_config(Config(model=ModelConfig(backend="sglang", dtype="bfloat16")))


def test_wrong_size_default_group_is_a_clear_error():
    """torchrun's whole-world group under the sglang backend: our error, not SGLang's assert."""
    import torch.distributed as dist

    from mezo_elastic.cluster.distributed import free_port
    from mezo_elastic.runners.sglang.dist import init_tp_world

    store = dist.TCPStore("127.0.0.1", free_port(), world_size=1, is_master=True)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        cfg = Config(model=ModelConfig(backend="sglang", dtype="bfloat16", tp_size=2))
        with pytest.raises(BackendError, match="default group has 1 ranks but model.tp_size=2"):
            init_tp_world(_ctx(world=2, local=2), cfg, torch.device("cpu"), [], backend="gloo")
    finally:
        dist.destroy_process_group()


def test_row_sums_drop_each_requests_last_row():
    """SGLang returns completion + 1 log-prob rows per request; the last predicts past the end."""
    from mezo_elastic.runners.sglang.engine import Engine

    flat = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -0.5])
    sums = Engine._row_sums(flat, [2, 1, 3, 1])
    assert sums.dtype == torch.float64 and sums.tolist() == [-1.0, 0.0, -9.0, 0.0]


def test_server_args_turn_on_only_the_graphs_each_objective_uses(monkeypatch):
    """Scoring: no CUDA graphs (model.sglang_prefill_graphs=auto leaves SGLang's prefill graphs off there: the
    scoring graphs capture the whole forward); reward: decode graphs at 1, 2, 4, ... up to data.micro_batch and,
    by auto, prefill graphs at a dozen token counts (tp_size 1 without LoRA only); on/off override auto. The
    fields are what ServerArgs receives."""
    from mezo_elastic.config import Config
    from mezo_elastic.runners.sglang import runner as sg

    monkeypatch.setattr(sg.compat, "make_server_args", lambda fields: fields)
    ctx = None
    cfg = Config()
    cfg.model.backend = "sglang"
    assert cfg.model.sglang_prefill_graphs == "auto"
    scoring = sg.create_mezo_server_args(ctx, cfg, "/m")
    assert scoring["disable_cuda_graph"] is True and "cuda_graph_bs_decode" not in scoring
    assert "cuda_graph_bs_prefill" not in scoring
    cfg.data.objective, cfg.data.micro_batch = "reward", 24
    reward = sg.create_mezo_server_args(ctx, cfg, "/m")
    assert reward["disable_cuda_graph"] is False and reward["disable_decode_cuda_graph"] is False
    assert reward["cuda_graph_bs_decode"] == [1, 2, 4, 8, 16, 32] and reward["cuda_graph_max_bs_decode"] == 32
    # A dozen token counts up to a micro-batch's tokens, not SGLang's ~60 (its capture took ~40 s).
    assert reward["disable_prefill_cuda_graph"] is False
    assert reward["cuda_graph_bs_prefill"] == sg.prefill_graph_tokens(24, 128) and reward["cuda_graph_max_bs_prefill"] == 24 * 128
    cfg.model.sglang_prefill_graphs = "off"
    eager = sg.create_mezo_server_args(ctx, cfg, "/m")
    assert eager["disable_prefill_cuda_graph"] is True and "cuda_graph_bs_prefill" not in eager
    assert eager["disable_decode_cuda_graph"] is False
    cfg.model.sglang_prefill_graphs = "auto"
    tp2, lora = Config(), Config()  # auto: only where they were measured
    tp2.data.objective = lora.data.objective = "reward"
    tp2.model.tp_size, lora.peft.method = 2, "lora"
    assert sg.prefill_graphs_on(tp2) is False and sg.prefill_graphs_on(lora) is False
    cfg.data.micro_batch, cfg.data.max_length = 64, 512  # auto caps the counts at 8192 tokens; on does not
    assert sg.create_mezo_server_args(ctx, cfg, "/m")["cuda_graph_max_bs_prefill"] == sg.AUTO_PREFILL_TOKENS
    cfg.data.objective, cfg.model.sglang_prefill_graphs = "lm", "on"
    prefill = sg.create_mezo_server_args(ctx, cfg, "/m")
    assert prefill["disable_cuda_graph"] is False and prefill["disable_prefill_cuda_graph"] is False
    assert prefill["disable_decode_cuda_graph"] is True and prefill["cuda_graph_max_bs_prefill"] == 64 * 512


def test_prefill_graphs_take_the_old_booleans():
    """A config or run.json from before auto (true/false) still reads, as on/off; anything else is one line."""
    from mezo_elastic.config import from_dict
    from mezo_elastic.errors import ConfigError

    assert from_dict({"model": {"sglang_prefill_graphs": True}}).model.sglang_prefill_graphs == "on"
    assert from_dict({"model": {"sglang_prefill_graphs": False}}).model.sglang_prefill_graphs == "off"
    with pytest.raises(ConfigError, match="sglang_prefill_graphs.*allowed"):
        from_dict({"model": {"sglang_prefill_graphs": "sometimes"}})


def test_prefill_graph_token_counts_cover_a_micro_batch_in_steps_of_at_most_2x():
    from mezo_elastic.runners.sglang.runner import prefill_graph_tokens

    assert prefill_graph_tokens(16, 128) == [64, 128, 192, 320, 512, 768, 1152, 1728, 2048]
    for mb, ml in [(1, 8), (16, 128), (64, 128), (7, 333)]:
        sizes = prefill_graph_tokens(mb, ml)
        assert sizes[-1] == max(mb * ml, 64) and sizes == sorted(set(sizes))
        assert all(b <= 2 * a for a, b in zip(sizes, sizes[1:])) and len(sizes) <= 16
    capped = prefill_graph_tokens(64, 512, 8192)  # auto's cap: a larger prefill runs eagerly
    assert capped[-1] == 8192 and capped == prefill_graph_tokens(64, 128)
