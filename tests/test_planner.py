"""Heterogeneity-aware planning (runtime/parallel/planner.py): pure-Python tier first, then the
cgroup CPU quota (skipped without write access to a cpu controller)."""
import os
import time

import pytest

from costmodel.formulas import split_proportional, vit_shape
from costmodel.strategies import make_plan
from runtime.parallel.planner import cpu_quota, plan_splits, predict_ms

VITS = vit_shape("vit_small_patch16_224", d=384, heads=6)      # N = 197


def test_split_proportional():
    assert split_proportional(197, [2, 1]) == [131, 66]
    assert split_proportional(10, [1, 1, 1]) == [4, 3, 3]
    assert split_proportional(5, [100, 1, 1], minimum=1) == [3, 1, 1]
    with pytest.raises(ValueError, match="must all be finite and > 0"):
        split_proportional(5, [1, 0])


def test_equal_speeds_keep_even_split():
    for st in ("voltage", "galaxy", "tensor_parallel"):
        sp = plan_splits(st, VITS, [1e9, 1e9])
        # at most the head's share (rank 0) moves: within 0.1 % of the even split
        assert sp.predicted_ms <= sp.even_predicted_ms <= 1.001 * sp.predicted_ms, sp


@pytest.mark.parametrize("strategy", ["voltage", "prism", "tensor_parallel", "galaxy"])
def test_half_speed_device_gets_a_third(strategy):
    """One device at half speed: the planner gives it about 1/3 of the work and predicts
    the ideal 2/3 of the even split's compute-bound latency."""
    kw = {"cr": 4.0} if strategy == "prism" else {}
    sp = plan_splits(strategy, VITS, [2e9, 1e9], **kw)
    pl = sp.plan
    share = pl.flops(1) / (pl.flops(0) + pl.flops(1))
    assert 0.30 < share < 0.36, (strategy, share, sp)
    assert sp.predicted_ms < 0.75 * sp.even_predicted_ms, sp
    assert sp.predicted_ms == pytest.approx(predict_ms(pl, [2e9, 1e9]))
    if strategy in ("voltage", "prism", "galaxy"):
        assert sp.partition[0] > sp.partition[1]
    if strategy in ("tensor_parallel", "galaxy"):
        assert sp.options["heads"][0] > sp.options["heads"][1]
        assert sp.options["cols"][0] > sp.options["cols"][1]
        make_plan(strategy, VITS, world_size=2, **sp.options)   # a valid plan


def test_bandwidth_term_and_three_devices():
    sp = plan_splits("galaxy", VITS, [2e9, 1e9, 2e9], bw=300)
    pl = sp.plan
    comm = max(pl.comm_bytes(r) for r in range(3)) * 8 / 300e6 * 1e3
    assert sp.predicted_ms > comm > 0
    assert sp.partition[1] < min(sp.partition[0], sp.partition[2])
    # voltage's traffic grows with a device's rows: the planner never hands the slow
    # device more rows than the fast ones
    v = plan_splits("voltage", VITS, [2e9, 1e9, 2e9], bw=50)
    assert v.partition[1] < min(v.partition[0], v.partition[2])


def test_errors():
    with pytest.raises(ValueError, match=r"unknown strategy 'single' to plan; known: \[.*'voltage'"):
        plan_splits("single", VITS, [1e9, 1e9])
    with pytest.raises(ValueError, match="must all be > 0"):
        plan_splits("voltage", VITS, [1e9, 0.0])
    with pytest.raises(ValueError, match="world_size >= 2"):
        plan_splits("voltage", VITS, [1e9])
    with pytest.raises(ValueError, match=r"fraction=0 CPUs must be in"):
        with cpu_quota(0):
            pass


def _can_quota() -> bool:
    base = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/cpu"
    return os.path.isdir(base) and os.access(base, os.W_OK)


def _spin_share(sec: float) -> float:
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < sec:
        pass
    return (time.process_time() - c0) / sec


@pytest.mark.skipif(not _can_quota(), reason="no writable cpu cgroup controller here")
def test_cpu_quota_caps_the_process_and_restores():
    before = open("/proc/self/cgroup").read()
    with cpu_quota(0.25) as cg:
        assert os.path.basename(cg) in open("/proc/self/cgroup").read()
        share = _spin_share(0.6)
    assert share < 0.32, share          # at most 0.25 CPU (plus period rounding)
    assert open("/proc/self/cgroup").read() == before
    assert not os.path.exists(cg)
