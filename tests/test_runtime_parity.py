"""Parity of the partitioned strategies with the plain timm model (multi-process GLOO, CPU).

Tolerance: fp32, atol = rtol = 1e-4 on logits and on the final normalised features of
every token. The partitioned forward recomputes the same ops on row subsets (and splits
the fused qkv matmul into q and kv), so results differ from the plain model by float
rounding only; Prism with m < L_p must *not* be within that tolerance (it approximates).
"""
import pytest
import torch

from tests.gloo_utils import run_ranks

pytestmark = pytest.mark.gloo
TOL = dict(atol=1e-4, rtol=1e-4)

# (timm name, overrides): two architectures (plain ViT with qkv bias; DeiT-III with
# LayerScale and position embedding without the class token) at several token counts.
CASES = [
    ("vit_small_patch16_224", dict(depth=2, img_size=64)),        # N = 17
    ("deit3_small_patch16_224", dict(depth=2, img_size=96)),      # N = 37
    ("test_vit", dict(img_size=128)),                              # N = 65, 6 blocks
]


def _check(rank, world, cases, strategies, partition, exchange):
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy

    out = []
    for name, kw in cases:
        ad = build_adapter(ModelSpec(name, seed=3, **kw))
        x = ad.make_inputs(2, seed=3)
        with torch.inference_mode():
            ref_logits, ref_feats = ad.reference(x)
        n = ad.seq_len
        part = None if partition is None else partition(n)
        for sname, opts in strategies:
            if opts.get("m") == "Lp":
                opts = dict(opts, m=max(part) if part else -(-n // world))
            ctx = DistContext(rank, world, torch.device("cpu"), exchange, part)
            res = create_strategy(sname, **opts).apply(ad, ctx, 2)(x, features=True)
            row = {"model": name, "n": n, "strategy": sname, "opts": opts,
                   "feat_err": (res.features - ref_feats).abs().max().item(),
                   "feat_ok": bool(torch.allclose(res.features, ref_feats, **TOL)),
                   "bytes": res.timing["totals"]["comm_bytes"],
                   "bytes_formula": res.plan.comm_bytes(rank)}
            if rank == 0:
                row["logit_err"] = (res.logits - ref_logits).abs().max().item()
                row["logit_ok"] = bool(torch.allclose(res.logits, ref_logits, **TOL))
            out.append(row)
    return out


EXACT = [("voltage", {}), ("prism", {"m": "Lp"})]


def _assert_exact(results):
    for rank_rows in results:
        for row in rank_rows:
            assert row["feat_ok"], row
            if "logit_ok" in row:
                assert row["logit_ok"], row
            assert row["bytes"] == row["bytes_formula"], row


def test_p1_equals_plain(tmp_path):
    res = run_ranks(_check, 1, tmp_path, CASES[:2], [("single", {})] + EXACT, None, "pairwise")
    _assert_exact(res)


def test_p2_voltage_and_prism_m_eq_lp_equal_plain(tmp_path):
    res = run_ranks(_check, 2, tmp_path, CASES, EXACT + [("prism", {"cr": 4.0})], None, "pairwise")
    exact = [[r for r in rows if not (r["strategy"] == "prism" and r["opts"].get("cr"))] for rows in res]
    _assert_exact(exact)
    approx = [r for r in res[0] if r["opts"].get("cr")]
    # DeiT-III's LayerScale starts at 1e-5 with random weights, which hides the attention
    # change; the other two must differ visibly (the check can fail, unlike a no-op).
    approx = [r for r in approx if not r["model"].startswith("deit3")]
    assert len(approx) == 2 and all(r["feat_err"] > 1e-2 for r in approx), approx
    assert all(r["bytes"] == r["bytes_formula"] for rows in res for r in rows)


def _uneven3(n):
    return [n - 2 * (n // 4), n // 4, n // 4]


def _small_last(n):
    return [n - 5, 5]


def test_p3_and_uneven_split_allgather(tmp_path):
    res = run_ranks(_check, 3, tmp_path, CASES[:2], EXACT + [("prism", {"m": 3})], _uneven3, "allgather")
    _assert_exact([[r for r in rows if r["opts"].get("m") != 3] for rows in res])
    assert all(r["bytes"] == r["bytes_formula"] for rows in res for r in rows)


def test_p2_uneven_pairwise_bytes(tmp_path):
    res = run_ranks(_check, 2, tmp_path, CASES[:1], EXACT + [("prism", {"cr": 2.0})],
                    _small_last, "pairwise")
    _assert_exact([[r for r in rows if not r["opts"].get("cr")] for rows in res])
    assert all(r["bytes"] == r["bytes_formula"] for rows in res for r in rows)
    # rank 1 holds 5 tokens: prism at CR 2 on L_p = 12 gives m = 6 > 5, clamped to 5 rows
    assert res[1][-1]["bytes"] == 5 * 384 * 4 * 2 * 2
