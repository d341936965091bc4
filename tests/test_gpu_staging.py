"""benchmarks/gpu_staging.py, the prepared GPU run (issue 18), as a dry run on the CPU so
that it cannot rot: `--device cpu --quick --testbed loopback` (test_vit, img 96, depth 2,
batch 1,2; about 35 s on 2 cores), then every output checked for shape and sense. The
staging least squares is checked on synthetic per-block numbers."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_staging.py")
STRATEGIES = ("single", "voltage", "tensor_parallel", "prism_m_eq_Lp", "prism_cr9.9")


def _module():
    spec = importlib.util.spec_from_file_location("_gpu_staging_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    out = tmp_path_factory.mktemp("gpu_staging")
    r = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--device", "cpu", "--quick",
                        "--testbed", "loopback", "--budget", "240"],
                       cwd=ROOT, capture_output=True, text=True, timeout=280,
                       env=dict(os.environ, PRISM_EDGE_LOG="WARNING"))
    return out, r


def _json(out, name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


@pytest.mark.gloo
def test_dry_run_completes(dry_run):
    out, r = dry_run
    assert r.returncode == 0, r.stderr[-3000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["failed"] == []
    steps = _json(out, "steps.json")["steps"]
    status = {s["step"]: s["status"] for s in steps}
    assert list(status) == ["env", "micro", "parity", "testbed", "sweep", "fit", "staging_fit"]
    assert status["micro"] == "skipped"              # nothing to stage on the CPU
    assert all(v == "ok" for k, v in status.items() if k != "micro"), status
    assert all(isinstance(s["seconds"], float) for s in steps)
    for name in ("summary.md", "logs/env_probe.err", "logs/parity_single.err", "logs/parity_dist.err",
                 "perfmap_loopback.json", "perfmap_loopback.raw.jsonl"):
        assert os.path.exists(os.path.join(out, name)), name


@pytest.mark.gloo
def test_env_says_dry_run(dry_run):
    out, _ = dry_run
    env = _json(out, "env.json")
    assert env["dry_run"] is True and env["device_requested"] == "cpu"
    assert "dry run" in env["dry_run_note"]
    t = env["probe"]["torch"]
    import torch

    assert t["version"] == torch.__version__ and t["cuda_build"] == torch.version.cuda
    assert env["missing_required"] == []
    assert env["probe"]["smoke"] is None             # no device smoke test on the CPU
    with open(os.path.join(out, "summary.md")) as f:
        text = f.read()
    assert "**dry run**" in text and "## Parity" in text and "## Staging fit" in text


@pytest.mark.gloo
def test_parity_entries(dry_run):
    out, _ = dry_run
    par = _json(out, "parity.json")
    assert par["dry_run"] is True and par["device"] == "cpu"
    e = par["entries"]
    assert set(STRATEGIES) <= set(e), sorted(e)
    assert "single_cpu" not in e                     # the CPU reference is for GPU runs only
    assert par["failed"] == []
    for name in STRATEGIES:
        assert "error" not in e[name], (name, e[name].get("error"))
        assert os.path.exists(os.path.join(out, "parity", f"{name}.npy"))
    for name in ("voltage", "tensor_parallel", "prism_m_eq_Lp"):
        v = e[name]["vs_single"]
        assert e[name]["expect"] == "exact" and e[name]["passed"]
        assert v["allclose"] and v["max_abs_diff"] < 1e-4 and v["shape"] == [2, 1000]
        assert e[name]["rank0"]["comm_bytes"] > 0
    assert e["prism_m_eq_Lp"]["m_is_Lp"] is True
    approx = e["prism_cr9.9"]["vs_single"]
    assert approx["max_abs_diff"] > 1e-4 and not approx["allclose"]   # it approximates
    assert 0 <= approx["top1_agreement"] <= 1
    assert e["voltage"]["rank0"]["staged_bytes"] == 0                 # CPU: nothing staged


@pytest.mark.gloo
def test_perf_map_and_fit(dry_run):
    from costmodel.perfmap import validate_perfmap

    out, _ = dry_run
    pm = _json(out, "perfmap.json")
    validate_perfmap(pm)
    recs = pm["records"]
    assert {r["strategy"] for r in recs} == {"single", "voltage", "prism"}
    assert {r["batch"] for r in recs} == {1, 2}
    assert {r["cr_requested"] for r in recs if r["strategy"] == "prism"} == {3.3, 4.95, 9.9}
    assert pm["protocol"]["device"] == "cpu" and pm["cluster"]["testbed_mode"] == "loopback"
    dist = [r for r in recs if r["world_size"] == 2]
    assert dist and all(len(r["blocks"]) == 2 for r in dist)    # --blocks, depth 2
    assert all(not r.get("error") for r in recs)
    tb = _json(out, "testbed.json")
    assert tb["sweep_mode"] == "loopback" and tb["checks"]["loopback"]["ok"]
    prof = _json(out, "profile.json")
    assert prof["profile"]["name"] == "gpu-staging"
    v = _json(out, "validate.json")
    assert v["in_sample"] is True and math.isfinite(v["latency"]["mape"])
    assert "held_out" in _json(out, "held_out.json")


@pytest.mark.gloo
def test_staging_fit_file(dry_run):
    out, _ = dry_run
    s = _json(out, "staging_fit.json")
    assert s["dry_run"] is True and "nothing is staged" in s["note"]
    jet = s["jetson"]["per_strategy"]
    assert jet["voltage"]["per_exchange_ms"] == pytest.approx(6.69, abs=0.01)
    assert jet["voltage"]["mb_per_s"] == pytest.approx(464, abs=1)
    assert jet["prism"]["mb_per_s"] == pytest.approx(179, abs=1)
    pb = s["runtime"]["per_block"]
    assert {"voltage", "prism", "*"} <= set(pb)
    assert pb["*"]["n"] == sum(pb[g]["n"] for g in ("voltage", "prism"))
    assert pb["*"]["ms_per_mb"] is None              # no staged bytes on the CPU
    assert _json(out, "staging_micro.json") == {"skipped": "dry run (--device cpu): nothing to stage"}


def test_staging_least_squares_recovers_a_line():
    """Per block fixed + ms_per_mb * MB, and per pass in the cost model's form."""
    gs = _module()
    recs = []
    for strat, fixed, per_mb in (("voltage", 0.5, 2.0), ("prism", 0.2, 4.0)):
        for batch in (1, 2, 4, 8):
            mb = 0.3 * batch if strat == "voltage" else 0.05 * batch
            blocks = [{"staged_bytes": int(mb * 1e6), "staging_ms": fixed + per_mb * mb} for _ in range(3)]
            recs.append({"strategy": strat, "world_size": 2, "error": None, "blocks": blocks,
                         "staged_bytes": 3 * int(mb * 1e6), "staging_ms": 3 * (fixed + per_mb * mb)})
    recs.append({"strategy": "single", "world_size": 1, "error": None, "blocks": [],
                 "staged_bytes": 0, "staging_ms": 0.0})
    fit = gs.staging_fit({"records": recs})
    v, p = fit["per_block"]["voltage"], fit["per_block"]["prism"]
    assert v["n"] == 12 and v["fixed_ms"] == pytest.approx(0.5) and v["ms_per_mb"] == pytest.approx(2.0)
    assert v["mb_per_s"] == pytest.approx(500.0) and v["r2"] == pytest.approx(1.0)
    assert p["fixed_ms"] == pytest.approx(0.2) and p["mb_per_s"] == pytest.approx(250.0)
    assert fit["per_block"]["*"]["n"] == 24
    pp = fit["per_pass"]["voltage"]
    assert pp["per_exchange_ms"] == pytest.approx(0.5) and pp["ms_per_mb"] == pytest.approx(2.0, rel=1e-3)
    flat = gs._linfit([0.0, 0.0], [0.01, 0.03])
    assert flat["ms_per_mb"] is None and flat["fixed_ms"] == pytest.approx(0.02)


def test_bad_device_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path), "--device", "tpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --device 'tpu'")
