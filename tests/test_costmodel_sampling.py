"""Adaptive sampling picks unprofiled configurations; a campaign reports held-out accuracy."""
import numpy as np
import pytest

from costmodel import sampling
from costmodel.perfmap import PerfMap
from costmodel.synthetic import synthetic_perfmap

AX = {"bw": (200.0, 500.0, 900.0), "cr": (3.3, 9.9), "img_size": (224,), "world_size": (2,)}


@pytest.fixture(scope="module")
def pm():
    return PerfMap.from_dict(synthetic_perfmap(seed=3, axes=AX))


@pytest.mark.parametrize("method", sampling.METHODS)
def test_propose_returns_new_distinct_rows(pm, method):
    n = len(pm.usable(breakdown=True))
    seed_set = list(range(0, n, 4))
    got = sampling.propose(pm, seed_set, 5, method=method)
    assert len(got) == 5 and len(set(got)) == 5
    assert not set(got) & set(seed_set) and all(0 <= i < n for i in got)


def test_boundary_picks_near_ties(pm):
    recs = pm.usable(breakdown=True)
    seed_set = list(range(0, len(recs), 3))
    got = sampling.propose(pm, seed_set, 6, method="boundary")
    # the picks are configurations whose competitors are close: every pick has a competitor
    # at the same (batch, bw) within 25 % in measured latency
    from costmodel.perfmap import record_latency_ms
    for i in got:
        r = recs[i]
        comp = [record_latency_ms(q) for q in recs if q is not r and q["batch"] == r["batch"]
                and (q["bw"] == r["bw"] or q["strategy"] == "single")]
        assert min(abs(np.log(record_latency_ms(r) / c)) for c in comp) < np.log(1.25)


def test_unknown_method(pm):
    with pytest.raises(ValueError, match="unknown method 'greedy'; known"):
        sampling.propose(pm, [0, 1, 2], 3, method="greedy")


def test_campaign_reports_held_out_metrics(pm):
    kw = dict(cv_folds=2, residual_estimators=30)
    a = sampling.simulate(pm, 0.3, rounds=2, model_kw=kw)
    r = sampling.compare_random(pm, 0.3, seeds=(0,), model_kw=kw)
    n = len(pm.usable(breakdown=True))
    assert a["n_profiled"] == r["n_profiled"] == round(0.3 * n)
    assert a["held_out"]["n"] == n - a["n_profiled"]
    assert a["held_out"]["median_ape"] < 10 and r["held_out"]["median_ape"] < 10
