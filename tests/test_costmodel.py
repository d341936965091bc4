"""CostModel: fit / predict / score / save / load, the one-call API, the CLI, bad input.

Uses a SYNTHETIC perf map (costmodel.synthetic, source 'synthetic') generated with a
physics the model does not share, plus noise; nothing synthetic is shipped as data.
"""
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import costmodel
from costmodel.features import QueryError
from costmodel.model import CostModel, ModelFileError, OutOfRangeWarning
from costmodel.perfmap import PerfMap, PerfMapError, save_perfmap
from costmodel.synthetic import synthetic_perfmap
from costmodel.trees import JsonGBR, export_gbr

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SMALL = {"bw": (200.0, 500.0, 900.0), "cr": (3.3, 9.9), "img_size": (224,), "world_size": (2, 3)}


@pytest.fixture(scope="module")
def synth():
    return PerfMap.from_dict(synthetic_perfmap(seed=1, axes=SMALL))


@pytest.fixture(scope="module")
def fitted(synth):
    return CostModel(residual_estimators=60, cv_folds=3).fit(synth)


def test_costmodel_imports_no_torch():
    code = ("import sys, costmodel, costmodel.model, costmodel.api, costmodel.cli, costmodel.perfmap; "
            "costmodel.predict(8, 500, 9.9); print('torch' in sys.modules)")
    out = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_init_only_stores_settings():
    cm = CostModel(unshaped_bw=700.0, interval=0.9)
    assert cm.get_params()["unshaped_bw"] == 700.0
    assert not [k for k in vars(cm) if k.endswith("_")]
    with pytest.raises(RuntimeError, match="not fitted"):
        cm.predict(1, 500, 9.9)


def test_fit_returns_self_and_fitted_attrs(synth):
    cm = CostModel(residual=False, cv_folds=3)
    assert cm.fit(synth) is cm
    assert {"params_", "residual_", "interval_", "ranges_", "strategies_"} <= set(vars(cm))
    assert cm.strategies_ == ["prism", "single", "voltage"]
    for phase, groups in cm.params_.items():
        for th in groups.values():
            assert all(x >= 0 for x in th), (phase, th)


def test_predict_broadcasts(fitted):
    b = np.array([1, 4, 16])[:, None]
    bw = np.array([200.0, 500.0, 900.0, 300.0])
    p = fitted.predict(b, bw, 9.9, strategy="prism", world_size=2)
    assert p["latency_ms"].shape == (3, 4)
    # more batch costs more, more bandwidth costs less
    assert (np.diff(p["latency_ms"], axis=0) > 0).all()
    assert p["comm_ms"][0, 0] > p["comm_ms"][0, 2]
    assert np.allclose(p["latency_ms"], p["compute_ms"] + p["staging_ms"] + p["comm_ms"] + p["other_ms"])
    assert (p["latency_lo_ms"] <= p["latency_ms"]).all() and (p["latency_ms"] <= p["latency_hi_ms"]).all()
    s = fitted.predict(4, None, None, strategy="single")
    assert s["latency_ms"].shape == () and float(s["comm_ms"]) == 0.0
    mixed = fitted.predict(8, 500.0, 9.9, strategy=np.array(["single", "voltage", "prism"]))
    assert mixed["latency_ms"].shape == (3,)


def test_predict_table_for_decision_hook(fitted):
    t = fitted.predict_table([1, 8, 32], [200, 900], [("single", None), ("voltage", None), ("prism", 9.9)])
    assert t["latency_ms"].shape == (3, 3, 2) and t["labels"] == ["single", "voltage", "prism(cr=9.9)"]
    assert t["best_latency"].shape == (3, 2)
    assert (t["best_latency"] == np.argmin(t["latency_ms"], axis=0)).all()


def test_hybrid_beats_analytical_on_held_out(synth):
    """The synthetic truth has effects the physics form lacks: the residual layer must
    cut the held-out error (fit on bw 200/900, test on bw 500)."""
    train, test = synth.filter(bw=(200.0, 900.0, None)), synth.filter(bw=500.0)
    hyb = CostModel(residual_estimators=80, cv_folds=3).fit(train).score(test)
    ana = CostModel(residual=False, cv_folds=3).fit(train).score(test)
    assert not hyb["in_sample"]
    assert hyb["latency"]["median_ape"] < ana["latency"]["median_ape"]
    assert hyb["latency"]["median_ape"] < 5.0


def test_save_load_round_trip(fitted, tmp_path):
    p = fitted.save(tmp_path / "m.json")
    d = json.loads(p.read_text())
    assert d["schema_version"] == 1 and d["kind"] == "prism-edge.costmodel"
    back = CostModel.load(p)
    q = dict(batch=np.array([1, 3, 32]), bw=np.array([250.0, 600.0, 850.0]), cr=9.9, strategy="prism")
    a, b = fitted.predict(**q), back.predict(**q)
    for k in a:
        assert np.allclose(a[k], b[k], rtol=1e-12, equal_nan=True), k


def test_json_trees_match_sklearn():
    from sklearn.ensemble import GradientBoostingRegressor
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = np.sin(X[:, 0]) + X[:, 1] ** 2 + rng.normal(scale=0.1, size=200)
    g = GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=0).fit(X, y)
    j = JsonGBR(json.loads(json.dumps(export_gbr(g))))
    Xq = rng.normal(size=(500, 5))
    assert np.allclose(j.predict(Xq), g.predict(Xq), atol=1e-10)


def test_score_reports_in_sample_flag(fitted, synth):
    s = fitted.score(synth)
    assert s["in_sample"] is True and s["n_rows"] == len(synth.usable(breakdown=True))
    for k in ("latency", "compute", "staging", "comm"):
        assert set(s[k]) >= {"median_ape", "p90_ape", "within_10pct"}


def test_out_of_range_warns(fitted):
    with pytest.warns(OutOfRangeWarning, match="batch=64 outside fitted"):
        fitted.predict(64, 500, 9.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted.predict(8, 500, 9.9)          # inside: no warning


@pytest.mark.parametrize("kw,needle", [
    (dict(batch=0, bw=500, cr=9.9), "batch=0 must be an integer >= 1"),
    (dict(batch=-3, bw=500, cr=9.9), "batch=-3"),
    (dict(batch=2.5, bw=500, cr=9.9), "batch=2.5"),
    (dict(batch=4, bw=0, cr=9.9), "bw=0"),
    (dict(batch=4, bw=-100, cr=9.9), "bw=-100"),
    (dict(batch=4, bw=None, cr=9.9), "positive link rate"),
    (dict(batch=4, bw=500, cr=0.5), "cr must be in [1, 99]"),
    (dict(batch=4, bw=500, cr=150), "cr must be in [1, 99]"),
    (dict(batch=4, bw=500, cr=None), "needs cr"),
    (dict(batch=4, bw=500, cr=9.9, strategy="megatron"), "unknown strategy 'megatron'; known:"),
    (dict(batch=4, bw=500, cr=9.9, profile="nope"), "unknown profile 'nope'; known: ["),
])
def test_bad_queries_are_one_line_errors(kw, needle):
    with pytest.raises(ValueError) as ei:
        costmodel.predict(**kw)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_no_usable_rows_is_a_clear_error(synth):
    d = synth.to_dict()
    d = json.loads(json.dumps(d))
    for r in d["records"]:
        r.update(error="RuntimeError: boom", latency_ms=None, compute_ms=None, staging_ms=None,
                 comm_ms=None, per_sample_ms=None)
    with pytest.raises(PerfMapError, match="no usable rows"):
        CostModel().fit(PerfMap.from_dict(d))


def test_null_bw_needs_unshaped_bw():
    pm = costmodel.load_perfmap(REPO / "data/perfmaps/jetson_orin_nano_paper.json")
    with pytest.raises(PerfMapError, match="unshaped_bw"):
        CostModel().fit(pm)


@pytest.mark.parametrize("corrupt", [
    lambda p: p.write_text("{ not json"),
    lambda p: p.write_text(json.dumps({"kind": "prism-edge.costmodel", "schema_version": 99})),
    lambda p: p.write_text(json.dumps({"kind": "something-else"})),
    lambda p: p.write_text(p.read_text().replace('"params_"', '"params_gone"')),
    lambda p: p.write_text(p.read_text().replace('"left"', '"lefty"', 1)),
    lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
])
def test_corrupt_model_file_is_a_clear_error(fitted, tmp_path, corrupt):
    p = fitted.save(tmp_path / "m.json")
    corrupt(p)
    with pytest.raises(ModelFileError) as ei:
        CostModel.load(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_negative_parameter_in_file_is_rejected(fitted, tmp_path):
    d = fitted.to_dict()
    d["params_"]["comm"]["*"][1] = -1.0
    p = tmp_path / "neg.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="finite numbers >= 0"):
        CostModel.load(p)


def test_list_profiles_and_one_call_predict():
    assert "jetson-orin-nano" in costmodel.list_profiles()
    r = costmodel.predict(16, 1000, 9.9)
    assert set(r) >= {"latency_ms", "energy_j", "breakdown", "interval"}
    assert r["interval"]["latency_ms"][0] <= r["latency_ms"] <= r["interval"]["latency_ms"][1]
    assert math.isclose(sum(r["breakdown"].values()), r["latency_ms"], rel_tol=1e-9)
    arr = costmodel.predict(np.array([8, 16]), 1000, 9.9)
    assert arr["latency_ms"].shape == (2,)
    assert costmodel.predict(4, None, None, strategy="single")["breakdown"]["comm_ms"] == 0.0


def _cli(*args):
    return subprocess.run([PY, "-m", "costmodel", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_fit_predict_validate(tmp_path, synth):
    pm = save_perfmap(synth, tmp_path / "s.json")
    out = tmp_path / "prof.json"
    r = _cli("fit", str(pm), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["training"]["n_rows"] == len(synth.usable(breakdown=True))
    r = _cli("predict", "--model", str(out), "--batch", "8", "--bw", "500", "--cr", "9.9")
    assert r.returncode == 0 and json.loads(r.stdout)["latency_ms"] > 0
    r = _cli("validate", str(pm), "--model", str(out), "--max-mape", "50")
    assert r.returncode == 0 and json.loads(r.stdout)["check"]["passed"] is True
    r = _cli("validate", str(pm), "--model", str(out), "--max-mape", "0.001")
    assert r.returncode == 1 and json.loads(r.stdout)["check"]["passed"] is False
    r = _cli("report", "--model", str(out))
    assert r.returncode == 0 and "physical" in json.loads(r.stdout)


@pytest.mark.parametrize("args,needle", [
    (("predict", "--batch", "0", "--bw", "500", "--cr", "9.9"), "batch=0"),
    (("predict", "--batch", "4", "--bw", "500", "--cr", "9.9", "--profile", "x"), "unknown profile"),
    (("validate", "/nonexistent.json"), "cannot read perf map"),
    (("fit", "/nonexistent.json", "--out", "/tmp/x.json"), "cannot read perf map"),
])
def test_cli_bad_input_exits_2_with_one_line(args, needle):
    r = _cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("error:")


def test_p2m_profile_is_the_fit_of_the_shipped_multi_pass_map():
    """The testbed-vit-p2m profile was fitted on data/perfmaps/testbed_vit_p2m.json as
    shipped (the fingerprint of its rows matches) and describes it closely in sample."""
    cm = costmodel.load_profile("testbed-vit-p2m")
    s = cm.score(REPO / "data" / "perfmaps" / "testbed_vit_p2m.json")
    assert s["in_sample"] and s["n_rows"] == 378
    assert s["latency"]["mape"] < 10
    r = costmodel.predict(8, 500, 9.9, profile="testbed-vit-p2m")
    single = costmodel.predict(8, 500, None, strategy="single", profile="testbed-vit-p2m")
    assert 0 < r["latency_ms"] and 0 < single["latency_ms"] and r["profile"] == "testbed-vit-p2m"
