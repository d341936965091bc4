"""costmodel.memory: weights held per strategy (against the real models' parameter
counts), activations and buffers, and predict's memory_peak_bytes."""
import pytest

from costmodel.formulas import bert_shape, gpt2_shape, vit_shape
from costmodel.memory import (activation_bytes, block_params, buffer_bytes, memory_breakdown,
                              memory_peak, weights_bytes)
from costmodel.strategies import list_strategies, make_plan

VIT_S = vit_shape("vit_small_patch16_224", d=384, heads=6)
SHAPES = [VIT_S, bert_shape(seq_len=256), gpt2_shape(seq_len=256)]


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "bert-base", "gpt2"])
def test_single_weights_are_the_models_parameters(name):
    torch = pytest.importorskip("torch")
    from runtime.models import ModelSpec, build_adapter
    with torch.device("meta"):
        ad = build_adapter(ModelSpec(name), device="meta")
    n = sum(p.numel() for p in ad.model.parameters())
    got = weights_bytes(make_plan("single", ad.shape, world_size=1), 0) / 4
    assert got == pytest.approx(n, rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_weights_per_strategy(shape):
    single = weights_bytes(make_plan("single", shape, world_size=1), 0)
    for p in (2, 3):
        for s in ("voltage", "prism"):
            opts = {"cr": 4.0} if s == "prism" else {}
            plan = make_plan(s, shape, world_size=p, **opts)
            assert [weights_bytes(plan, r) for r in range(p)] == [single] * p
        pipe = make_plan("pipeline", shape, world_size=p)
        w = [weights_bytes(pipe, r) for r in range(p)]
        assert sum(w) == single and w[0] == max(w)          # embedding + head on device 0
        tp = make_plan("tensor_parallel", shape, world_size=p)
        w = [weights_bytes(tp, r) for r in range(p)]
        assert max(w) < single < sum(w)                     # split blocks, replicated rest
        # sum over devices: the whole model once + (P-1) x what is replicated
        # (embedding, per block the proj / fc2 biases and the norms: 6 d)
        from costmodel.memory import embedding_params
        assert sum(w) - single == (p - 1) * (embedding_params(shape) + shape.n_layers * 6 * shape.d) * 4


def test_uneven_pipeline_weights_follow_layers():
    a = make_plan("pipeline", VIT_S, world_size=2, layers=(8, 4))
    assert weights_bytes(a, 1) == 4 * block_params(384, 1536) * 4


def test_activations_grow_with_batch_and_shrink_with_rows():
    v1 = make_plan("voltage", VIT_S, world_size=2, batch=1)
    v8 = make_plan("voltage", VIT_S, world_size=2, batch=8)
    s8 = make_plan("single", VIT_S, world_size=1, batch=8)
    p8 = make_plan("prism", VIT_S, world_size=2, batch=8, cr=9.9)
    assert activation_bytes(v8, 0) > activation_bytes(v1, 0)
    assert activation_bytes(p8, 0) <= activation_bytes(v8, 0) < activation_bytes(s8, 0)
    assert buffer_bytes(p8, 0) < buffer_bytes(v8, 0)
    assert activation_bytes(s8, 0, attention="math") > activation_bytes(s8, 0)
    with pytest.raises(ValueError, match="attention"):
        activation_bytes(s8, 0, attention="flash2")


def test_pipeline_microbatches_bound_activations():
    one = make_plan("pipeline", VIT_S, world_size=2, batch=32, microbatches=1)
    many = make_plan("pipeline", VIT_S, world_size=2, batch=32, microbatches=8)
    assert activation_bytes(many, 1) < activation_bytes(one, 1)
    # every micro-batch's receive is posted up front: B N d whatever the micro-batching
    assert buffer_bytes(many, 0) == buffer_bytes(one, 0) == one.comm_bytes(0)


def test_buffers_and_staging():
    s = make_plan("single", VIT_S, world_size=1, batch=4)
    assert buffer_bytes(s, 0) == 0
    v = make_plan("voltage", VIT_S, world_size=2, batch=4)
    assert buffer_bytes(v, 0) == v.recv_bytes(0) // v.n_exchanges      # one exchange's receive buffers
    assert buffer_bytes(v, 0, staging=True) > buffer_bytes(v, 0)


def test_every_strategy_has_a_peak():
    for name in list_strategies():
        opts = {"cr": 4.0} if name == "prism" else {}
        plan = make_plan(name, VIT_S, world_size=1 if name == "single" else 3, batch=2, **opts)
        peaks = memory_peak(plan)
        assert len(peaks) == plan.world_size and all(p > 0 for p in peaks)
        b = memory_breakdown(plan, 0)
        assert b["peak"] == b["weights"] + b["activations"] + b["buffers"] == peaks[0]


def test_predict_returns_memory_per_device():
    import warnings

    import costmodel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = costmodel.predict(8, 1000, 9.9)
        assert len(p["memory_peak_bytes"]) == 2 and min(p["memory_peak_bytes"]) > 300e6
        s = costmodel.predict(8, None, None, strategy="single")
        assert len(s["memory_peak_bytes"]) == 1 and s["memory_peak_bytes"][0] > p["memory_peak_bytes"][0]
        assert costmodel.predict([1, 8], 1000, 9.9)["memory_peak_bytes"] is None
