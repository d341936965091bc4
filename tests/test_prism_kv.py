"""Prism averaged="kv" (means of each row's rotated key and value, used by receivers as
K/V columns as they are): exact at m = L_p on the tiny Llama and Qwen2 (P = 2, 3, uneven),
device 0 exact at any CR, bytes == formula (2 kv_dim floats per mean), per-rank counted
FLOPs == formula (+ the averaging matmul, which no Prism formula counts) within 1 %
(receivers project no means), the in-process emulation equal to
GLOO ranks, and a one-line refusal for adapters without `kv_rows` (ViT / BERT / GPT-2,
whose K/V are linear in norm1's output: "kv" would equal "ln1" there)."""
import pytest
import torch

from costmodel.formulas import comm_reduction, llama_shape
from costmodel.strategies import make_plan
from tests.gloo_utils import run_ranks


def _kv_rows(rank, world, partition, name):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy
    from runtime.parallel.exchange import gather_rows_to_all

    ad = build_adapter(ModelSpec(name, seq_len=30, seed=4))
    x = ad.make_inputs(2, seed=2)
    ref_l, ref_h = ad.reference(x)
    lp = -(-30 // world) if partition is None else max(partition)
    rows = []
    for opts in ({"m": lp, "averaged": "kv"}, {"cr": 4.0, "averaged": "kv"}, {"cr": 4.0, "averaged": "ln1"}):
        run = create_strategy("prism", **opts).apply(ad, DistContext(rank, world, partition=partition), 2)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            res = run(x, features=True)
        logits = gather_rows_to_all(res.logits, res.plan.sizes, rank)
        rows.append({**opts, "bytes": res.timing["totals"]["comm_bytes"], "formula": res.plan.comm_bytes(rank),
                     "flops": float(fc.get_total_flops()), "flops_formula": res.plan.flops(rank),
                     # the formula counts blocks; the (m, L_p) averaging matmul comes on top
                     "avg_flops": 2.0 * res.plan.rows_sent(rank) * res.plan.sizes[rank] * res.plan.width
                     * 2 * res.plan.shape.n_layers,
                     "features": res.features.tolist(), "logits": logits.tolist(),
                     "feat_err": (res.features - ref_h).abs().max().item(),
                     "logit_err": (logits - ref_l).abs().max().item(),
                     "dev0_err": (logits - ref_l)[:, :res.plan.sizes[0]].abs().max().item()})
    return rows


CASES = [(2, None, "llama-tiny"), (3, None, "llama-tiny"), (2, [20, 10], "llama-tiny"),
         (2, None, "qwen2-tiny"), (3, [8, 12, 10], "qwen2-tiny")]


@pytest.mark.gloo
@pytest.mark.parametrize("world,partition,name", CASES)
def test_kv_means_exact_at_m_lp_and_bytes_flops_match(tmp_path, world, partition, name):
    rows = run_ranks(_kv_rows, world, tmp_path, partition, name)
    for rank, rank_rows in enumerate(rows):
        exact, kv4, ln4 = rank_rows
        for r in rank_rows:
            assert r["bytes"] == r["formula"] > 0, r
            assert r["dev0_err"] < 1e-4, r                    # device 0 sees only its own past
            assert r["flops"] == pytest.approx(r["flops_formula"] + r["avg_flops"], rel=0.01), (rank, r)
        assert exact["feat_err"] < 1e-4 and exact["logit_err"] < 1e-4, exact
        assert kv4["logit_err"] > 1e-3                          # compression approximates
        # rotation makes the mean of keys differ from the key of the mean
        assert (torch.tensor(kv4["logits"]) - torch.tensor(ln4["logits"])).abs().max() > 1e-5
    if world == 2 and partition is None:
        from runtime.models import ModelSpec, build_adapter
        from runtime.train.emulate import EmulatedModel

        ad = build_adapter(ModelSpec(name, seq_len=30, seed=4))
        x = ad.make_inputs(2, seed=2)
        em = EmulatedModel(ad, "prism", 2, batch=2, cr=4.0, averaged="kv")
        with torch.no_grad():
            out = em(x, features=True)
        assert (out.features - torch.tensor(rows[0][1]["features"])).abs().max().item() < 1e-5
        assert (out.logits - torch.tensor(rows[0][1]["logits"])).abs().max().item() < 1e-5
        assert out.timings[1]["totals"]["comm_bytes"] == rows[1][1]["bytes"] == em.plan.comm_bytes(1)


def test_kv_bytes_per_mean_are_two_kv_dims():
    s = llama_shape(seq_len=128)                        # SmolLM2-135M: d 576, 3 K/V heads of 64
    out = make_plan("prism", s, world_size=2, cr=2.0)
    kv = make_plan("prism", s, world_size=2, cr=2.0, averaged="kv")
    assert (out.width, kv.width) == (576, 384)
    assert (out.comm_bytes(0), kv.comm_bytes(0)) == (32 * 576 * 4 * 30, 32 * 384 * 4 * 30)   # m = 32, 30 blocks
    assert comm_reduction(kv) == pytest.approx(1 - 0.5 * 384 / 576)
    # receivers do not project the peer's 32 means: 4 * 32 * d * kv_dim per block fewer
    assert out.flops(1) - kv.flops(1) == 4 * 32 * 576 * 192 * 30
    with pytest.raises(ValueError, match="unknown averaged") as e:
        make_plan("prism", s, world_size=2, cr=2.0, averaged="k")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("family", ["vit", "bert", "gpt2"])
def test_kv_refused_in_one_line_without_kv_rows(family):
    from runtime.models import build_adapter, tiny_spec
    from runtime.parallel import DistContext, create_strategy

    ad = build_adapter(tiny_spec(family))
    with pytest.raises(ValueError, match="kv_rows.*ln1") as e:
        create_strategy("prism", cr=2.0, averaged="kv").apply(ad, DistContext(0, 2), 1)
    assert "\n" not in str(e.value)


def test_kv_rows_are_rotated_keys_and_values():
    """kv_rows at bound positions = the block's own K (rotated) and V; averaging them and
    feeding them back as remote_kv with log(s) = 0 at s = 1 is the plain block."""
    from runtime.models import ModelSpec, build_adapter

    ad = build_adapter(ModelSpec("qwen2-tiny", seq_len=16, seed=1))
    x = torch.randn(1, 16, 96)
    with torch.no_grad():
        ref = ad.block(0, x)
        ad.bind_positions(torch.arange(8, 16), None)
        kv_b = ad.kv_rows(0, x[:, 8:])
        ad.bind_positions(torch.arange(0, 8), None)
        own = ad.kv_rows(0, x[:, :8])
        assert own.shape == (1, 8, 2 * 2 * 16)
        # rows 0..7 over their own past and rows 8..15 as remote K/V columns: rows 0..7 of a
        # non-causal block over all 16 rows
        got = ad.block(0, x[:, :8], None, None, remote_kv=kv_b, own_kv=own)
        ad.bind_positions(None, None)
        full = ad.block(0, x)
    assert torch.allclose(got, full[:, :8], atol=1e-5) and torch.allclose(full, ref)
