"""tensor_parallel / galaxy in the torch-free cost model and the decision hook (issue 8).

Features against the shared formulas, the fit (own comm parameters, held-out error on a
SYNTHETIC map and, when it is there, on the measured testbed maps), the decision hook's
TP candidates, the one-line refusals, merge_perfmaps, and the old profiles still loading.
"""
import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import costmodel
from costmodel.decision import DecisionTable, choose
from costmodel.strategies import decision_candidates, get_formula

DEFAULT_CANDIDATES = decision_candidates()
TP_CANDIDATES = tuple(c for c in decision_candidates(include_split_weights=True)     # head/column splits
                      if c not in DEFAULT_CANDIDATES and c[0] in ("tensor_parallel", "galaxy"))
from costmodel.features import QueryError, per_sample, physics, tp_is_default, tp_key
from costmodel.formulas import shape_for, vit_shape
from costmodel.strategies import make_plan
from costmodel.model import CostModel, metrics
from costmodel.perfmap import PerfMap, PerfMapError, load_perfmap, merge_perfmaps, record_latency_ms
from costmodel.synthetic import synthetic_perfmap

REPO = Path(__file__).resolve().parent.parent
P2 = REPO / "data" / "perfmaps" / "testbed_vit_p2.json"
TPMAP = REPO / "data" / "perfmaps" / "testbed_vit_tp.json"
TP_AXES = {"strategy": ("single", "voltage", "prism", "tensor_parallel", "galaxy"), "batch": (1, 2, 4, 8, 16),
           "bw": (200.0, 350.0, 500.0, 700.0, 900.0), "cr": (9.9,), "img_size": (224,), "world_size": (2,)}


# ----------------------------------------------------------------------------- features

@pytest.mark.parametrize("name,img", [("vit_tiny_patch16_224", 224), ("vit_small_patch16_224", 160)])
@pytest.mark.parametrize("P", [2, 3])
@pytest.mark.parametrize("strategy,opts,steps_per_collective", [
    ("tensor_parallel", None, lambda P: 2 * (P - 1)),               # GLOO ring: 2 (P-1) steps
    ("tensor_parallel", {"collective": "pairwise"}, lambda P: 2),   # reduce-scatter + all-gather
    ("galaxy", None, lambda P: 1),
    ("galaxy", {"tiles": 3}, lambda P: 3),                          # one message per tile
])
def test_tp_features_equal_formulas(name, img, P, strategy, opts, steps_per_collective):
    shape = shape_for(name, img_size=img)
    plan = make_plan(strategy, shape, world_size=P, batch=1, **(opts or {}))
    ps = per_sample(strategy, shape, P, None, tp=tp_key(opts))
    assert ps.flops == plan.flops(0)
    assert ps.flops_all == sum(plan.flops(r) for r in range(P))
    assert ps.wire_bytes == max(plan.comm_bytes(0), plan.recv_bytes(0))
    assert ps.staged_bytes == plan.staged_bytes(0)
    assert ps.n_exchanges == plan.n_exchanges == shape.n_layers * (2 if strategy == "tensor_parallel" else 4)
    assert ps.n_messages == plan.n_exchanges * steps_per_collective(P)
    assert ps.rows == shape.seq_len                                  # every token on every device
    # vectorised path, batch scaling
    f = physics(strategy, [1, 4], 500.0, None, shape.seq_len, P, shape, tp=opts)
    assert np.allclose(f["flops"], [plan.flops(0), 4 * plan.flops(0)])
    assert np.allclose(f["wire_bytes"], [ps.wire_bytes, 4 * ps.wire_bytes])
    assert np.allclose(f["n_messages"], ps.n_messages) and np.allclose(f["rows"], [shape.seq_len, 4 * shape.seq_len])
    assert np.allclose(f["comm_ms_nominal"], np.array([1, 4]) * ps.wire_bytes * 8 / 500e6 * 1e3)


def test_tp_bytes_are_the_runtime_record():
    """Rank 0's bytes as a profile record states them (vit_tiny, 2 blocks, N = 50, P = 2/3)."""
    shape = vit_shape("vit_tiny_patch16_224", img_size=112, d=192, heads=3, n_layers=2)
    for strategy, P, b, sent in (("tensor_parallel", 2, 1, 153600), ("tensor_parallel", 3, 2, 409600),
                                 ("galaxy", 2, 2, 307200), ("galaxy", 3, 1, 205824)):
        f = physics(strategy, b, 300.0, None, 50, P, shape)
        assert f["wire_bytes"][0] == sent, (strategy, P)


def test_pairwise_strategies_keep_one_message_per_exchange():
    shape = shape_for("vit_small_patch16_224")
    for s, cr in (("voltage", None), ("prism", 9.9)):
        for P in (2, 3):
            ps = per_sample(s, shape, P, cr)
            assert ps.n_messages == ps.n_exchanges == shape.n_layers
    assert per_sample("single", shape, 1, None).n_messages == 0


def test_tp_options_rejected_where_they_do_not_apply():
    shape = shape_for("vit_tiny_patch16_224")
    with pytest.raises(QueryError, match="apply to"):
        per_sample("voltage", shape, 2, None, tp=(("tiles", 2),))
    with pytest.raises(QueryError, match="unknown tensor_parallel/galaxy option"):
        physics("galaxy", 1, 500.0, None, 197, 2, shape, tp={"tile": 2})
    with pytest.raises(QueryError, match="tiles=0"):
        physics("galaxy", 1, 500.0, None, 197, 2, shape, tp={"tiles": 0})
    assert tp_is_default("tensor_parallel", shape, 2, {"collective": "native"})
    assert not tp_is_default("tensor_parallel", shape, 2, {"collective": "pairwise"})
    assert tp_is_default("galaxy", shape, 2, {"heads": [2, 1]}) and not tp_is_default("galaxy", shape, 2, {"heads": [1, 2]})


# ----------------------------------------------------------------------------- fit

@pytest.fixture(scope="module")
def tp_synth():
    return PerfMap.from_dict(synthetic_perfmap(seed=3, axes=TP_AXES))


@pytest.fixture(scope="module")
def tp_fitted(tp_synth):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CostModel(residual_estimators=40, cv_folds=3).fit(tp_synth)


def test_fit_shares_the_link_or_gives_tp_their_own(tp_synth, tp_fitted):
    cm = tp_fitted
    assert cm.strategies_ == ["galaxy", "prism", "single", "tensor_parallel", "voltage"]
    assert cm.tp_phases == () and set(cm.params_["comm"]) == {"*"}          # default: one link
    assert {"tensor_parallel", "galaxy"} <= set(cm.params_["compute"])      # own kernels
    own = CostModel(residual=False, cv_folds=2, tp_phases=("comm",)).fit(tp_synth)
    comm = own.params_["comm"]
    assert {"tensor_parallel", "galaxy"} <= set(comm) and not {"voltage", "prism"} & set(comm)
    # with their own link, the pooled one is fitted on single/voltage/prism alone
    base = PerfMap(meta=tp_synth.meta, records=[r for r in tp_synth.records
                                                if r["strategy"] in ("single", "voltage", "prism")])
    cm0 = CostModel(residual=False, cv_folds=2).fit(base)
    assert np.allclose(comm["*"], cm0.params_["comm"]["*"], rtol=1e-6)
    assert not np.allclose(cm.params_["comm"]["*"], comm["*"])            # TP rows move the shared link
    assert "per_message_ms" in own.physical_parameters()["comm"]["tensor_parallel"]
    with pytest.raises(ValueError, match="tp_phases=.*unknown phase"):
        CostModel(tp_phases=("link",)).fit(tp_synth)


def test_galaxy_overlap_layer_leaves_other_strategies_alone(tp_synth, tp_fitted, monkeypatch):
    """Galaxy's overlap layer: exposed comm = link - overlap_share x min(wire, compute); the
    base layers are fitted as without it, so every other strategy predicts bit-identically."""
    import costmodel.model as cmm

    cm = tp_fitted
    layer = cm.overlap_["galaxy"]
    assert set(cm.overlap_) == {"galaxy"} and 0.0 < layer["overlap_share"] < 2.0   # synthetic hides 20 %
    assert cm.physical_parameters()["overlap"]["galaxy"]["overlap_share"] == layer["overlap_share"]
    q = dict(batch=np.array([1, 4, 16, 8, 2, 16]), bw=np.array([200.0, 500.0, 900.0, 350.0, 700.0, 200.0]),
             cr=np.array([np.nan, np.nan, 9.9, np.nan, np.nan, np.nan]),
             strategy=np.array(["tensor_parallel", "voltage", "prism", "single", "galaxy", "galaxy"], dtype=object))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.setattr(get_formula("galaxy"), "overlaps_comm", False)
        plain = CostModel(residual_estimators=40, cv_folds=3).fit(tp_synth)
    assert plain.overlap_ == {}
    a = cm.predict(q["batch"], q["bw"], q["cr"], strategy=q["strategy"], warn=False)
    b = plain.predict(q["batch"], q["bw"], q["cr"], strategy=q["strategy"], warn=False)
    other = q["strategy"] != "galaxy"
    for k in ("latency_ms", "comm_ms", "compute_ms", "analytical_ms", "energy_j"):
        assert np.array_equal(a[k][other], b[k][other]), k
    assert not np.allclose(a["comm_ms"][~other], b["comm_ms"][~other])
    assert cm.params_ == plain.params_ and cm.residual_weight_ == plain.residual_weight_
    # the layer's analytical comm never exceeds the link's, never goes below 0
    f = physics(q["strategy"], q["batch"], q["bw"], q["cr"], 197, 2, cm._shape(None))
    ana = cm._predict_analytical(cm.params_, f)
    g = q["strategy"] == "galaxy"
    exp = cmm._exposed_comm(ana, layer["overlap_share"], f)
    assert (exp[g] <= ana["comm"][g]).all() and (exp >= 0).all()


def test_galaxy_overlap_layer_file_checks(tp_fitted):
    d = json.loads(json.dumps(tp_fitted.to_dict()))
    assert d["overlap_"]["galaxy"]["overlap_share"] == tp_fitted.overlap_["galaxy"]["overlap_share"]
    bad = copy.deepcopy(d)
    bad["overlap_"]["galaxy"]["overlap_share"] = -0.5
    with pytest.raises(costmodel.model.ModelFileError, match="overlap_share"):
        CostModel.from_dict(bad)
    bad = copy.deepcopy(d)
    bad["overlap_"]["voltage"] = bad["overlap_"]["galaxy"]
    with pytest.raises(costmodel.model.ModelFileError, match="overlap layers exist for"):
        CostModel.from_dict(bad)
    old = copy.deepcopy(d)
    del old["overlap_"]                                   # a file from before the layer
    assert CostModel.from_dict(old).overlap_ == {}


def test_tp_held_out_bandwidth_predicted(tp_synth):
    """bw = 350 Mbit/s left out of every strategy; TP rows predicted within 10 % (median)."""
    train = PerfMap(meta=tp_synth.meta, records=[r for r in tp_synth.records if r["bw"] != 350.0])
    test = [r for r in tp_synth.records if r["bw"] == 350.0 and r["strategy"] in ("tensor_parallel", "galaxy")]
    cm = CostModel(residual_estimators=40, cv_folds=3).fit(train)
    p = cm.predict(np.array([r["batch"] for r in test]), 350.0, None,
                   strategy=np.array([r["strategy"] for r in test], dtype=object), warn=False)
    m = metrics(p["latency_ms"], [record_latency_ms(r) for r in test])
    assert m["n"] == 10 and m["median_ape"] < 10.0 and m["p90_ape"] < 20.0, m
    # comm follows the message steps: galaxy's comm per byte is below tensor_parallel's here
    assert (p["comm_ms"] > 0).all()


def test_predict_tp_options_and_save_load_roundtrip(tp_fitted, tmp_path):
    cm = tp_fitted
    a = cm.predict(8, 500.0, None, strategy="galaxy", warn=False)
    b = cm.predict(8, 500.0, None, strategy="galaxy", tp={"tiles": 4}, warn=False)
    assert float(b["comm_ms"]) != float(a["comm_ms"])                 # 4x the message steps
    same = cm.predict(8, 500.0, None, strategy="galaxy", tp={"tiles": 1}, warn=False)
    assert float(same["latency_ms"]) == float(a["latency_ms"])
    path = cm.save(tmp_path / "tp.json")
    cm2 = CostModel.load(path)
    assert cm2.tp_phases == () and cm2.strategies_ == cm.strategies_
    q = dict(batch=np.array([1, 4, 16]), bw=np.array([200.0, 500.0, 900.0]), cr=None,
             strategy=np.array(["tensor_parallel", "galaxy", "prism"], dtype=object))
    q2 = dict(q, cr=np.array([np.nan, np.nan, 9.9]))
    r1 = cm.predict(q2["batch"], q2["bw"], q2["cr"], strategy=q2["strategy"], warn=False)
    r2 = cm2.predict(q2["batch"], q2["bw"], q2["cr"], strategy=q2["strategy"], warn=False)
    assert np.array_equal(r1["latency_ms"], r2["latency_ms"])


def _as_written_before_issue_8(d: dict) -> dict:
    """A model document as the writer before issue 8 wrote it (the shipped jetson-orin-nano
    and testbed-vit-p2 profiles were such files until re-written with the same numbers):
    no settings.tp_phases, no overlap_, the comm basis named l_exchange_ms."""
    d = json.loads(json.dumps(d))
    del d["settings"]["tp_phases"]
    assert d.pop("overlap_") == {}
    d["basis"]["comm"] = ["l_exchange_ms" if b == "l_message_ms" else b for b in d["basis"]["comm"]]
    return d


def test_old_profiles_load_and_predict_as_saved():
    for name in ("jetson-orin-nano", "testbed-vit-p2"):
        raw = json.loads((REPO / "costmodel" / "profiles" / f"{name}.json").read_text())
        old = _as_written_before_issue_8(raw)
        assert "tp_phases" not in old["settings"]
        cm = CostModel.from_dict(old)
        assert cm.tp_phases == () and cm.overlap_ == {}
        d = cm.to_dict()
        again = CostModel.from_dict(json.loads(json.dumps(d)))
        new = costmodel.load_profile(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = cm.predict([1, 8, 32], 500.0, 9.9, seq_len=197)
            y = again.predict([1, 8, 32], 500.0, 9.9, seq_len=197)
            z = new.predict([1, 8, 32], 500.0, 9.9, seq_len=197)
        assert np.array_equal(x["latency_ms"], y["latency_ms"]) and np.isfinite(x["latency_ms"]).all()
        assert np.array_equal(x["latency_ms"], z["latency_ms"])


def test_model_without_tp_refuses_tp_in_one_line():
    cm = costmodel.load_profile("jetson-orin-nano")
    with pytest.raises(QueryError) as e:
        cm.predict(8, 500.0, None, strategy="tensor_parallel")
    msg = str(e.value)
    assert "'tensor_parallel' is not in this cost model" in msg and "['prism', 'single', 'voltage']" in msg
    assert "\n" not in msg
    with pytest.raises(QueryError, match="unknown strategy 'megatron'"):
        cm.predict(8, 500.0, None, strategy="megatron")


# ----------------------------------------------------------------------------- decision

def test_decision_with_tp_candidates(tp_synth, tp_fitted):
    cands = DEFAULT_CANDIDATES[:2] + (("prism", 9.9),) + TP_CANDIDATES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = DecisionTable(tp_fitted, candidates=cands, seq_len=197, bws=[200.0, 500.0, 900.0])
    d = t.choose(8, 500.0)
    assert set(d["predicted"]) == {"single", "voltage", "prism(cr=9.9)", "tensor_parallel", "galaxy"}
    assert d["predicted"][d["mode"]]["latency_ms"] == min(v["latency_ms"] for v in d["predicted"].values())
    # a measured galaxy entry far faster than the model wins at exactly that configuration
    rec = copy.deepcopy(next(r for r in tp_synth.records if r["strategy"] == "galaxy" and r["batch"] == 8
                             and r["bw"] == 500.0))
    rec["latency_ms"] = {"median": 0.5, "p10": 0.5, "p90": 0.5, "n": 5}
    odd = dict(copy.deepcopy(rec), strategy="tensor_parallel", collective="pairwise")  # not the candidate
    pm = PerfMap(meta=tp_synth.meta, records=[rec, odd])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t2 = DecisionTable(tp_fitted, pm, candidates=cands, seq_len=197, bws=[200.0, 500.0, 900.0])
    d2 = t2.choose(8, 500.0)
    assert d2["mode"] == "galaxy" and d2["source"] == "profiled" and d2["predicted"]["galaxy"]["latency_ms"] == 0.5
    assert d2["predicted"]["tensor_parallel"]["source"] == "model"
    assert t2.choose(8, 200.0)["predicted"]["galaxy"]["source"] == "model"
    assert t2.choose_fast(8, 500.0) == ("galaxy", None)


def test_decision_refuses_candidates_the_model_lacks():
    cm = costmodel.load_profile("jetson-orin-nano")
    with pytest.raises(ValueError) as e:
        DecisionTable(cm, candidates=DEFAULT_CANDIDATES + (("galaxy", None),), seq_len=197)
    assert "'galaxy' is not in this cost model (fitted on ['prism', 'single', 'voltage'])" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="cr applies to \\['prism'\\] only"):
        DecisionTable(cm, candidates=(("single", None), ("tensor_parallel", 9.9)), seq_len=197)
    with pytest.raises(ValueError, match="unknown strategy 'megatron'"):
        DecisionTable(cm, candidates=(("single", None), ("megatron", None)), seq_len=197)


# ----------------------------------------------------------------------------- merge

def _synth_map(strategies, seed=0):
    ax = dict(TP_AXES, strategy=strategies, batch=(1, 4), bw=(500.0,))
    return PerfMap.from_dict(synthetic_perfmap(seed=seed, axes=ax))


def test_merge_perfmaps_concatenates_and_checks():
    a = _synth_map(("single", "voltage", "prism"))
    b = _synth_map(("tensor_parallel", "galaxy"), seed=1)
    m = merge_perfmaps(a, b)
    assert len(m) == len(a) + len(b) and m.records[: len(a)] == a.records
    assert {r["strategy"] for r in m.records} == {"single", "voltage", "prism", "tensor_parallel", "galaxy"}
    assert [x["n_records"] for x in m.meta["sweep"]["merged_from"]] == [len(a), len(b)]
    with pytest.raises(PerfMapError, match="is in perf map 0 and perf map 1"):
        merge_perfmaps(a, a)
    c = copy.deepcopy(b.to_dict())
    c["models"][0]["d_ff"] = 999
    with pytest.raises(PerfMapError, match="different d_ff"):
        merge_perfmaps(a, PerfMap.from_dict(c))
    c = copy.deepcopy(b.to_dict())
    c["protocol"]["statistic"] = "mean"
    with pytest.raises(PerfMapError, match="protocol.statistic"):
        merge_perfmaps(a, PerfMap.from_dict(c))
    c = copy.deepcopy(b.to_dict())
    c["source"] = "measured"
    with pytest.raises(PerfMapError, match="source"):
        merge_perfmaps(a, PerfMap.from_dict(c))
    with pytest.raises(PerfMapError, match="at least 2"):
        merge_perfmaps(a)


# ----------------------------------------------------------------------------- measured

@pytest.mark.skipif(not TPMAP.exists(), reason="data/perfmaps/testbed_vit_tp.json not measured yet")
def test_measured_tp_held_out_bandwidth():
    """Measured testbed (vit_tiny, N = 101): bw = 300, 500, 700 each left out of every
    strategy; the TP rows of the three pooled. The model is scored against the guess one
    would make without it, measured side by side: the mean of the same (strategy, batch)
    at the other rates. (Shipped data: model 5.7 / 18.3 % median / P90, guess 25.8 / 68.7 %.)"""
    pm = merge_perfmaps(P2, TPMAP).filter(model="vit_tiny_patch16_224", seq_len=101)
    pred, y, guess = [], [], []
    for bw in (300.0, 500.0, 700.0):
        train = PerfMap(meta=pm.meta, records=[r for r in pm.records if r.get("bw") != bw])
        test = [r for r in pm.usable(breakdown=True) if r.get("bw") == bw
                and r["strategy"] in ("tensor_parallel", "galaxy")]
        assert len(test) >= 8
        cm = CostModel(residual_estimators=40, cv_folds=3).fit(train)
        p = cm.predict(np.array([r["batch"] for r in test]), bw, None,
                       strategy=np.array([r["strategy"] for r in test], dtype=object), seq_len=101, warn=False)
        pred += list(p["latency_ms"])
        y += [record_latency_ms(r) for r in test]
        for r in test:
            same = [record_latency_ms(t) for t in train.usable(breakdown=True) if t.get("bw")
                    and (t["strategy"], t["batch"], t["seq_len"]) == (r["strategy"], r["batch"], 101)]
            guess.append(np.mean(same))
    m, g = metrics(pred, y), metrics(guess, y)
    assert m["median_ape"] < 0.5 * g["median_ape"] and m["p90_ape"] < 0.5 * g["p90_ape"], (m, g)


@pytest.mark.skipif(not TPMAP.exists(), reason="data/perfmaps/testbed_vit_tp.json not measured yet")
def test_measured_galaxy_held_out_bandwidth_with_overlap(monkeypatch):
    """Measured testbed, all models and N: bw = 700 left out of every strategy; galaxy's
    rows (30), with and without galaxy's overlap layer, side by side: the layer must lower
    the held-out error (shipped data: median 25 % / P90 38 % without, 18 % / 26 % with)."""
    pm = merge_perfmaps(P2, TPMAP)
    train = PerfMap(meta=pm.meta, records=[r for r in pm.records if r.get("bw") != 700.0])
    test = [r for r in pm.usable(breakdown=True) if r.get("bw") == 700.0 and r["strategy"] == "galaxy"]

    def held_out():
        cm = CostModel(residual_estimators=40, cv_folds=3).fit(train)
        pred, y = [], []
        for name in sorted({r["model"] for r in test}):
            rs = [r for r in test if r["model"] == name]
            p = cm.predict(np.array([r["batch"] for r in rs]), 700.0, None, strategy="galaxy",
                           seq_len=np.array([r["seq_len"] for r in rs]), model=name, warn=False)
            pred += list(p["latency_ms"])
            y += [record_latency_ms(r) for r in rs]
        return cm, metrics(pred, y)

    cm, with_layer = held_out()
    assert with_layer["n"] == 30 and 0.2 < cm.overlap_["galaxy"]["overlap_share"] < 1.0
    monkeypatch.setattr(get_formula("galaxy"), "overlaps_comm", False)
    plain, without = held_out()
    assert plain.overlap_ == {}
    assert with_layer["median_ape"] < without["median_ape"], (with_layer, without)
    assert with_layer["p90_ape"] < without["p90_ape"], (with_layer, without)


# ----------------------------------------------------------------------------- shipped profile, CLI

def test_shipped_tp_profile_knows_tp_and_decides():
    assert "testbed-vit-tp" in costmodel.list_profiles()
    cm = costmodel.load_profile("testbed-vit-tp")
    assert {"tensor_parallel", "galaxy", "single", "voltage", "prism"} == set(cm.strategies_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = choose(16, 200, seq_len=197, profile="testbed-vit-tp", candidates=DEFAULT_CANDIDATES + TP_CANDIDATES)
        p = costmodel.predict(16, 200, None, strategy="tensor_parallel", seq_len=197, profile="testbed-vit-tp")
    # tensor_parallel sends 4x Voltage's bytes: never the pick on a 200 Mbit/s link
    assert d["mode"] not in ("tensor_parallel", "galaxy") and "galaxy" in d["predicted"]
    assert p["breakdown"]["comm_ms"] > p["breakdown"]["compute_ms"] > 0


def test_cli_fit_merges_several_perf_maps(tmp_path):
    import subprocess
    import sys

    from costmodel.perfmap import save_perfmap

    a = save_perfmap(_synth_map(("single", "voltage", "prism")), tmp_path / "a.json")
    b = save_perfmap(_synth_map(("tensor_parallel", "galaxy"), seed=1), tmp_path / "b.json")
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, "-m", "costmodel", "fit", str(a), str(b), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cm = CostModel.load(out)
    assert "galaxy" in cm.strategies_ and " + " in cm.profile_["perfmap"]
    r = subprocess.run([sys.executable, "-m", "costmodel", "fit", str(a), str(a), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "is in perf map 0 and perf map 1" in r.stderr
