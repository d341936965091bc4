"""The notebooks cannot rot: every one executes (nbclient, in a temporary folder) and
writes its figures; each .ipynb matches its jupytext .py source and carries no outputs.

The testbed sections run on the real data/perfmaps/testbed_*.json when present, else on
a small SYNTHETIC map written here (PRISM_EDGE_TESTBED_MAP), so both code paths run; one
test checks the no-testbed fallback note.
"""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
EXPECTED = {
    "01_latency_breakdown": ["jetson_breakdown.png", "testbed_breakdown_max_bw.png",
                             "testbed_breakdown_min_bw.png"],
    "02_per_sample_latency_energy": ["jetson_per_sample.png", "testbed_per_sample.png"],
    "03_bandwidth_sweep": ["jetson_bandwidth.png", "testbed_bandwidth.png"],
    "04_costmodel_validation": ["jetson_validation.png", "testbed_validation.png"],
    "05_decision_map": ["jetson_decision.png", "testbed_decision.png"],
}
NB_TIMEOUT_S = 90          # per cell; a notebook must run in well under a minute


def test_every_notebook_is_listed():
    assert [p.stem for p in NOTEBOOKS] == sorted(EXPECTED)


@pytest.fixture(scope="module")
def testbed_env(tmp_path_factory):
    """PRISM_EDGE_TESTBED_MAP for the run: the real testbed maps if any, else a small
    synthetic map (two bw, two cr, two image sizes, batch 1/4/16)."""
    from costmodel import plots
    from costmodel.perfmap import save_perfmap
    from costmodel.synthetic import synthetic_perfmap

    real = [p for p in plots.testbed_maps() if p.exists()]
    if real and os.environ.get("PRISM_EDGE_TESTBED_MAP") != "none":
        return {}
    path = tmp_path_factory.mktemp("testbed") / "testbed_synthetic.json"
    save_perfmap(synthetic_perfmap(axes={"batch": (1, 4, 16), "bw": (100.0, 400.0), "cr": (4.95, 9.9),
                                         "img_size": (128, 224), "world_size": (2,)}, seed=1), path)
    return {"PRISM_EDGE_TESTBED_MAP": str(path)}


def _execute(nb_path: Path, workdir: Path, env: dict):
    nb = jupytext.read(nb_path)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)          # the kernel inherits the environment at start
    try:
        t0 = time.monotonic()
        nbclient.NotebookClient(nb, timeout=NB_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": str(workdir)}}).execute()
        return nb, time.monotonic() - t0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _png_size(path: Path) -> tuple:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def _text(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", "") if o.get("output_type") == "stream" else "")
    return "".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_writes_figures(nb_path, tmp_path, testbed_env):
    figs = tmp_path / "figures"
    nb, took = _execute(nb_path, tmp_path, {"PRISM_EDGE_FIGURES": str(figs), **testbed_env})
    assert took < 60, f"{nb_path.name} took {took:.0f} s; notebooks must run in under a minute"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    shown = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    written = sorted(p.name for p in figs.glob("*.png"))
    expected = EXPECTED[nb_path.stem]
    missing = [f for f in expected if f not in written]
    # a testbed map whose lowest and highest bw coincide has one breakdown figure
    if missing == ["testbed_breakdown_min_bw.png"]:
        missing = []
    assert not missing, f"{nb_path.name} did not write {missing} (wrote {written})"
    assert shown >= 2, "the jetson and the testbed figures are displayed inline"
    for f in written:
        w, h = _png_size(figs / f)
        assert w >= 800 and h >= 450, f"{f} is {w}x{h} px: too small for the README"
    assert "NOTE: no testbed perf map" not in _text(nb)


def test_notebook_without_testbed_map_prints_a_note(tmp_path):
    figs = tmp_path / "figures"
    nb, _ = _execute(NB_DIR / "01_latency_breakdown.py", tmp_path,
                     {"PRISM_EDGE_FIGURES": str(figs), "PRISM_EDGE_TESTBED_MAP": "none"})
    assert "NOTE: no testbed perf map found" in _text(nb)
    assert sorted(p.name for p in figs.glob("*.png")) == ["jetson_breakdown.png"]


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_ipynb_is_paired_and_stripped(nb_path):
    ipynb = nb_path.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync {nb_path}`"
    paired = nbformat.read(ipynb, as_version=4)
    source = jupytext.read(nb_path)
    a = [(c.cell_type, c.source) for c in paired.cells]
    b = [(c.cell_type, c.source) for c in source.cells]
    assert a == b, f"{ipynb.name} is out of sync with {nb_path.name}: run `jupytext --sync notebooks/*.py`"
    for c in paired.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{ipynb.name} carries outputs"
