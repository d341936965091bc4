"""costmodel.memory's live sets against the runtime: the peak of live tensor bytes that
torch.profiler measures during one forward equals the activations + buffers the model
predicts (it lists what the adapters' and strategies' code keeps referenced)."""
import pytest
import torch

from costmodel.memory import live_points, memory_breakdown
from runtime.measure.memory import measure_peak
from runtime.models import ModelSpec, build_adapter
from runtime.parallel import DistContext, create_strategy


@pytest.mark.parametrize("name,seq", [("test_vit", None), ("bert-tiny", 32), ("gpt2-tiny", 32)])
@pytest.mark.parametrize("batch", [1, 4])
def test_single_forward_peak_is_the_predicted_live_set(name, seq, batch):
    ad = build_adapter(ModelSpec(name, depth=2, seq_len=seq, seed=0), "cpu")
    runner = create_strategy("single").apply(ad, DistContext(0, 1, torch.device("cpu")), batch)
    x = ad.make_inputs(batch, 0, "cpu")
    with torch.no_grad():
        res = runner(x)                                   # warm-up
    measured = measure_peak(lambda: runner(x), "cpu")["peak_bytes"]
    b = memory_breakdown(res.plan, 0)
    predicted = b["activations"] + b["buffers"]
    assert abs(predicted - measured) <= 0.01 * measured, (name, batch, measured, predicted)


def test_points_name_where_the_peak_is():
    from costmodel.formulas import gpt2_shape, vit_shape
    from costmodel.strategies import make_plan

    vit = make_plan("voltage", vit_shape("vit_small_patch16_224", d=384, heads=6), world_size=2, batch=8)
    pts = {k: a + b for k, a, b in live_points(vit, 0)}
    assert max(pts, key=pts.get) == "block"               # the MLP with the attention's tensors held
    lm = make_plan("single", gpt2_shape(seq_len=64), world_size=1, batch=8)
    pts = {k: a + b for k, a, b in live_points(lm, 0)}
    assert max(pts, key=pts.get) == "head"                # GPT-2's B N V logits
    pipe = make_plan("pipeline", vit_shape("vit_small_patch16_224", d=384, heads=6, n_layers=2),
                     world_size=3, batch=8)
    (only,) = live_points(pipe, 2)                        # a stage without layers
    assert only[0] == "forward" and only[2] == 8 * 197 * 384 * 4
