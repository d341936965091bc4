"""Qwen2 (HF Qwen2ForCausalLM) through the Llama adapter: Llama's block with biased q / k /
v projections. The registry-parametrised tests (tests/test_registry.py, test_family_costs.py)
run every strategy and the FLOPs count on its tiny model; tests/test_llama.py the P = 2 / 3
parity and tensor_parallel / galaxy. Here: what is Qwen2's own."""
import pytest
import torch

from costmodel.formulas import named_shape


def test_random_biases_are_drawn_and_used():
    """transformers initialises the q / k / v biases to zero; the tiny model draws them,
    so every parity test on it exercises them (dropping them changes the output)."""
    from runtime.models import ModelSpec, build_adapter, family_of
    from runtime.parallel import DistContext, create_strategy

    assert family_of("qwen2-tiny") == family_of("qwen2.5-0.5b") == family_of("qwen2") == "qwen2"
    ad = build_adapter(ModelSpec("qwen2-tiny", seq_len=16, seed=3))
    at = ad.blocks[0].self_attn
    assert all(p.bias is not None and p.bias.abs().max() > 0.1 for p in (at.q_proj, at.k_proj, at.v_proj))
    assert at.o_proj.bias is None
    x = ad.make_inputs(2, seed=1)
    ref, _ = ad.reference(x)
    res = create_strategy("single").apply(ad, DistContext(), 2)(x)
    assert torch.allclose(res.logits, ref, atol=1e-5)
    again = build_adapter(ModelSpec("qwen2-tiny", seq_len=16, seed=3))
    assert torch.equal(again.blocks[1].self_attn.k_proj.bias, ad.blocks[1].self_attn.k_proj.bias)
    with torch.no_grad():
        for ly in ad.blocks:
            for p in (ly.self_attn.q_proj, ly.self_attn.k_proj, ly.self_attn.v_proj):
                p.bias.zero_()
    assert (ad.reference(x)[0] - ref).abs().max() > 1e-2


def test_sliding_window_is_refused_in_one_line():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from runtime.models.llama import QWEN2_TINY, HFQwen2Adapter

    cfg = Qwen2Config(**QWEN2_TINY, use_sliding_window=True, sliding_window=8, max_window_layers=0)
    with pytest.raises(ValueError, match="sliding-window") as e:
        HFQwen2Adapter(Qwen2ForCausalLM(cfg), "qwen2-sw", 16)
    assert "\n" not in str(e.value)


def test_qwen25_shape_is_the_published_model():
    """qwen2.5-0.5b: Qwen2.5-0.5B's configuration (random weights): 494,032,768 parameters
    with the tied LM head, GQA 14 / 2, SwiGLU 4864; the torch-free named shape is the
    adapter's."""
    from runtime.models import ModelSpec, build_adapter

    with torch.device("meta"):
        ad = build_adapter(ModelSpec("qwen2.5-0.5b"), device="meta")
    assert sum(p.numel() for p in ad.model.parameters()) == 494_032_768
    s = named_shape("qwen2.5-0.5b")
    assert s == ad.shape
    assert (s.d, s.heads, s.kv_heads, s.kv_dim, s.d_ff, s.mlp_mats) == (896, 14, 2, 128, 4864, 3)
