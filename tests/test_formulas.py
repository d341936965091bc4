"""The analytical checks of issue 4 against the shared formulas (costmodel/formulas.py)."""
import pytest

from costmodel.formulas import ModelShape, comm_reduction, vit_shape
from costmodel.strategies import make_plan

VIT = vit_shape("vit_base_patch16_224")     # N = 197, with patch embedding and head


@pytest.mark.parametrize("strategy,cr,paper", [("single", None, 35.15), ("voltage", None, 20.37),
                                                ("prism", 9.9, 17.54)])
def test_vit_base_gflops_within_1pct_of_paper(strategy, cr, paper):
    ws = 1 if strategy == "single" else 2
    g = make_plan(strategy, VIT, world_size=ws, cr=cr).flops(0) / 1e9
    assert abs(g / paper - 1) < 0.01, (strategy, g, paper)


def test_vit_base_prism_gflops_grow_as_cr_falls():
    # Table 3: 17.54 / 17.86 / 18.18 at CR 9.9 / 4.95 / 3.3
    g = [make_plan("prism", VIT, world_size=2, cr=c).flops(0) / 1e9 for c in (9.9, 4.95, 3.3)]
    for got, paper in zip(g, (17.54, 17.86, 18.18)):
        assert abs(got / paper - 1) < 0.01
    assert g[0] < g[1] < g[2]


def test_bert_base_prism_m1_per_device_reduction():
    bert = ModelShape("bert-base", seq_len=256, d=768, heads=12, d_ff=3072, n_layers=12)
    single = make_plan("single", bert, world_size=1).flops(0, embed=False, head=False)
    prism = make_plan("prism", bert, world_size=2, m=1)
    assert prism.cr == 128.0
    red = 1 - prism.flops(0, embed=False, head=False) / single
    assert red * 100 == pytest.approx(51.24, abs=0.01)
    assert comm_reduction(prism) * 100 == pytest.approx(99.2, abs=0.05)


@pytest.mark.parametrize("cr,m,pct", [(9.9, 10, 89.9), (4.95, 20, 79.8), (3.3, 30, 69.7)])
def test_comm_reduction_at_paper_crs(cr, m, pct):
    p = make_plan("prism", VIT, world_size=2, cr=cr)
    v = make_plan("voltage", VIT, world_size=2)
    assert p.m == m
    assert comm_reduction(p) * 100 == pytest.approx(pct, abs=0.05)
    # and the bytes on the wire agree with the reduction (pairwise: own rows only), the
    # CLS row apart: device 0 sends it as itself on top of its m means (docs/method.md)
    assert VIT.prefix_tokens == 1 and p.rows_sent(0) == m + 1 and p.rows_sent(1) == m
    row = v.comm_bytes(0) // 99
    assert 1 - (p.comm_bytes(0) - row) / v.comm_bytes(0) == pytest.approx(comm_reduction(p), abs=1e-12)
