"""Decision hook (torch-free): lookups, measured entries win, objectives, bad input."""
import copy
import subprocess
import sys
import warnings

import pytest

import costmodel
from costmodel.decision import DecisionTable, choose
from costmodel.perfmap import PerfMap, load_perfmap

JETSON = "data/perfmaps/jetson_orin_nano_paper.json"


@pytest.fixture(scope="module")
def table():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DecisionTable(costmodel.load_profile("jetson-orin-nano"), seq_len=197)


def test_paper_adaptive_crossover_at_full_bandwidth(table):
    modes = {b: table.choose(b, 900)["mode"] for b in (1, 2, 4, 8, 16, 32)}
    assert all(modes[b] == "single" for b in (1, 2, 4)), modes
    assert all(modes[b].startswith("prism") for b in (8, 16, 32)), modes
    d = table.choose(8, 900)
    assert set(d["predicted"]) == {"single", "voltage", "prism(cr=3.3)", "prism(cr=4.95)", "prism(cr=9.9)"}
    best = min(v["latency_ms"] for v in d["predicted"].values())
    assert d["predicted"][d["mode"]]["latency_ms"] == best and 0 < d["margin"] < 1


def test_low_bandwidth_keeps_batch_8_local(table):
    assert table.choose(8, 200)["mode"] == "single"
    assert table.choose_fast(8, 200) == ("single", None)
    assert table.choose_fast(32, 900) == ("prism", 9.9)


def test_measured_entry_wins_over_model():
    pm = load_perfmap(JETSON)
    cm = costmodel.load_profile("jetson-orin-nano")
    # a measured Voltage entry at (batch 8, 500 Mbit/s) far faster than anything predicted
    rec = copy.deepcopy(next(r for r in pm.records if r["strategy"] == "voltage" and r["batch"] == 8))
    rec.update(bw=500.0, latency_ms={"median": 10.0, "p10": 9.0, "p90": 11.0, "n": 5},
               exclude=None)
    pm2 = PerfMap(meta=pm.meta, records=pm.records + [rec])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = DecisionTable(cm, pm2, seq_len=197)
    d = t.choose(8, 500)
    assert d["mode"] == "voltage" and d["source"] == "profiled"
    assert d["predicted"]["voltage"]["latency_ms"] == 10.0
    assert t.choose(8, 600)["mode"] != "voltage"          # only the exact configuration


def test_max_cr_and_energy_objective(table):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = choose(32, 900, max_cr=5, seq_len=197)
        assert d["mode"] in ("single", "voltage", "prism(cr=3.3)", "prism(cr=4.95)")
        assert "prism(cr=9.9)" not in d["predicted"]
        e = choose(16, 900, objective="energy", seq_len=197)
        assert e["predicted"][e["mode"]]["energy_j"] == min(
            v["energy_j"] for v in e["predicted"].values())
        w = choose(16, 900, objective={"latency": 0.5, "energy": 0.5}, seq_len=197)
        # the weighted score: each candidate normalised by the best latency / energy
        pr = w["predicted"]
        lo_l = min(v["latency_ms"] for v in pr.values())
        lo_e = min(v["energy_j"] for v in pr.values())
        score = {k: 0.5 * v["latency_ms"] / lo_l + 0.5 * v["energy_j"] / lo_e for k, v in pr.items()}
        assert w["mode"] == min(score, key=score.get)


@pytest.mark.parametrize("kw,needle", [
    (dict(batch=8, bw=500, objective="speed"), "unknown objective 'speed'"),
    (dict(batch=8, bw=500, max_cr=2), "below every prism candidate"),
    (dict(batch=0, bw=500), "batch=0 must be an integer >= 1"),
    (dict(batch=8, bw=0), "bw=0 must be a bandwidth > 0"),
    (dict(batch=8, bw=-5), "bw=-5 must be a bandwidth > 0"),
    (dict(batch=8, bw=500, profile="nope"), "unknown profile 'nope'"),
])
def test_bad_input(kw, needle):
    with pytest.raises(ValueError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            choose(kw.pop("batch"), kw.pop("bw"), seq_len=197, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_decision_is_torch_free():
    code = "import costmodel.decision, costmodel, sys; costmodel.load_profile(); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
