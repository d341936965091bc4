"""Accuracy in the cost model (torch-free): fidelity tables as data, predictions, the
decision hook's accuracy budget, held-out error, bad input."""
import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from costmodel import accuracy
from costmodel.accuracy import AccuracyError, AccuracyModel, held_out, parse_drop_bound
from costmodel.decision import DecisionTable, choose
from costmodel.strategies import find_formula, list_strategies

ROOT = Path(__file__).resolve().parent.parent
FIDELITY = ROOT / "data" / "fidelity"
PROFILE = "testbed-vit-p2"
CANDS = [("single", None), ("voltage", None), ("prism", 2.0), ("prism", 3.3), ("prism", 4.95), ("prism", 9.9)]


@pytest.fixture(scope="module")
def am():
    return AccuracyModel.load(FIDELITY)


@pytest.fixture(scope="module")
def profile():
    import costmodel
    return costmodel.load_profile(PROFILE)


def _table(profile, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DecisionTable(profile, candidates=CANDS, batches=[8, 32], **kw)


def test_loader_reads_every_shipped_table(am):
    tables = [p for p in sorted(FIDELITY.rglob("*.json")) if isinstance(json.loads(p.read_text()).get("rows"), list)]
    assert tables
    for p in tables:
        rows = json.loads(p.read_text())["rows"]
        rel = str(p.relative_to(ROOT))
        got = [r for r in am.records if r["source"] == rel]
        skipped = [w for w, _ in am.skipped if w.startswith(rel + " row")]
        assert got, rel
        assert len(got) + len(skipped) == len(rows), rel       # every row read or skipped with a reason
    for model in ("vit_digits", "gpt2_bytes", "minilm", "smollm2"):
        assert model in am.models()
        assert am.series() and any(k[0] == model for k in am.series())


def test_prediction_equals_measured_row_at_measured_cr(am):
    n = 0
    for (model, s, ws, fin, variant, knob), rows in am.series().items():
        for r in rows:
            metric = am.primary_metric(model)
            if metric not in r["metrics"] or r[knob] is None:
                continue
            p = am.predict(model, s, ws, finetuned=fin, options=dict(variant), **{knob: r[knob]})
            assert p["basis"] in ("measured", "exact anchor") and r["source"] in p["source"]
            if metric in r["exact"]:               # a card: its drop against its own exact value
                assert p["value"] - p["exact"] == pytest.approx(r["metrics"][metric] - r["exact"][metric])
            else:
                assert p["value"] == pytest.approx(r["metrics"][metric], rel=1e-9, abs=1e-12)
            n += 1
    assert n > 50


def test_interpolation_monotone_and_between_neighbours(am):
    for (model, s, ws, fin, variant, knob) in am.series():
        pts = am.points(model, s, ws, knob, fin, variant, am.primary_metric(model))
        for (x0, d0, _), (x1, d1, _) in zip(pts, pts[1:]):
            xs = [x0 * (x1 / x0) ** (i / 10) for i in range(1, 10)]
            drops = [am.predict(model, s, ws, finetuned=fin, options=dict(variant), **{knob: x})["drop"]
                     for x in xs]
            lo, hi = min(d0, d1), max(d0, d1)
            assert all(lo - 1e-9 <= d <= hi + 1e-9 for d in drops)
            steps = [b - a for a, b in zip(drops, drops[1:])]
            assert all(st * (d1 - d0) >= -1e-12 for st in steps)      # monotone, towards d1
            # linear in log CR: the midpoint in log space is the mean of the neighbours
            mid = am.predict(model, s, ws, finetuned=fin, options=dict(variant), **{knob: math.sqrt(x0 * x1)})
            assert mid["drop"] == pytest.approx((d0 + d1) / 2) and mid["basis"] == "interpolated"
            assert mid["neighbours"] == [x0, x1]


def test_exact_strategies_predict_zero_drop(am):
    exact = [s for s in list_strategies()
             if not getattr(find_formula(s), "approximate", find_formula(s).compresses)]
    assert {"single", "voltage", "tensor_parallel", "galaxy", "pipeline"} <= set(exact)
    for model in am.models():
        for s in exact:
            ws = 1 if s == "single" else 2
            p = am.predict(model, s, ws)
            ref, _ = am.reference(model, ws, p["metric"])
            assert p["drop"] == 0.0 and p["value"] == ref and p["basis"] == "exact strategy"


def test_outside_measured_range_refused_or_flagged(am):
    top = max(x for x, _, _ in am.points("vit_digits", "prism", 2, "cr", False,
                                        (("averaged", "output"), ("log_bias", True)), "accuracy"))
    with pytest.raises(AccuracyError, match="outside the measured cr range"):
        am.predict("vit_digits", "prism", 2, cr=top * 2)
    p = am.predict("vit_digits", "prism", 2, cr=top * 2, extrapolate=True)
    assert p["extrapolated"] and p["basis"] == "extrapolated"
    # Prism at CR 1 sends every row: the exact anchor below the first measured CR (MiniLM has no CR 1 row)
    p = am.predict("minilm", "prism", 2, cr=1.0)
    assert p["drop"] == 0.0 and p["basis"] == "exact anchor"
    assert 0 < am.predict("minilm", "prism", 2, cr=1.5)["drop"] < am.predict("minilm", "prism", 2, cr=2)["drop"]


def test_held_out_leave_one_cr_out(am):
    res = held_out(am)
    assert res["rows"] and res["interpolation"] == "log"
    for r in res["rows"][:40]:
        lo, hi = r["neighbours"]
        assert lo < r["value"] < hi
        assert r["abs_error"] == pytest.approx(abs(r["predicted_drop"] - r["measured_drop"]))
        pts = am.points(r["model"], r["strategy"], r["world_size"], r["knob"], r["finetuned"],
                        tuple(sorted(r["variant"].items())), r["metric"])
        d = {x: dd for x, dd, _ in pts}
        t = math.log(r["value"] / lo) / math.log(hi / lo)
        assert r["predicted_drop"] == pytest.approx(d[lo] + t * (d[hi] - d[lo]))
    for m, s in res["per_model"].items():
        assert s["n"] > 0 and s["max_abs_error"] >= s["median_abs_error"] >= 0
    assert held_out(am, how="linear")["rows"][0]["value"] == res["rows"][0]["value"]


def _write_tables(tmp_path, extra: dict) -> Path:
    root = tmp_path / "fidelity"
    root.mkdir()
    shutil.copy(FIDELITY / "vit_digits_accuracy.json", root)
    (root / "finetuned").mkdir()
    (root / "finetuned" / "extra.json").write_text(json.dumps(extra))
    return root


def test_row_convention_finetuned_rows_preferred(tmp_path):
    ft = {"schema_version": 1, "model_key": "vit_digits", "metrics": ["accuracy"], "rows": [
        {"world_size": 2, "strategy": "prism", "cr": 2, "finetuned": True, "log_bias": True,
         "averaged": "output", "accuracy": 0.980},
        {"model": "vit_digits", "world_size": 2, "strategy": "prism", "cr": 8, "finetuned": True,
         "accuracy": 0.970}]}
    am = AccuracyModel.load(_write_tables(tmp_path, ft))
    p = am.predict("vit_digits", "prism", 2, cr=8, finetuned=True)
    assert p["finetuned_used"] and p["value"] == pytest.approx(0.970) and p["basis"] == "measured"
    assert "finetuned/extra.json" in p["source"]
    mid = am.predict("vit_digits", "prism", 2, cr=4, finetuned=True)
    assert mid["basis"] == "interpolated" and 100 * (0.9844444 - 0.980) <= mid["drop"] + 1e-6 <= 100 * (0.9844444 - 0.970) + 1e-6
    base = am.predict("vit_digits", "prism", 2, cr=4)
    assert not base["finetuned_used"] and base["drop"] > mid["drop"]
    # outside the fine-tuned range: the off-the-shelf rows, said so
    p = am.predict("vit_digits", "prism", 2, cr=16, finetuned=True)
    assert not p["finetuned_used"] and p["notes"]
    # the decision hook with fine-tuned weights: a bound the off-the-shelf rows cannot meet
    import costmodel
    prof = costmodel.load_profile(PROFILE)
    t = _table(prof, max_accuracy_drop=2, fidelity=("vit_digits", am), finetuned=True)
    d = t.choose(32, 900)
    assert d["strategy"] == "prism" and d["accuracy"][d["mode"]]["finetuned_used"]
    assert _table(prof, max_accuracy_drop=2, fidelity=("vit_digits", am)).choose(32, 900)["strategy"] != "prism"


def test_finetuning_card_is_a_finetuned_record(tmp_path):
    card = {"schema_version": 1, "kind": "prism-edge finetune", "base": {"name": "test_vit"},
            "strategy": "prism", "options": {"cr": 4}, "world_size": 2, "task": "digits",
            "metric": "accuracy", "exact": {"accuracy": 0.98, "agreement": 1.0},
            "before": {"accuracy": 0.76}, "after": {"accuracy": 0.975, "agreement": 0.97, "test_images": 450}}
    am = AccuracyModel.load(_write_tables(tmp_path, card))
    rec = [r for r in am.records if r["finetuned"]]
    assert len(rec) == 1 and rec[0]["model"] == "vit_digits" and rec[0]["cr"] == 4
    p = am.predict("vit_digits", "prism", 2, cr=4, finetuned=True)
    assert p["finetuned_used"] and p["drop"] == pytest.approx(0.5)          # against the card's exact
    assert p["value"] == pytest.approx(p["exact"] - 0.005)
    other = tmp_path / "unknown_task"
    other.mkdir()
    am = AccuracyModel.load(_write_tables(other, dict(card, task="translation")))
    assert not any(r["finetuned"] for r in am.records)
    assert any("known task" in why for _, why in am.skipped)


def test_row_convention_coformer_k(tmp_path):
    rows = [{"model": "vit_digits", "world_size": 2, "strategy": "coformer", "k": k, "depth": 4,
             "accuracy": a} for k, a in ((2, 0.95), (4, 0.90))]
    rows.append({"model": "vit_digits", "world_size": 2, "strategy": "coformer", "k": "depth", "depth": 4,
                 "calibrated": True, "accuracy": 0.975})
    am = AccuracyModel.load(_write_tables(tmp_path, {"schema_version": 1, "rows": rows}))
    if find_formula("coformer") is None or not getattr(find_formula("coformer"), "approximate", True):
        pytest.skip("coformer not registered as approximate")
    assert am.predict("vit_digits", "coformer", 2, k=1)["drop"] == 0.0          # k = 1 is tensor_parallel
    assert am.predict("vit_digits", "coformer", 2, k=4)["value"] == pytest.approx(0.90)
    k3 = am.predict("vit_digits", "coformer", 2, k=3)["drop"]
    assert 100 * (0.98444 - 0.95) - 1e-3 < k3 < 100 * (0.98444 - 0.90) + 1e-3
    dflt = am.predict("vit_digits", "coformer", 2)
    assert dflt["k"] == 4 and dflt["notes"]
    cal = am.predict("vit_digits", "coformer", 2, k=4, finetuned=True)
    assert cal["finetuned_used"] and cal["value"] == pytest.approx(0.975)


@pytest.mark.parametrize("fidelity", ["gpt2_bytes", "vit_digits"])
def test_decision_bounds_choose_within_budget(profile, fidelity):
    chosen = {}
    for bound in (0.5, 2, 10):
        t = _table(profile, max_accuracy_drop=bound, fidelity=fidelity)
        d = t.choose(32, 900)
        acc = d["accuracy"][d["mode"]]
        assert acc["drop"] <= bound
        for lab, why in d["dropped"].items():
            assert lab not in d["predicted"] and why
            assert d["accuracy"][lab]["drop"] > bound
        kept = {lab: v["latency_ms"] for lab, v in d["predicted"].items()}
        assert d["mode"] == min(kept, key=kept.get)
        chosen[bound] = (d["mode"], acc["drop"])
    assert chosen[0.5][1] <= chosen[2][1] <= chosen[10][1]   # a tighter bound never picks a larger drop
    if fidelity == "gpt2_bytes":
        assert len({m for m, _ in chosen.values()}) >= 2, chosen


def test_decision_relative_bound_cr_cap_and_one_call(profile):
    d = _table(profile, max_accuracy_drop="5%", fidelity="vit_digits").choose(32, 900)
    assert d["accuracy"][d["mode"]]["relative_drop_pct"] <= 5
    d = _table(profile, max_accuracy_drop=10, fidelity="gpt2_bytes", max_cr=5).choose(32, 900)
    assert "prism(cr=9.9)" not in d["predicted"] and "prism(cr=9.9)" not in d["dropped"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = choose(32, 900, profile=PROFILE, candidates=CANDS, max_accuracy_drop=2, fidelity="gpt2_bytes")
    assert one["mode"] == _table(profile, max_accuracy_drop=2, fidelity="gpt2_bytes").choose(32, 900)["mode"]
    # no data at this world size: the approximate candidates are dropped, never silently allowed
    t = _table(profile, max_accuracy_drop=10, fidelity="vit_digits", world_size=3)
    assert all(lab.startswith("prism") for lab in t.dropped)
    assert all("no accuracy prediction" in why for why in t.dropped.values())
    assert "accuracy" not in _table(profile).choose(32, 900)       # no fidelity: the old result


@pytest.mark.parametrize("kw,needle", [
    (dict(max_accuracy_drop=2), "needs the model whose accuracy data"),
    (dict(max_accuracy_drop=2, fidelity="vit_tiny"), "no accuracy data for model 'vit_tiny'"),
    (dict(max_accuracy_drop=-1, fidelity="vit_digits"), "must be a finite number >= 0"),
    (dict(max_accuracy_drop="two", fidelity="vit_digits"), "relative drop like '5%'"),
    (dict(max_accuracy_drop=True, fidelity="vit_digits"), "must be a finite number"),
    (dict(max_accuracy_drop=2, fidelity="vit_digits", accuracy_metric="bleu"), "allowed: ['accuracy'"),
])
def test_decision_bad_input(profile, kw, needle):
    with pytest.raises(ValueError) as e:
        _table(profile, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("args,kw,needle", [
    (("vit_tiny", "prism", 2), dict(cr=4), "models with data"),
    (("vit_digits", "nope", 2), dict(cr=4), "unknown strategy 'nope'; known:"),
    (("vit_digits", "voltage", 2), dict(cr=4), "cr applies to compressing strategies"),
    (("vit_digits", "prism", 2), dict(), "give cr"),
    (("vit_digits", "prism", 2), dict(cr=0), "must be a finite number > 0"),
    (("vit_digits", "prism", 3), dict(cr=4), "measured: [2, 4]"),
    (("vit_digits", "prism", 2), dict(cr=4, metric="bleu"), "allowed: ['accuracy', 'agreement']"),
])
def test_predict_bad_input(am, args, kw, needle):
    with pytest.raises(AccuracyError) as e:
        am.predict(*args, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_parse_drop_bound():
    assert parse_drop_bound(2) == ("points", 2.0) and parse_drop_bound("2pt") == ("points", 2.0)
    assert parse_drop_bound(" 5% ") == ("relative", 5.0)
    for bad in ("nan", "inf", "-1", "5%%", None):
        with pytest.raises(AccuracyError):
            parse_drop_bound(bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "costmodel", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_accuracy_and_decide():
    r = _cli("accuracy", "--model", "vit_digits", "--strategy", "prism", "--cr", "4", "--world-size", "2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["basis"] == "measured" and "vit_digits_accuracy.json" in out["source"]
    r = _cli("accuracy", "--held-out")
    assert r.returncode == 0 and "per_model" in json.loads(r.stdout)
    r = _cli("decide", "--profile", PROFILE, "--batch", "32", "--bw", "900", "--candidates",
             "single,voltage,prism:2,prism:9.9", "--max-accuracy-drop", "2", "--fidelity", "gpt2_bytes")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["accuracy"][d["mode"]]["drop"] <= 2 and d["dropped"]
    for args in (("accuracy", "--model", "nope", "--cr", "4"), ("accuracy", "--cr", "4"),
                 ("accuracy", "--model", "vit_digits", "--cr", "nan"),
                 ("decide", "--batch", "8", "--bw", "500", "--max-accuracy-drop", "2"),
                 ("decide", "--batch", "8", "--bw", "500", "--candidates", "prism:x")):
        r = _cli(*args)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, args


def test_accuracy_is_torch_free():
    code = ("import sys, costmodel.accuracy as a; a.default_model().predict('vit_digits', 'prism', 2, cr=4); "
            "assert 'torch' not in sys.modules and 'runtime' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    assert accuracy.default_model() is accuracy.default_model()     # cached while no table changes
