"""The emulated network: rate, exchange time, teardown, bypass refusal, permissions.

Namespace tests need root and `ip netns`; they are marked `netns` and skipped cleanly
elsewhere. Every test uses its own namespace prefix and checks `ip netns list` itself.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from runtime.netem import testbed as tbm
from runtime.netem.testbed import BypassError, Testbed, TestbedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def _netns_ok() -> bool:
    if not (tbm.is_root() and shutil.which("ip") and shutil.which("tc")):
        return False
    return subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


def _names(prefix: str) -> list:
    return tbm.list_namespaces(prefix)


# --------------------------------------------------------------------------- pure checks

def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match=r"bw=0 Mbit/s must be > 0"):
        Testbed(2, 0)
    with pytest.raises(ValueError, match=r"bw=-5 Mbit/s must be > 0"):
        Testbed(2, -5)
    with pytest.raises(ValueError, match=r"unknown testbed mode 'wifi'; allowed: \['auto', 'netns', 'unshare', 'loopback'\]"):
        Testbed(2, 100, mode="wifi")
    with pytest.raises(ValueError, match="world_size"):
        Testbed(0, 100)


def test_l2_overhead_factor():
    assert tbm.l2_overhead_factor(1500) == pytest.approx(1514 / 1448)


def test_loopback_records_unshaped():
    with Testbed(2, 300, mode="loopback") as tb:
        assert tb.link["mode"] == "loopback"
        assert tb.link["bw"] is None and tb.link["shaper"] is None
        assert tb.addr(0) == "127.0.0.1"
        tb.verify()          # nothing to bypass: nothing is claimed


# --------------------------------------------------------------------------- namespaces

@pytest.mark.netns
@pytest.mark.skipif(not _netns_ok(), reason="needs root, ip netns and tc")
def test_rate_within_5_percent_and_live_change():
    with Testbed(2, 100, prefix="ptrate") as tb:
        got100 = tb.measure_bw(seconds=1.0)
        tb.set_bw(300)                              # live: tc qdisc change
        assert tb.link["bw"] == 300.0 and tb.link["bw_measured"] is None
        got300 = tb.measure_bw(seconds=1.0)
        link = dict(tb.link)
    assert abs(got100 - 100) / 100 < 0.05, got100
    assert abs(got300 - 300) / 300 < 0.05, got300
    assert link["bw_measured"] == pytest.approx(got300, rel=1e-3)
    assert link["shaper"].startswith("tc tbf on both directions")
    assert link["delay_method"]
    assert _names("ptrate") == []


@pytest.mark.netns
@pytest.mark.skipif(not _netns_ok(), reason="needs root, ip netns and tc")
def test_delay_is_applied_or_recorded_as_not_applied():
    with Testbed(2, 100, delay_ms=5.0, prefix="ptdly") as tb:
        link = dict(tb.link)
        kinds = {q["kind"] for q in json.loads(subprocess.run(
            ["tc", "-n", tb.namespaces[0], "-j", "qdisc", "show", "dev", "eth0"],
            capture_output=True, text=True).stdout)}
    assert link["delay_ms_requested"] == 5.0
    if link["netem_available"]:
        assert link["delay_method"].startswith("netem") and link["delay_ms"] == 5.0
        assert {"netem", "tbf"} <= kinds
    else:                      # never reported as applied when it was not
        assert link["delay_method"] == "none: netem unavailable" and link["delay_ms"] == 0.0
        assert kinds == {"tbf"}


_EXCHANGE = textwrap.dedent("""
    import json, os, statistics, time, torch, torch.distributed as dist
    from runtime.parallel import exchange as xch
    torch.set_num_threads(1)
    r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    xch.init_process_group(r, w, timeout_s=60)
    d, rows = 1024, 1024                     # 4 MiB of float32 per rank
    t = torch.randn(1, rows, d)
    ex = xch.Exchanger(r, w, torch.device("cpu"), "pairwise")
    ex.exchange(t, [rows] * w)               # connections warm
    ts = []
    for _ in range(3):
        dist.barrier()
        t0 = time.perf_counter(); parts = ex.exchange(t, [rows] * w); ts.append(time.perf_counter() - t0)
    assert parts[1 - r].shape == t.shape
    if r == 0:
        print(json.dumps({"s": statistics.median(ts), "bytes": t.numel() * 4}))
    xch.destroy()
""")


@pytest.mark.netns
@pytest.mark.skipif(not _netns_ok(), reason="needs root, ip netns and tc")
def test_voltage_exchange_takes_bytes_over_bw():
    bw = 200.0
    with Testbed(2, bw, prefix="ptxch") as tb:
        out = tb.launch([PY, "-c", _EXCHANGE], timeout_s=120)
    res = json.loads(out.strip().splitlines()[-1])
    expect = res["bytes"] * 8 / (bw * 1e6)
    assert abs(res["s"] - expect) / expect < 0.10, (res, expect)


@pytest.mark.netns
@pytest.mark.skipif(not _netns_ok(), reason="needs root, ip netns and tc")
def test_teardown_after_exit_and_exception():
    with Testbed(3, 100, prefix="ptdown") as tb:
        names = _names("ptdown")
        assert len(names) == 4 and set(tb.namespaces) <= set(names)
        kinds = {q["kind"] for q in json.loads(subprocess.run(
            ["tc", "-n", tb.namespaces[0], "-j", "qdisc", "show", "dev", "eth0"],
            capture_output=True, text=True).stdout)}
        assert "tbf" in kinds
    assert _names("ptdown") == []
    with pytest.raises(RuntimeError, match="boom"):
        with Testbed(2, 100, prefix="ptdown"):
            assert len(_names("ptdown")) == 3
            raise RuntimeError("boom")
    assert _names("ptdown") == []


_HOLD = textwrap.dedent("""
    import sys, time
    from runtime.netem.testbed import Testbed
    with Testbed(2, 100, prefix=sys.argv[1]) as tb:
        print("up", flush=True)
        time.sleep(120)
""")


@pytest.mark.netns
@pytest.mark.skipif(not _netns_ok(), reason="needs root, ip netns and tc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_teardown_on_signal(sig):
    prefix = f"ptsig{int(sig)}"
    p = subprocess.Popen([PY, "-c", _HOLD, prefix], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up", p.stderr.read()
        assert len(_names(prefix)) == 3
        p.send_signal(sig)
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert rc != 0
    assert _names(prefix) == []


@pytest.mark.netns
@pytest.mark.skipif(not _netns_ok(), reason="needs root, ip netns and tc")
def test_stale_namespaces_of_a_killed_process_are_cleaned():
    prefix = "ptkill"
    p = subprocess.Popen([PY, "-c", _HOLD, prefix], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    assert p.stdout.readline().strip() == "up"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    assert len(_names(prefix)) == 3               # SIGKILL cannot be handled
    removed = tbm.cleanup_stale(prefix)
    assert len(removed) == 3 and _names(prefix) == []


@pytest.mark.netns
@pytest.mark.skipif(not _netns_ok(), reason="needs root, ip netns and tc")
def test_refuses_setups_that_bypass_the_shaper():
    with Testbed(2, 100, prefix="ptbyp") as tb:
        tb.verify()
        with pytest.raises(BypassError, match="loopback"):
            tb.verify(master_addr="127.0.0.1")
        with pytest.raises(BypassError, match="not a testbed device address"):
            tb.verify(master_addr="10.99.0.1")
        # a shaper removed behind the testbed's back
        subprocess.run(["tc", "-n", tb.bridge_ns, "qdisc", "del", "dev", "p1", "root"], check=True)
        with pytest.raises(BypassError, match="p1: no tbf"):
            tb.verify()
        with pytest.raises(BypassError):
            tb.launch([PY, "-c", "print(1)"], timeout_s=30)
    with Testbed(2, 100, prefix="ptbyp") as tb:
        # both ends of device 1's link in its own namespace
        ns = tb.namespaces[1]
        subprocess.run(["ip", "-n", ns, "link", "del", "eth0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], check=True)
        with pytest.raises(BypassError, match="both ends"):
            tb.verify()
    assert _names("ptbyp") == []


# --------------------------------------------------------------------------- permissions

def test_netns_requested_without_root_is_a_clear_error(monkeypatch, capsys):
    from runtime.cli import main

    monkeypatch.setattr(tbm, "is_root", lambda: False)
    with pytest.raises(TestbedError, match="mode 'netns' needs root"):
        tbm.resolve_mode("netns")
    assert main(["testbed", "check", "--mode", "netns", "--bw", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: mode 'netns' needs root (ip netns add); use --testbed unshare")


def test_auto_without_root_or_userns_falls_back_to_loopback(monkeypatch, caplog):
    monkeypatch.setattr(tbm, "is_root", lambda: False)
    monkeypatch.setattr(tbm, "unshare_permitted", lambda: False)
    with caplog.at_level("WARNING", logger="runtime.testbed"):
        assert tbm.resolve_mode("auto") == "loopback"
    assert "LOOPBACK" in caplog.text and "unshaped" in caplog.text
    with pytest.raises(TestbedError, match="may not create user namespaces"):
        tbm.resolve_mode("unshare")


@pytest.mark.netns
@pytest.mark.skipif(not (_netns_ok() and shutil.which("nsenter") and tbm.unshare_permitted()),
                    reason="needs ip, tc, nsenter and user namespaces")
def test_unshare_mode_shapes_in_a_private_namespace():
    with Testbed(2, 100, mode="unshare", prefix="ptuns") as tb:
        assert tb.link["mode"] == "unshare"
        assert _names("ptuns") == []          # invisible from the host: private mount ns
        tb.verify()
        got = tb.measure_bw(seconds=0.5)
        holder = tb._holder
    assert abs(got - 100) / 100 < 0.05, got
    assert holder.poll() is not None          # the namespaces went with their holder
