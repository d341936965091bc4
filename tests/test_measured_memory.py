"""Measured per-device memory (runtime/measure/memory.py): the CPU profiler peak, and the
fields `run` adds. No timing assertions."""
import pytest

torch = pytest.importorskip("torch")


def _forward_peak(batch):
    from runtime.measure.memory import measure_peak
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy

    ad = build_adapter(ModelSpec("vit_small_patch16_224", depth=1), "cpu")
    x = ad.make_inputs(batch, 0, "cpu")
    runner = create_strategy("single").apply(ad, DistContext(), batch)
    return measure_peak(lambda: runner(x), "cpu")


def test_cpu_peak_counts_known_tensors():
    from runtime.measure.memory import measure_peak
    m = measure_peak(lambda: torch.ones(1000, 250) + 1.0)          # two 1 MB tensors
    assert m["source"] == "torch.profiler"
    assert 2_000_000 <= m["peak_bytes"] <= 2_001_000          # ones + the sum (+ a scalar)


def test_cpu_forward_peak_positive_and_grows_with_batch():
    p1, p4 = _forward_peak(1), _forward_peak(4)
    assert p1["peak_bytes"] > 0 and p1["rss_hwm_bytes"] > 0
    assert p4["peak_bytes"] > 2 * p1["peak_bytes"]


def test_run_json_carries_measured_and_predicted_peaks():
    from runtime.measure.run import RunConfig, public, run_rank
    cfg = RunConfig(model="vit_small_patch16_224", strategy="single", world_size=1, batch=2,
                    depth=1, repeats=1, warmup=0)
    res = public(run_rank(cfg, 0, 1))
    import json
    json.dumps(res)
    assert res["memory_peak_bytes"][0] > 0 and res["memory_peak_predicted_bytes"][0] > 0
    r0 = res["ranks"][0]
    assert r0["memory_peak_bytes"] == res["memory_peak_bytes"][0]
    assert r0["memory"]["weights_used_bytes"] == r0["memory"]["weights_predicted_bytes"]
    # same order of magnitude as the model's activations + buffers
    assert 0.5 < r0["memory_peak_bytes"] / r0["memory_peak_predicted_bytes"] < 2.0


def test_static_mode_over_budget_is_refused_in_one_line():
    from runtime.models import ModelSpec, build_adapter
    from runtime.serve.adaptive import AdaptiveRunner
    from runtime.launch import free_port
    from runtime.serve.policy import FixedPolicy

    ad = build_adapter(ModelSpec("vit_small_patch16_224", depth=2), "cpu")
    r = AdaptiveRunner(ad, FixedPolicy("voltage"), world_size=2, max_memory_mb=1.0, max_batch=8,
                       port=free_port("127.0.0.1"))
    with pytest.raises(ValueError, match=r"static mode voltage does not fit: predicted peak .* MB on device \d at batch 8 > max_memory_mb=1$"):
        r.check_fits()
    with pytest.raises(ValueError, match="does not fit"):
        r.start(block=False)                          # refused before any peer is waited for
    AdaptiveRunner(ad, FixedPolicy("voltage"), world_size=2, max_memory_mb=10_000.0,
                   port=free_port("127.0.0.1")).check_fits()


@pytest.mark.parametrize("memory", [False, True])
def test_sweep_rows_carry_peaks_only_when_asked(memory):
    from runtime.measure.spec import SweepSpec
    from runtime.measure.worker import group_plan, run_group

    spec = SweepSpec(models=("test_vit",), depth=2, strategies=("single",), repeats=1, memory=memory)

    class C:
        key, img_size, strategy, batch, cr = "k", 32, "single", 2, None
    plan = group_plan(spec, "test_vit", 1, [C()])
    rows = []
    run_group(plan, 0, 1, rows.append)
    (row,) = rows
    assert row["error"] is None
    if memory:
        assert row["memory_peak_bytes"] > 0 and row["memory_peak_predicted_bytes"] > 0
        assert row["memory_peak_bytes_ranks"] == [row["memory_peak_bytes"]]
    else:
        assert "memory_peak_bytes" not in row
