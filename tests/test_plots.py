"""costmodel.plots on small inputs: the numbers behind each figure (costmodel.evaluate), labelled axes and
legends, atomic PNG writes, the `plot` CLI, and no torch import."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from costmodel import evaluate, plots  # noqa: E402
from costmodel.cli import main as cli_main  # noqa: E402
from costmodel.model import CostModel  # noqa: E402
from costmodel.perfmap import PerfMap, load_perfmap, save_perfmap  # noqa: E402
from costmodel.synthetic import synthetic_perfmap  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
JETSON = ROOT / "data" / "perfmaps" / "jetson_orin_nano_paper.json"


@pytest.fixture(scope="module")
def small_map():
    return PerfMap.from_dict(synthetic_perfmap(
        axes={"batch": (1, 4, 16), "bw": (100.0, 400.0), "cr": (4.95, 9.9), "img_size": (128,),
              "world_size": (2,)}, seed=3))


@pytest.fixture(scope="module")
def small_model(small_map):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CostModel(cv_folds=3, residual_estimators=30).fit(small_map)


def _labelled(ax):
    return bool(ax.get_xlabel().strip()) and bool(ax.get_ylabel().strip())


def _legend_texts(fig):
    out = []
    for leg in list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        out += [t.get_text() for t in leg.get_texts()]
    return out


# ----------------------------------------------------------------------------- data helpers

def test_measured_table_and_adaptive_choice_on_the_paper_map():
    pm = load_perfmap(JETSON)
    table, sel = evaluate.measured_table(pm)
    assert sel["bw"] is None and sel["cr"] == 9.9 and sel["world_size"] == 2
    v = table["voltage"]
    i = list(v["batch"]).index(1)
    assert v["staging_ms"][i] == 94.0 and v["latency_ms"][i] == 351.0     # Table 2
    # other = total - phases, never negative
    assert np.all(v["other_ms"] >= 0)
    assert evaluate.adaptive_choice(table) == {1: "single", 2: "single", 4: "single",
                                            8: "prism", 16: "prism", 32: "prism"}


def test_adaptive_choice_picks_the_lowest_latency():
    t = {"single": {"batch": np.array([1, 2]), "latency_ms": np.array([10.0, 30.0])},
         "prism": {"batch": np.array([1, 2]), "latency_ms": np.array([12.0, 20.0])},
         "voltage": {"batch": np.array([2]), "latency_ms": np.array([19.0])}}
    assert evaluate.adaptive_choice(t) == {1: "single", 2: "voltage"}


def test_select_slice_resolves_bw_and_cr(small_map):
    hi = evaluate.select_slice(small_map)
    lo = evaluate.select_slice(small_map, bw="min", cr="min")
    assert (hi["bw"], hi["cr"]) == (400.0, 9.9)
    assert (lo["bw"], lo["cr"]) == (100.0, 4.95)
    with pytest.raises(ValueError, match="not in the perf map"):
        evaluate.select_slice(small_map, model="nope")


def test_adaptive_gains_match_table4():
    g = evaluate.adaptive_gains(load_perfmap(JETSON))
    lat = dict(zip(g["batch"].tolist(), g["gain_pct"]["latency_vs_voltage"]))
    assert lat[1] == pytest.approx(100 * (351.0 - 80.6) / 351.0)
    assert lat[32] == pytest.approx(100 * (3843.0 - 1339.8) / 3843.0)
    # without a model, single-device energy at batch >= 8 is simply absent
    assert np.isnan(g["energy_j"]["single"][list(g["batch"]).index(8)])


def test_adaptive_gains_fill_missing_energy_from_the_model_and_flag_it():
    import costmodel

    g = evaluate.adaptive_gains(load_perfmap(JETSON), model=costmodel.load_profile())
    j = list(g["batch"]).index(8)
    assert np.isfinite(g["energy_j"]["single"][j]) and g["energy_source"]["single"][j] == "model"
    assert g["gain_from_model"]["energy_vs_single"][j]
    assert not g["gain_from_model"]["energy_vs_voltage"][j]       # both measured at batch 8


def test_crossover_bw():
    bws = [100, 200, 300, 400]
    assert evaluate.crossover_bw(bws, [3, 2, 1, 0.5], [1.5] * 4) == pytest.approx(250.0)
    assert evaluate.crossover_bw(bws, [1, 1, 1, 1], [2] * 4) is None         # always faster
    assert evaluate.crossover_bw(bws, [3, 3, 3, 3], [2] * 4) is None         # never faster
    # crosses, goes back above, crosses again: the last crossing counts
    assert evaluate.crossover_bw(bws, [2, 1, 2, 0], [1.5] * 4) == pytest.approx(325.0)


def test_bandwidth_sweep_on_the_jetson_profile_brackets_the_paper():
    import costmodel

    x = {b: evaluate.bandwidth_sweep(costmodel.load_profile(), batch=b, cr=9.9)["crossover_bw"]
         for b in (8, 16, 32)}
    assert all(250 <= x[b]["prism"] <= 450 for b in x), x          # paper: near 340 Mbit/s
    assert all(x[b]["voltage"] is None for b in x)                # Voltage never beats single


def test_leave_one_value_out_never_predicts_training_rows(small_map):
    res = evaluate.leave_one_value_out(small_map, cv_folds=2, residual_estimators=20)
    recs = small_map.usable(breakdown=True)
    by_axis = {a: int((res["axis"] == a).sum()) for a in set(res["axis"])}
    assert by_axis["batch"] == len(recs)
    assert by_axis["bw"] == sum(r["bw"] is not None for r in recs)
    assert by_axis["cr"] == sum(r["cr"] is not None for r in recs)
    assert np.isfinite(res["predicted_ms"]).all()
    assert np.all(res["lo_ms"] <= res["predicted_ms"]) and np.all(res["predicted_ms"] <= res["hi_ms"])
    s = evaluate.validation_summary(res)
    assert set(s) == {"batch", "bw", "cr"} and all(0 <= v["coverage"] <= 1 for v in s.values())


def test_decision_grid_gain_is_zero_where_single_is_chosen(small_model):
    g = evaluate.decision_grid(small_model, batches=(1, 2, 4, 8, 16), bws=np.arange(50.0, 501.0, 50.0))
    single = g["labels"].index("single")
    assert np.all(g["gain_single_pct"][g["best"] == single] == 0)
    assert np.all(g["gain_single_pct"] >= 0)
    d = g["table"].choose(4, 300.0)
    assert d["mode"] == g["labels"][g["best"][list(g["batch"]).index(4), list(g["bw"]).index(300.0)]]


# ----------------------------------------------------------------------------- figures

def test_plot_breakdown_labels_legend_and_stars(small_map):
    fig = plots.plot_breakdown(small_map)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "latency per sample (ms)"
    assert "batch size" in ax.child_axes[0].get_xlabel()      # on the secondary batch axis
    texts = _legend_texts(fig)
    for want in ("compute", "CPU-GPU staging", "communication", "Voltage", "adaptive choice (fastest measured)"):
        assert any(want in t for t in texts), (want, texts)
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and len(stars[0].get_xdata()) == 3     # one per batch


def test_plot_per_sample_labels(small_map, small_model):
    fig = plots.plot_per_sample(small_map, model=small_model)
    assert all(_labelled(ax) for ax in fig.axes)
    assert "(J)" in fig.axes[1].get_ylabel() and "(ms)" in fig.axes[0].get_ylabel()
    assert any("latency vs Voltage" in t for t in _legend_texts(fig))


def test_plot_bandwidth_labels_and_crossover_annotation():
    import costmodel

    fig = plots.plot_bandwidth(costmodel.load_profile(), perfmap=JETSON, batches=(16,))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "link bandwidth (Mbit/s)" and "ms" in ax.get_ylabel()
    assert any(t.get_text().startswith("crossover") for t in ax.texts)
    assert any("paper: crossover near 340" in t for t in _legend_texts(fig))
    assert "extrapolate" in fig._suptitle.get_text()             # fitted at one bw only


def test_plot_validation_and_decision_map(small_map, small_model):
    res = evaluate.leave_one_value_out(small_map, axes=("bw",), cv_folds=2, residual_estimators=20)
    fig = plots.plot_validation(res, level=0.8)
    assert all(_labelled(ax) for ax in fig.axes)
    assert any("held out: bw" in t for t in _legend_texts(fig))
    with pytest.raises(ValueError, match="no held-out predictions"):
        plots.plot_validation(evaluate.leave_one_value_out(small_map, axes=("world_size",)))
    fig = plots.plot_decision_map(small_model, seq_lens=(65, 197), batches=(1, 2, 4, 8),
                                  bws=np.arange(50.0, 501.0, 50.0))
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(image_axes) == 4 and all(_labelled(ax) for ax in image_axes)
    assert any("extrapolated" in ax.get_title(loc="left") for ax in image_axes)    # N = 197 not fitted
    assert any(t.startswith("single") or t.startswith("Prism") for t in _legend_texts(fig))


def test_save_figure_is_atomic_and_writes_png(tmp_path, small_map):
    fig = plots.plot_breakdown(small_map)
    p = plots.save_figure(fig, tmp_path / "sub" / "b.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [x.name for x in p.parent.iterdir()] == ["b.png"]           # no temp file left


def test_testbed_maps_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISM_EDGE_TESTBED_MAP", "none")
    assert evaluate.testbed_maps() == []
    monkeypatch.setenv("PRISM_EDGE_TESTBED_MAP", f"{tmp_path}/a.json")
    assert evaluate.testbed_maps() == [tmp_path / "a.json"]
    monkeypatch.delenv("PRISM_EDGE_TESTBED_MAP")
    (tmp_path / "perfmaps").mkdir()
    for n in ("testbed_b.json", "testbed_a.json", "other.json"):
        (tmp_path / "perfmaps" / n).write_text("{}")
    assert [p.name for p in evaluate.testbed_maps(tmp_path)] == ["testbed_a.json", "testbed_b.json"]


# ----------------------------------------------------------------------------- CLI

def test_cli_plot_writes_pngs(tmp_path, capsys, small_map):
    path = save_perfmap(small_map, tmp_path / "testbed_x.json")
    rc = cli_main(["plot", "breakdown", "bandwidth", "--perfmap", str(path), "--out", str(tmp_path / "f")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    figs = out["maps"][0]["figures"]
    assert sorted(figs) == ["bandwidth", "breakdown"]
    assert all(Path(f).exists() for f in figs.values())
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["testbed_x_bandwidth.png", "testbed_x_breakdown.png"]
    assert out["maps"][0]["model"] == "fitted on testbed_x.json"


def test_cli_plot_bad_input_exits_2(tmp_path, capsys):
    assert cli_main(["plot", "nonsense", "--out", str(tmp_path)]) == 2
    assert "unknown figure" in capsys.readouterr().err
    assert cli_main(["plot", "--perfmap", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert cli_main(["plot", "breakdown"]) == 2                   # --out is required


def test_plots_and_cli_do_not_import_torch():
    code = ("import sys, costmodel.plots, costmodel.cli; "
            "from costmodel import evaluate, plots; plots.plot_breakdown(evaluate.data_dir() / 'perfmaps' / "
            "'jetson_orin_nano_paper.json'); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


TP_MAP = ROOT / "data" / "perfmaps" / "testbed_vit_tp.json"


@pytest.mark.skipif(not TP_MAP.exists(), reason="no tensor_parallel/galaxy map")
def test_map_without_plotted_strategies_is_skipped_not_failed(tmp_path):
    res = plots.standard_figures(TP_MAP, tmp_path)
    assert res["figures"] == {} and "no single/voltage/prism records" in res["skipped"]
    assert list(tmp_path.iterdir()) == []
