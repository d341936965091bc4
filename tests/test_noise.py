"""costmodel.noise: a perf map's own measurement floor, from its passes."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from costmodel.noise import halves, measurement_floor, pass_medians, record_intervals
from costmodel.perfmap import PerfMap, record_key, save_perfmap
from costmodel.synthetic import synthetic_perfmap

ROOT = Path(__file__).resolve().parents[1]


def _with_passes(sigma: float, k: int = 20, seed: int = 1) -> tuple[PerfMap, dict]:
    """The synthetic map with each record measured in k passes whose medians scatter
    around the record's latency by a relative normal sigma; returns the map and the
    true (long-run) latency per key."""
    d = copy.deepcopy(synthetic_perfmap(seed=0, axes={"world_size": (2,)}))
    rng = np.random.default_rng(seed)
    truth = {}
    for r in d["records"]:
        true = r["latency_ms"]["median"]
        v = true * (1 + sigma * rng.standard_normal(k))
        truth[record_key(r)] = true
        r["passes"] = {"n": k, "n_errors": 0, "latency_median_ms": v.tolist(), "spread_pct": 0.0}
        r["latency_ms"]["median"] = float(np.median(v))
    meta = {k: v for k, v in d.items() if k != "records"}
    return PerfMap(meta=meta, records=d["records"]), truth


def test_pass_medians_needs_enough_passes():
    assert pass_medians({"passes": {"latency_median_ms": [1.0, 2.0, 3.0]}}) is None
    assert pass_medians({}) is None
    assert pass_medians({"passes": {"latency_median_ms": [1.0, 2.0, 3.0, 4.0]}}).tolist() == [1, 2, 3, 4]


def test_noiseless_passes_have_zero_floor():
    pm, _ = _with_passes(0.0)
    f = measurement_floor(pm, n_boot=50)
    assert f["n_records"] == len(pm.usable()) and f["skipped"] == 0
    assert f["median_ape"] == pytest.approx(0, abs=1e-9) and f["p90_ape"] == pytest.approx(0, abs=1e-9)
    assert f["halves"]["p90_ape"] == pytest.approx(0, abs=1e-9)


def test_floor_matches_the_sampling_error_of_a_median():
    # relative sd of the median of k normal values ~ 1.2533 sigma / sqrt(k)
    sigma, k = 0.05, 20
    pm, _ = _with_passes(sigma, k)
    f = measurement_floor(pm, n_boot=200)
    sd_med = 1.2533 * sigma / np.sqrt(k) * 100
    assert 0.5 * 0.674 * sd_med < f["median_ape"] < 1.6 * 0.674 * sd_med
    # two medians of k/2 passes: the difference has sd sqrt(2) * 1.2533 sigma / sqrt(k/2)
    sd_diff = np.sqrt(2) * 1.2533 * sigma / np.sqrt(k / 2) * 100
    h = halves(pm)
    assert h["passes_per_half"] == k // 2
    assert 0.7 * 0.674 * sd_diff < h["median_ape"] < 1.3 * 0.674 * sd_diff
    assert set(h["by_strategy"]) == {r["strategy"] for r in pm.usable()}


def test_floor_scales_with_the_noise():
    lo = measurement_floor(_with_passes(0.02)[0], n_boot=100)["p90_ape"]
    hi = measurement_floor(_with_passes(0.08)[0], n_boot=100)["p90_ape"]
    assert 3.0 < hi / lo < 5.0


def test_phase_floor_follows_that_phase_noise_alone():
    # a quiet compute phase and a noisy comm phase: each phase's floor follows its own noise
    pm, _ = _with_passes(0.02)
    rng = np.random.default_rng(3)
    for r in pm.records:
        for ph, sigma in (("compute", 0.01), ("comm", 0.10)):
            v = max(r.get(f"{ph}_ms") or 0.0, 1.0) * (1 + sigma * rng.standard_normal(20))
            r["passes"][f"{ph}_ms"] = v.tolist()
            r[f"{ph}_ms"] = float(np.median(v))
    comp = measurement_floor(pm, target="compute", n_boot=100)
    comm = measurement_floor(pm, target="comm", n_boot=100)
    assert comp["target"] == "compute" and comp["n_records"] == len(pm.usable())
    assert 6.0 < comm["p90_ape"] / comp["p90_ape"] < 14.0          # 10x the noise
    assert pass_medians(pm.records[0], "comm").size == 20
    # a map whose passes do not record the phase (older maps), a phase that is 0 (single's comm)
    assert measurement_floor(pm, target="staging")["n"] == 0
    for r in pm.records:
        r["comm_ms"] = 0.0
    assert measurement_floor(pm, target="comm")["n"] == 0
    with pytest.raises(ValueError, match=r"unknown target 'energy'; known: \['latency', 'compute'"):
        measurement_floor(pm, target="energy")


def test_record_intervals_cover_the_true_value():
    pm, truth = _with_passes(0.05, k=20)
    ci = record_intervals(pm, coverage=0.9, n_boot=300)
    assert set(ci) == set(truth)
    inside = np.mean([lo <= truth[k] <= hi for k, (lo, hi) in ci.items()])
    assert 0.75 < inside <= 1.0           # percentile bootstrap of a median undercovers a little
    assert all(lo <= hi for lo, hi in ci.values())


def test_maps_without_passes_and_bad_arguments():
    d = synthetic_perfmap(seed=0, axes={"world_size": (2,)})
    pm = PerfMap(meta={k: v for k, v in d.items() if k != "records"}, records=d["records"])
    f = measurement_floor(pm)
    assert f["n"] == 0 and f["skipped"] == len(pm.usable())
    assert "no record" in f["halves"]["reason"]
    with pytest.raises(ValueError, match="n_boot"):
        measurement_floor(pm, n_boot=1)
    with pytest.raises(ValueError, match="coverage"):
        record_intervals(pm, coverage=1.5)


def test_cli_validate_reports_the_floor(tmp_path):
    pm, _ = _with_passes(0.05)
    path = tmp_path / "passes.json"
    save_perfmap(pm, path)
    model = tmp_path / "m.json"
    r = subprocess.run([sys.executable, "-m", "costmodel", "fit", str(path), "--out", str(model)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "costmodel", "validate", str(path), "--model", str(model)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["measurement_floor"]["n_records"] == out["n_rows"]
    assert 0 < out["measurement_floor"]["median_ape"] < 5
    assert "measurement_floor_phases" not in out      # these passes record no phase times
