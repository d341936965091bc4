"""Profiling sweeps: bad input, the raw log, a tiny sweep to a valid perf map, resume
after SIGKILL. The sweeps run on the emulated network when root, else on loopback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from costmodel.perfmap import load_perfmap
from runtime.netem import testbed as tbm
from runtime.cli import main
from runtime.measure.rawlog import RawLog
from runtime.measure.spec import Config, SweepSpec, expand, orderer as _orderer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "test_vit", "--depth", "2"]


def _mode() -> str:
    ok = tbm.is_root() and subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0
    return "netns" if ok else "loopback"


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, msg", [
    (["--strategy", "single,warp"], "unknown strategy 'warp'; known: ["),
    (["--bw", "0"], "bw=0.0 Mbit/s must be > 0"),
    (["--bw", "300,-1"], "bw=-1.0 Mbit/s must be > 0"),
    (["--bw", "fast"], "--bw value 'fast' is not a number"),
    (["--batch", "0"], "batch=0 must be an integer >= 1"),
    (["--world-size", "1"], "world_size=1 must be an integer >= 2"),
    (["--img-size", "32", "--cr", "9.9"], "prism on test_vit img_size=32 (seq_len=5) at world_size=2: "
                                          "cr=9.9 for 3 tokens per device; cr must be in [1, 3]"),
    (["--model", "vit_nonexistent"], "unknown model 'vit_nonexistent'"),
    (["--exchange", "ring"], "unknown exchange 'ring'; known: ['pairwise', 'allgather']"),
    (["--testbed", "wifi"], "unknown testbed mode 'wifi'; allowed: ['auto', 'netns', 'unshare', 'loopback']"),
    (["--meter", "watts"], "--meter 'watts'; allowed: auto, jtop, ina3221, rapl, none"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, msg):
    out = tmp_path / "m" / "map.json"
    base = {"--model": "test_vit", "--img-size": "32,48", "--cr": "2"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = ["profile", "--depth", "2", "--out", str(out), "--no-progress"]
    for k, v in base.items():
        argv += [k, v]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and msg in err[-1], err
    assert not (tmp_path / "m").exists()


def test_no_namespace_permission_is_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tbm, "is_root", lambda: False)
    out = tmp_path / "map.json"
    assert main(["profile", *TINY, "--img-size", "32", "--cr", "2", "--testbed", "netns",
                 "--out", str(out), "--no-progress"]) == 2
    assert "mode 'netns' needs root" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_expand_groups_and_keys():
    spec = SweepSpec(models=("test_vit",), depth=2, strategies=("single", "voltage", "prism"),
                     batches=(1, 2), bws=(200.0, 300.0), crs=(2.0,), img_sizes=(32,),
                     world_sizes=(2,))
    cs = expand(spec)
    assert len(cs) == 2 + 2 * 2 * 2        # single per batch; (voltage, prism) x batch x bw
    assert len({c.key for c in cs}) == len(cs)
    assert [c.strategy for c in cs[:2]] == ["single", "single"] and cs[0].bw is None
    assert {c.group for c in cs[2:]} == {("test_vit", 2, 200.0), ("test_vit", 2, 300.0)}
    assert expand(spec, shaped=False)[-1].bw is None       # loopback: one unshaped rate


# --------------------------------------------------------------------------- raw log

def test_raw_log_tolerates_a_torn_line_and_never_duplicates(tmp_path):
    p = tmp_path / "raw.jsonl"
    log = RawLog(str(p), {"repeats": 3})
    for k in ("a", "b"):
        log.append({"key": k, "v": 1})
    log.close()
    with open(p, "a") as f:
        f.write('{"key": "c", "v"')                       # killed mid-line
    log = RawLog(str(p), {"repeats": 3})
    assert sorted(log.rows) == ["a", "b"]
    log.append({"key": "c", "v": 2})
    log.close()
    lines = [json.loads(ln) for ln in p.read_text().splitlines()]
    assert [ln.get("key") for ln in lines] == [None, "a", "b", "c"]
    with pytest.raises(ValueError, match="was started with protocol"):
        RawLog(str(p), {"repeats": 5})


# --------------------------------------------------------------------------- sweeps

def _run_cli(args, **kw):
    env = dict(os.environ, PRISM_EDGE_LOG="WARNING")
    return subprocess.Popen([sys.executable, "-m", "runtime", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_tiny_sweep_writes_a_schema_valid_perf_map(tmp_path):
    out = tmp_path / "map.json"
    p = _run_cli(["profile", *TINY, "--img-size", "32,48", "--batch", "1", "--bw", "300",
                  "--cr", "2", "--world-size", "2", "--warmup", "1", "--repeats", "2",
                  "--testbed", _mode(), "--prefix", "ptsweep", "--host-check", "--out", str(out)])
    so, se = p.communicate(timeout=300)
    assert p.returncode == 0, se[-6000:]
    summary = json.loads(so)
    assert summary["n_records"] == 6 and summary["n_errors"] == 0
    pm = load_perfmap(out)                                 # validates the schema
    d = pm.to_dict()
    assert d["source"] == "measured" and d["sweep"]["duration_s"] > 0
    assert {(m["name"], m["seq_len"], m["n_layers"]) for m in d["models"]} == {("test_vit", 5, 2), ("test_vit", 10, 2)}
    assert d["environment"]["torch"] and d["environment"]["kernel"] and d["environment"]["link_emulation"]
    assert d["protocol"]["repeats"] == 2
    hc = d["cluster"]["host_check"]                        # --host-check: before and after
    assert set(hc) == {"before", "after"}
    assert [c["core"] for c in hc["before"]["cores"]] == sorted(os.sched_getaffinity(0))[:2]
    by = {(r["strategy"], r["seq_len"]): r for r in d["records"]}
    assert set(by) == {(s, n) for s in ("single", "voltage", "prism") for n in (5, 10)}
    for r in d["records"]:
        assert r["latency_ms"]["n"] == 2 and r["latency_ms"]["p10"] <= r["latency_ms"]["median"] <= r["latency_ms"]["p90"]
        assert r["comm_bytes"] == r["comm_bytes_predicted"]
        assert r["energy_j"] is None or r["energy_source"] != "none"
        if r["strategy"] == "single":
            assert r["world_size"] == 1 and r["bw"] is None and r["link"] is None
        else:
            assert r["link"]["mode"] == _mode() and r["comm_bytes"] > 0
    if _mode() == "netns":
        r = by[("voltage", 10)]
        assert r["bw"] == 300.0 and abs(r["bw_measured"] - 300) / 300 < 0.05
        assert "delay_method" in r["link"]
    assert by[("prism", 10)]["m"] == 2 and by[("prism", 10)]["cr"] == 2.5
    assert tbm.list_namespaces("ptsweep") == []


@pytest.mark.slow
def test_sigkilled_sweep_resumes_without_loss_or_duplicates(tmp_path):
    out, raw = tmp_path / "map.json", tmp_path / "raw.jsonl"
    args = ["profile", *TINY, "--img-size", "32", "--strategy", "single,voltage",
            "--batch", "1,2,3,4", "--bw", "300", "--world-size", "2", "--warmup", "0",
            "--repeats", "150", "--testbed", _mode(), "--prefix", "ptres",
            "--out", str(out), "--raw", str(raw), "--no-progress"]
    p = _run_cli(args)
    deadline = time.monotonic() + 180
    n = 0
    try:
        while time.monotonic() < deadline and p.poll() is None:
            n = raw.read_text().count("\n") - 1 if raw.exists() else 0
            if n >= 3:
                break
            time.sleep(0.05)
        assert p.poll() is None, "the sweep finished before it could be killed: " + p.stderr.read()[-500:]
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    before = [json.loads(ln) for ln in raw.read_text().splitlines()]
    assert 3 <= len(before) - 1 < 8 and not out.exists()
    with open(raw, "a") as f:               # and as if it had died mid-line
        f.write('{"key": "test_vit/img32/P2/bw300/voltage/crnone/B4", "strat')
    p = _run_cli(args)
    so, se = p.communicate(timeout=240)
    assert p.returncode == 0, se[-6000:]
    rows = [json.loads(ln) for ln in raw.read_text().splitlines()][1:]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 8                  # nothing duplicated, nothing lost
    assert rows[:len(before) - 1] == before[1:]              # what was measured was kept
    pm = load_perfmap(out)
    assert len(pm.records) == 8 and not any(r["error"] for r in pm.records)
    assert tbm.list_namespaces("ptres") == []                # the killed run's namespaces too


@pytest.mark.gloo
@pytest.mark.parametrize("target, expect_n", [("0.9", 2), ("0.000001", 6)])
def test_adaptive_repeats_stop_when_the_median_is_precise(tmp_path, target, expect_n):
    """--max-repeats: at least --repeats, then more until the robust relative standard
    error of the median reaches --target-se (a loose target stops at the minimum, an
    impossible one runs to the maximum); the protocol records the rule, and every record
    carries the host's foreign CPU share measured while it ran."""
    out = tmp_path / "map.json"
    p = _run_cli(["profile", *TINY, "--img-size", "32", "--batch", "1", "--strategy", "single,voltage",
                  "--warmup", "0", "--repeats", "2", "--max-repeats", "6", "--target-se", target,
                  "--testbed", "loopback", "--out", str(out), "--no-progress"])
    so, se = p.communicate(timeout=240)
    assert p.returncode == 0, se[-3000:]
    d = json.loads(out.read_text())
    assert d["protocol"]["max_repeats"] == 6 and d["protocol"]["target_rel_se"] == float(target)
    for r in d["records"]:
        assert r["latency_ms"]["n"] == expect_n and len(r["latency_ms"]["samples"]) == expect_n
        assert r["host_foreign_cpu_pct"] >= 0


def test_adaptive_repeats_bad_input():
    with pytest.raises(ValueError, match="max_repeats=3 must be >= repeats=5"):
        SweepSpec(max_repeats=3)
    with pytest.raises(ValueError, match=r"target_rel_se=0 must be in \(0, 1\)"):
        SweepSpec(max_repeats=9, target_rel_se=0)


# --------------------------------------------------------------------------- passes

def _row(key, med, comp, err=None, energy=1.0):
    return {"key": key, "batch": 2, "error": err, "latency_ms": {"median": med, "samples": [med - 1, med, med + 1]},
            "compute_ms": comp, "staging_ms": 0.0, "comm_ms": med - comp, "energy_j": None,
            "energy_est_j": energy, "wall_s": 1.0, "host_foreign_cpu_pct": comp / 100}


def test_combine_passes_takes_the_median_of_the_passes():
    from runtime.measure.mapbuild import combine_passes

    k = "m/img32/P2/bw300/voltage/crnone/B2"
    rows = [_row(k, 10.0, 6.0), _row(k + "#pass2", 14.0, 7.0), _row(k + "#pass3", 11.0, 9.0),
            {"key": k + "#pass4", "error": "RuntimeError: peer died"}]
    r = combine_passes(rows)
    assert r["key"] == k and r["error"] is None
    assert r["latency_ms"]["median"] == 11.0 and r["per_sample_ms"] == 5.5
    assert r["latency_ms"]["n"] == 9 and sorted(r["latency_ms"]["samples"])[0] == 9.0
    assert r["latency_ms"]["p10"] <= 11.0 <= r["latency_ms"]["p90"]
    assert r["compute_ms"] == 7.0 and r["comm_ms"] == 4.0          # medians over passes
    assert r["energy_est_j"] == 1.0 and r["energy_j"] is None
    assert r["wall_s"] == 3.0 and r["host_foreign_cpu_pct"] == 0.09
    assert r["passes"] == {"n": 3, "n_errors": 1, "latency_median_ms": [10.0, 14.0, 11.0], "spread_pct": 40.0,
                           "compute_ms": [6.0, 7.0, 9.0], "staging_ms": [0.0, 0.0, 0.0],
                           "comm_ms": [4.0, 7.0, 2.0]}
    one = combine_passes([_row(k, 10.0, 6.0)])                   # one pass: the row as it is
    assert one == _row(k, 10.0, 6.0) and "passes" not in one
    dead = combine_passes([{"key": k, "error": "x"}, {"key": k + "#pass2", "error": "y"}])
    assert dead == {"key": k, "error": "y"}


def test_expand_repeats_the_whole_grid_per_pass():
    spec = SweepSpec(models=("test_vit",), depth=2, strategies=("single", "voltage"), batches=(1, 2),
                     bws=(300.0,), img_sizes=(32,), passes=3)
    cs = expand(spec)
    assert len(cs) == 3 * 4 and len({c.key for c in cs}) == 12 and len({c.base_key for c in cs}) == 4
    assert [c.pass_no for c in cs] == [1] * 4 + [2] * 4 + [3] * 4     # pass after pass
    assert cs[0].key == cs[0].base_key and cs[4].key == cs[0].base_key + "#pass2"
    with pytest.raises(ValueError, match="passes=0 must be an integer >= 1"):
        SweepSpec(models=("test_vit",), passes=0)


@pytest.mark.gloo
def test_passes_sweep_and_adding_a_pass_later(tmp_path):
    """--passes 2 measures the grid twice, the map holds one record per configuration
    (median of the passes); the same command again measures nothing; --passes 3 then
    measures only the third pass."""
    out, raw = tmp_path / "map.json", tmp_path / "raw.jsonl"
    args = ["profile", *TINY, "--img-size", "32", "--batch", "1,2", "--strategy", "single,voltage",
            "--warmup", "0", "--repeats", "2", "--testbed", "loopback", "--out", str(out),
            "--raw", str(raw), "--no-progress"]

    def run(passes):
        p = _run_cli(args + ["--passes", str(passes)])
        so, se = p.communicate(timeout=240)
        assert p.returncode == 0, se[-3000:]
        return [json.loads(ln) for ln in raw.read_text().splitlines()][1:], json.loads(out.read_text())

    rows, d = run(2)
    assert len(rows) == 8 and sum("#pass2" in r["key"] for r in rows) == 4
    assert d["protocol"]["passes"] == 2 and d["sweep"]["n_configs"] == 4
    assert len(d["records"]) == 4 and all("#" not in r["key"] for r in d["records"])
    for r in d["records"]:
        assert r["passes"]["n"] == 2 and r["latency_ms"]["n"] == 4
        assert r["latency_ms"]["median"] == pytest.approx(sum(r["passes"]["latency_median_ms"]) / 2, abs=1e-3)
    load_perfmap(out)                                                  # schema-valid
    assert run(2)[0] == rows                                            # resumed: nothing new
    rows3, d3 = run(3)
    assert rows3[:8] == rows and len(rows3) == 12 and all("#pass3" in r["key"] for r in rows3[8:])
    assert all(r["passes"]["n"] == 3 for r in d3["records"])


def test_orderer_is_seeded_per_pass_and_grid_keeps_the_order():
    items = list(range(12))
    grid = SweepSpec(models=("test_vit",))
    assert _orderer(grid, 2)(items) == items
    sh = SweepSpec(models=("test_vit",), order="shuffled", seed=3)
    a1, a2 = _orderer(sh, 1)(items), _orderer(sh, 2)(items)
    assert sorted(a1) == items and sorted(a2) == items and a1 != a2 and a1 != items
    assert _orderer(sh, 1)(items) == a1                        # reproducible
    assert "order" in sh.protocol() and "order" not in grid.protocol()
    with pytest.raises(ValueError, match="order='random'; allowed: grid, shuffled"):
        SweepSpec(models=("test_vit",), order="random")


@pytest.mark.gloo
def test_shuffled_passes_run_in_their_own_order(tmp_path):
    """--order shuffled: each pass measures every configuration, pass 1 and pass 2 run
    their groups' configurations in different orders (the seeded ones), the protocol says
    so, and resuming the raw log with --order grid is refused."""
    out, raw = tmp_path / "map.json", tmp_path / "raw.jsonl"
    args = ["profile", *TINY, "--img-size", "32", "--batch", "1,2,4", "--strategy", "single,voltage",
            "--warmup", "0", "--repeats", "1", "--testbed", "loopback", "--out", str(out),
            "--raw", str(raw), "--no-progress", "--passes", "2"]
    p = _run_cli(args + ["--order", "shuffled"])
    so, se = p.communicate(timeout=240)
    assert p.returncode == 0, se[-3000:]
    rows = [json.loads(ln) for ln in raw.read_text().splitlines()][1:]
    by_pass = {1: [r["key"] for r in rows if "#" not in r["key"]],
               2: [r["key"].split("#")[0] for r in rows if "#pass2" in r["key"]]}
    assert len(by_pass[1]) == len(by_pass[2]) == 6 and set(by_pass[1]) == set(by_pass[2])
    assert by_pass[1] != by_pass[2]
    d = json.loads(out.read_text())
    assert d["protocol"]["order"] == "shuffled" and len(d["records"]) == 6
    assert all(r["passes"]["n"] == 2 for r in d["records"])
    p = _run_cli(args + ["--order", "grid"])
    so, se = p.communicate(timeout=240)
    assert p.returncode == 2 and "was started with protocol" in se, se[-2000:]
