"""Decisions under a memory budget (costmodel.decision, max_memory_mb): a candidate whose
predicted per-device peak (costmodel.memory) exceeds the budget is never chosen."""
import math
import warnings

import pytest

import costmodel
from costmodel.decision import DecisionTable, choose


@pytest.fixture(scope="module")
def cm():
    return costmodel.load_profile("jetson-orin-nano")


def _table(cm, mb, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DecisionTable(cm, seq_len=197, batches=(1, 8, 32), bws=(500.0,), max_memory_mb=mb, **kw)


def test_budget_between_peaks_rules_out_only_what_does_not_fit(cm):
    free = _table(cm, 1e9)
    labels = free.labels
    peaks = {lab: free.peak_mb[i] for i, lab in enumerate(labels)}      # (batches,) per candidate
    b32 = 2                                                           # index of batch 32
    single = peaks["single"][b32]
    lowest = min(p[b32] for p in peaks.values())
    assert lowest < single                      # the row split's activations are smaller at batch 32
    budget = (single + lowest) / 2
    t = _table(cm, budget)
    d = t.choose(32, 500.0)
    assert d["mode"] != "single" and peaks[d["mode"]][b32] <= budget
    assert math.isinf(d["predicted"]["single"]["latency_ms"])
    # the same query without a budget may choose anything; with it, every fitting candidate is finite
    for lab, p in d["predicted"].items():
        assert math.isfinite(p["latency_ms"]) == (peaks[lab][b32] <= budget), lab


def test_nothing_fits_is_one_line(cm):
    t = _table(cm, 1.0)
    with pytest.raises(ValueError, match="no candidate fits max_memory_mb=1 at batch 8") as e:
        t.choose(8, 500.0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mb,needle", [(float("nan"), "max_memory_mb"), (-5, "max_memory_mb"),
                                       ([100.0, 100.0, 100.0], "3 values for world_size=2")])
def test_bad_budgets(cm, mb, needle):
    with pytest.raises(ValueError, match=needle):
        _table(cm, mb)


def test_choose_takes_a_per_device_budget():
    """A budget every candidate fits changes nothing; one that only device 1 is short of
    rules out the distributed candidates and leaves single (which runs on device 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = choose(32, 500, seq_len=197)
        roomy = choose(32, 500, seq_len=197, max_memory_mb=[2000.0, 2000.0])
        tight = choose(32, 500, seq_len=197, max_memory_mb=[2000.0, 1.0])
    assert roomy["mode"] == free["mode"] and free["mode"] != "single"
    assert tight["mode"] == "single"
