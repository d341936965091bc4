"""`python -m runtime profile-cluster`: the sweep across devices started by torchrun.

On loopback (two torchrun ranks on this host) it must write a schema-valid perf map,
resume without re-measuring, and refuse bad set-ups on every rank without hanging. As
root, the ranks run inside the emulated network's namespaces as if they were boards,
each shaping its own egress with tc: the measured rate must follow the set one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from costmodel.perfmap import load_perfmap
from runtime.netem import testbed as tbm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TINY = ["--model", "test_vit", "--depth", "2", "--img-size", "32", "--cr", "2", "--warmup", "0",
        "--repeats", "1", "--timeout", "60", "--no-progress"]


def _torchrun(args, timeout=300):
    env = dict(os.environ, PRISM_EDGE_LOG="WARNING", OMP_NUM_THREADS="1")
    return subprocess.run([*TORCHRUN, "-m", "runtime", "profile-cluster", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _rows(raw):
    with open(raw) as f:
        return [json.loads(ln) for ln in f if ln.strip()][1:]       # line 1: the header


@pytest.mark.gloo
def test_cluster_sweep_writes_map_and_resumes(tmp_path):
    out = tmp_path / "map.json"
    args = [*TINY, "--strategy", "single,voltage,prism", "--batch", "1,2", "--bw", "300",
            "--out", str(out)]
    r = _torchrun(args)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n_records"] == 6 and summary["n_errors"] == 0
    load_perfmap(out)                                        # validates the schema
    d = json.loads(out.read_text())
    recs = d["records"]
    assert sorted((r["strategy"], r["batch"]) for r in recs) == [
        ("prism", 1), ("prism", 2), ("single", 1), ("single", 2), ("voltage", 1), ("voltage", 2)]
    for rec in recs:
        assert rec["error"] is None and rec["latency_ms"]["median"] > 0
        assert rec["comm_bytes"] == rec["comm_bytes_predicted"]
        if rec["strategy"] != "single":
            assert rec["world_size"] == 2 and rec["bw"] == 300
            assert rec["link"]["mode"] == "cluster" and rec["bw_measured"] > 0
            assert len(rec["ranks"]) == 2
        assert rec["energy_j"] is None      # no sensor here: never 0
    assert d["cluster"]["testbed_mode"] == "cluster" and d["cluster"]["same_host"] is True
    assert [e["rank"] for e in d["environment"]["devices"]] == [0, 1]
    assert d["cluster"]["link_checks"][0]["bw_measured"] > 0

    raw = str(out)[:-5] + ".raw.jsonl"
    before = _rows(raw)
    r = _torchrun(args)                                      # everything is in: nothing re-measured
    assert r.returncode == 0, r.stderr[-3000:]
    assert _rows(raw) == before
    assert json.loads(r.stdout.strip().splitlines()[-1])["n_records"] == 6


@pytest.mark.gloo
def test_cluster_passes_measure_the_grid_in_turn(tmp_path):
    out = tmp_path / "map.json"
    r = _torchrun([*TINY, "--strategy", "single,voltage", "--batch", "1", "--bw", "300",
                   "--passes", "2", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(str(out)[:-5] + ".raw.jsonl")
    assert sorted(r["key"].endswith("#pass2") for r in rows) == [False, False, True, True]
    d = json.loads(out.read_text())
    assert d["protocol"]["passes"] == 2 and len(d["records"]) == 2
    assert all(rec["passes"]["n"] == 2 and rec["latency_ms"]["n"] == 2 for rec in d["records"])


@pytest.mark.gloo
@pytest.mark.parametrize("extra, needle", [
    (["--bw", "200,500"], "without --shape-iface the driver cannot change the link rate"),
    (["--bw", "300", "--world-size", "3"], "--world-size 3 but torchrun started WORLD_SIZE=2"),
    (["--bw", "300", "--delay", "5"], "--delay applies to the emulated testbed only"),
    (["--bw", "300", "--host-check"], "--host-check times the cores of one host"),
])
def test_cluster_bad_setup_fails_on_every_rank(tmp_path, extra, needle):
    r = _torchrun([*TINY, "--strategy", "voltage", "--batch", "1", *extra,
                   "--out", str(tmp_path / "m.json")], timeout=240)
    assert r.returncode != 0
    assert r.stderr.count(needle) >= 1, r.stderr[-2000:]
    assert not (tmp_path / "m.json").exists()


def test_cluster_needs_torchrun(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    r = subprocess.run([sys.executable, "-m", "runtime", "profile-cluster", *TINY, "--out",
                        str(tmp_path / "m.json")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "profile-cluster runs under torchrun" in r.stderr


def _netns_ok() -> bool:
    return tbm.is_root() and subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


@pytest.mark.gloo
@pytest.mark.skipif(not _netns_ok(), reason="needs root and ip netns")
def test_cluster_shapes_each_device_in_namespaces(tmp_path):
    """Two namespaces stand in for two boards; the testbed's own shapers sit at 900
    Mbit/s, and each rank's tbf on its eth0 must bring the measured rate to 150 and
    300 Mbit/s. On exit the ranks remove their qdisc."""
    from runtime.launch import self_argv

    out = tmp_path / "map.json"
    with tbm.Testbed(2, 900, mode="netns", prefix="pecl") as tb:
        argv = self_argv(["profile-cluster", *TINY, "--strategy", "voltage", "--batch", "1",
                          "--bw", "150,300", "--shape-iface", tbm.IFNAME, "--out", str(out)])
        stdout = tb.launch(argv, timeout_s=300)
        kinds = {q["kind"] for ns in tb.namespaces
                 for q in json.loads(tb._tc(ns, "-j", "qdisc", "show", "dev", tbm.IFNAME))}
    summary = json.loads(stdout.strip().splitlines()[-1])
    checks = {c["bw"]: c["bw_measured"] for c in summary["link_checks"]}
    assert set(checks) == {150.0, 300.0}
    for bw, got in checks.items():
        assert abs(got / bw - 1) < 0.10, checks
    assert "tbf" not in kinds                     # the driver's shapers are gone
    d = json.loads(out.read_text())
    assert all(r["link"]["shaper"].startswith("tc tbf on every device") for r in d["records"])
