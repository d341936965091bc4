"""timm ViTs beyond one CLS token: DeiT's distillation token, registers (DINOv2-style),
no prefix token, avg / max / avgmax pooling with fc_norm. Every strategy at its exact
options on 2 GLOO ranks: parity with the plain model and bytes == formula (prefix rows on
device 0, partial pools to device 0); unsupported timm models refuse in one line."""
import pytest
import torch

from costmodel.formulas import prism_segments, vit_shape
from costmodel.strategies import make_plan
from tests.gloo_utils import run_ranks

# (name, img_size, overrides): depth 1 and small images keep it fast
VARIANTS = [
    ("deit_tiny_distilled_patch16_224", 64, {}),                       # CLS + distillation token
    ("vit_base_patch16_reg4_gap_256", 64, {}),                         # 4 registers, no CLS, avg, fc_norm
    ("vit_base_patch16_gap_224", 64, {}),                              # no prefix token, avg
    ("vit_base_patch14_reg4_dinov2", 56, {}),                          # CLS + 4 registers, token pooling
    ("vit_tiny_patch16_224", 64, {"global_pool": "max"}),              # CLS, max pooling
    ("vit_tiny_patch16_224", 64, {"global_pool": "avgmax", "fc_norm": False}),
]
STRATEGIES = ["voltage", "prism", "tensor_parallel", "galaxy"]


def _build(name, img, over, seed=3):
    import timm

    from runtime.models.vit import TimmViTAdapter

    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, img_size=img, depth=1, **over)
    return TimmViTAdapter(m.eval(), name)


def _parity(rank, world):
    from runtime.parallel import DistContext, create_strategy, strategy_class

    rows = []
    for name, img, over in VARIANTS:
        ad = _build(name, img, over)
        x = ad.make_inputs(2, seed=1)
        with torch.inference_mode():
            ref_logits, ref_feats = ad.reference(x)
        for st in STRATEGIES + ["prism_cr4"]:
            opts = ({"cr": 4.0} if st == "prism_cr4"
                    else strategy_class(st).exact_options(ad.seq_len, world))
            run = create_strategy(st.split("_cr")[0], **opts).apply(ad, DistContext(rank, world), 2)
            res = run(x, features=True)
            row = {"model": name, "over": over, "strategy": st,
                   "feat_err": (res.features - ref_feats).abs().max().item(),
                   "bytes": res.timing["totals"]["comm_bytes"], "formula": res.plan.comm_bytes(rank)}
            if res.logits is not None:
                row["logit_err"] = (res.logits - ref_logits).abs().max().item()
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = run_ranks(_parity, 2, tmp_path_factory.mktemp("vitvar"))
    return [r for rank_rows in out for r in rank_rows]


@pytest.mark.gloo
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_variant_parity_and_bytes(rows, variant):
    name, _, over = VARIANTS[variant]
    mine = [r for r in rows if r["model"] == name and r["over"] == over]
    assert len(mine) == 2 * (len(STRATEGIES) + 1)
    for r in mine:
        assert r["bytes"] == r["formula"], r
        if r["strategy"] == "prism_cr4":
            continue
        assert r["feat_err"] < 1e-4, r
        assert r.get("logit_err", 0.0) < 1e-4, r
    assert sum("logit_err" in r for r in mine) == len(STRATEGIES) + 1   # logits on rank 0 only


def test_adapter_shape_counts_prefix_tokens_and_pool():
    ad = _build("vit_base_patch16_reg4_gap_256", 64, {})
    assert (ad.prefix, ad.pool, ad.seq_len) == (4, "avg", 16 + 4)      # 4 registers, no CLS
    assert ad.shape.prefix_tokens == 4 and ad.shape.pool_vectors == 1
    ad = _build("deit_tiny_distilled_patch16_224", 64, {})
    assert ad.shape.prefix_tokens == 2 and ad.shape.pool_vectors == 0
    assert ad.shape.head_flops == 2 * 2.0 * 192 * 1000      # two classifiers
    ad = _build("vit_tiny_patch16_224", 64, {"global_pool": "avgmax"})
    assert ad.shape.pool_vectors == 2


def test_prefix_rows_travel_as_themselves_and_live_on_device_0():
    assert prism_segments([11, 10], 3, prefix=5) == [[1, 1, 1, 1, 1, 2, 2, 2], [4, 3, 3]]
    assert prism_segments([5, 5], 2, prefix=5) == [[1] * 5, [3, 2]]
    s = vit_shape("v", img_size=64, patch_size=16, d=64, heads=2, prefix_tokens=5, pool="avg")
    p = make_plan("prism", s, world_size=2, m=3)
    assert [p.rows_sent(r) for r in range(2)] == [8, 3]
    # the partial pool: d floats per sample from every device but 0, once per pass
    v = make_plan("voltage", s, world_size=2, batch=4)
    assert v.pool_bytes(0) == 0 and v.pool_bytes(1) == 64 * 4 * 4
    assert make_plan("tensor_parallel", s, world_size=2).pool_bytes(1) == 0
    with pytest.raises(ValueError, match="prefix tokens, which live on device 0"):
        make_plan("voltage", s, world_size=2, partition=[4, 17])


@pytest.mark.parametrize("name,over,why", [
    ("eva02_tiny_patch14_224", {}, "not a timm VisionTransformer"),
    ("beit_base_patch16_224", {}, "not a timm VisionTransformer"),
    ("vit_base_patch16_siglip_224", {}, "attention pooling"),
    ("vit_tiny_patch16_224", {"global_pool": ""}, "global_pool=''"),
    ("vit_relpos_base_patch16_224", {}, "not a timm VisionTransformer"),
])
def test_unsupported_models_refuse_in_one_line(name, over, why):
    with pytest.raises(ValueError, match=why) as e:
        _build(name, 224 if "eva" in name or "beit" in name else 64, over)
    assert "\n" not in str(e.value)
