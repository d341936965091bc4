"""Energy meters on synthetic sysfs trees, and the labelled power-model estimate.

Pure Python (no torch, no sensor needed): every reader is driven by rail files written
under tmp_path, and jtop by a fake module.
"""
import csv
import json
import os
import subprocess
import sys
import threading
import time
import types

import pytest

from costmodel.power import CPU_HOST, JETSON_ORIN_NANO, PowerModel, estimate_energy_j
from runtime.measure import meters as energy
from runtime.measure.meters import KINDS, MeterUnavailable, find_ina3221_rails, open_meter, rapl_delta_uj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, value):
    """Atomic write, as sysfs reads are: a reader never sees a half-written number."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{value}\n")
    os.replace(tmp, path)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def orin_ina3221(root, vdd_in_ma=1000, mv=5000):
    """Orin layout: /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3, VDD_IN is the total."""
    d = os.path.join(root, "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3")
    write(f"{d}/name", "ina3221")
    for n, (label, ma) in enumerate([("VDD_IN", vdd_in_ma), ("VDD_CPU_GPU_CV", 400),
                                     ("VDD_SOC", 300)], start=1):
        write(f"{d}/in{n}_label", label)
        write(f"{d}/in{n}_input", mv)
        write(f"{d}/curr{n}_input", ma)
    return d


def rapl_zone(root, name, energy_uj, max_uj=262143328850, label="package-0"):
    d = os.path.join(root, "sys/class/powercap", name)
    write(f"{d}/energy_uj", energy_uj)
    write(f"{d}/max_energy_range_uj", max_uj)
    write(f"{d}/name", label)
    return d


@pytest.fixture
def no_jtop(monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", None)  # import jtop -> ImportError


def fake_jtop(monkeypatch, power_mw=5000.0, start_error=None):
    state = {"mw": power_mw, "closed": False}

    class jtop:  # noqa: N801  (the real class name)
        def __init__(self, interval=None):
            self.interval = interval

        def start(self):
            if start_error:
                raise start_error

        @property
        def power(self):
            return {"rail": {}, "tot": {"power": state["mw"]}}

        def close(self):
            state["closed"] = True

    monkeypatch.setitem(sys.modules, "jtop", types.SimpleNamespace(jtop=jtop))
    return state


# ---- INA3221 ----------------------------------------------------------------------

def test_ina3221_orin_layout_integrates_trapezoid(tmp_path, no_jtop):
    d = orin_ina3221(tmp_path, vdd_in_ma=1000)                      # 5 V x 1 A = 5 W
    clock = FakeClock()
    m = open_meter("ina3221", sysfs_root=str(tmp_path), period_s=0, clock=clock)
    assert (m.source, m.rails) == ("ina3221", ["VDD_IN"])          # total rail, no double count
    m.start()
    write(f"{d}/curr1_input", 2000)                                 # 10 W from t=0+
    clock.t = 1.0
    m.sample()
    clock.t = 2.0
    assert m.stop() == pytest.approx((5 + 10) / 2 * 1 + 10 * 1)    # 17.5 J
    assert m.energy_j == pytest.approx(17.5)


def test_ina3221_background_thread_follows_changing_rail(tmp_path, no_jtop):
    d = orin_ina3221(tmp_path, vdd_in_ma=1000)                      # 5 W
    m = open_meter("ina3221", sysfs_root=str(tmp_path), period_s=0.002)
    switch = {}

    def writer():
        time.sleep(0.15)
        before = time.monotonic()
        write(f"{d}/curr1_input", 3000)                             # 15 W
        switch["t"] = (before + time.monotonic()) / 2

    t0 = time.monotonic()
    with m:
        th = threading.Thread(target=writer)
        th.start()
        th.join()
        time.sleep(0.15)
    t1 = time.monotonic()
    expected = 5 * (switch["t"] - t0) + 15 * (t1 - switch["t"])
    assert len(m.samples) > 20
    assert m.energy_j == pytest.approx(expected, rel=0.15)


def test_ina3221_old_iio_layout_mw(tmp_path, no_jtop):
    d = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for n, (name, mw) in enumerate([("POM_5V_IN", 4000), ("POM_5V_GPU", 900),
                                    ("POM_5V_CPU", 700)]):
        write(f"{d}/rail_name_{n}", name)
        write(f"{d}/in_power{n}_input", mw)
    rails = find_ina3221_rails(str(tmp_path))
    assert sorted(rails) == ["POM_5V_CPU", "POM_5V_GPU", "POM_5V_IN"]
    assert rails["POM_5V_IN"]() == pytest.approx(4.0)
    clock = FakeClock()
    m = open_meter("ina3221", sysfs_root=str(tmp_path), period_s=0, clock=clock)
    assert m.rails == ["POM_5V_IN"]
    m.start()
    clock.t = 0.5
    assert m.stop() == pytest.approx(2.0)


def test_ina3221_class_hwmon_without_total_sums_rails_and_skips_others(tmp_path, no_jtop):
    other = tmp_path / "sys/class/hwmon/hwmon0"
    write(f"{other}/name", "coretemp")
    write(f"{other}/in1_label", "NOT_A_RAIL")
    d = tmp_path / "sys/class/hwmon/hwmon1"
    write(f"{d}/name", "ina3221")
    for n, (label, ma) in enumerate([("VDD_GPU", 1000), ("VDD_CPU", 500), ("OFF", 1)], 1):
        write(f"{d}/in{n}_label", label)
        write(f"{d}/in{n}_input", 1000)
        write(f"{d}/curr{n}_input", ma)
    write(f"{d}/in3_enable", 0)                                     # disabled channel
    assert sorted(find_ina3221_rails(str(tmp_path))) == ["VDD_CPU", "VDD_GPU"]
    clock = FakeClock()
    m = open_meter("ina3221", sysfs_root=str(tmp_path), period_s=0, clock=clock)
    assert m.rails == ["VDD_CPU", "VDD_GPU"]
    m.start()
    clock.t = 2.0
    assert m.stop() == pytest.approx(3.0)                           # (1 W + 0.5 W) x 2 s
    one = open_meter("ina3221", sysfs_root=str(tmp_path), rails=["VDD_CPU"], period_s=0)
    assert one.rails == ["VDD_CPU"]
    with pytest.raises(MeterUnavailable, match="available: \\['VDD_CPU', 'VDD_GPU'\\]"):
        open_meter("ina3221", sysfs_root=str(tmp_path), rails=["VDD_IN"])


def test_ina3221_requested_but_absent(tmp_path):
    with pytest.raises(MeterUnavailable, match="no readable INA3221 rails"):
        open_meter("ina3221", sysfs_root=str(tmp_path))


# ---- RAPL -------------------------------------------------------------------------

def test_rapl_delta_wraps_once():
    assert rapl_delta_uj(100, 350, 1000) == 250
    assert rapl_delta_uj(900, 50, 1000) == 150


def test_rapl_sums_packages_with_wraparound_ignoring_subzones(tmp_path, no_jtop):
    z0 = rapl_zone(tmp_path, "intel-rapl:0", 999_000_000, max_uj=1_000_000_000)
    z1 = rapl_zone(tmp_path, "intel-rapl:1", 10_000_000, label="package-1")
    sub = rapl_zone(tmp_path, "intel-rapl:0:0", 0, label="core")
    psys = rapl_zone(tmp_path, "intel-rapl:2", 0, label="psys")
    m = open_meter("rapl", sysfs_root=str(tmp_path))
    assert m.source == "rapl" and m.detail == "intel-rapl:0,intel-rapl:1"
    with m:
        write(f"{z0}/energy_uj", 1_000_000)                          # wrapped: +2 J
        write(f"{z1}/energy_uj", 15_000_000)                         # +5 J
        write(f"{sub}/energy_uj", 99_000_000)                        # part of package 0
        write(f"{psys}/energy_uj", 99_000_000)                       # overlaps packages
    assert m.energy_j == pytest.approx(7.0)


def test_rapl_unreadable_counter_is_unavailable(tmp_path, monkeypatch):
    rapl_zone(tmp_path, "intel-rapl:0", 5)

    def denied(self):
        raise PermissionError(13, "Permission denied", "energy_uj")

    monkeypatch.setattr(energy.RaplMeter, "_read", denied)
    with pytest.raises(MeterUnavailable, match="root-only"):
        open_meter("rapl", sysfs_root=str(tmp_path))


# ---- none, jtop, auto, bad kind -----------------------------------------------------

def test_none_gives_none_never_zero():
    m = open_meter("none")
    assert m.source == "none"
    m.start()
    assert m.stop() is None
    with m:
        pass
    assert m.energy_j is None


def test_meter_misuse_is_an_error():
    m = open_meter("none")
    with pytest.raises(RuntimeError, match="before start"):
        m.stop()
    m.start()
    with pytest.raises(RuntimeError, match="twice"):
        m.start()


def test_jtop_reads_total_power_in_mw(monkeypatch):
    state = fake_jtop(monkeypatch, power_mw=6300.0)
    clock = FakeClock()
    m = open_meter("jtop", period_s=0, clock=clock)
    assert m.source == "jtop"
    m.start()
    clock.t = 0.0807
    assert m.stop() == pytest.approx(6.3 * 0.0807)
    m.close()
    assert state["closed"]


def test_jtop_requested_but_missing_is_clear(no_jtop):
    with pytest.raises(MeterUnavailable, match="jetson-stats"):
        open_meter("jtop")


@pytest.mark.parametrize("present, expected", [
    ((), "none"),
    (("rapl",), "rapl"),
    (("rapl", "ina3221"), "ina3221"),
    (("rapl", "ina3221", "jtop"), "jtop"),
    (("rapl", "ina3221", "broken-jtop"), "ina3221"),
])
def test_auto_order_jtop_ina3221_rapl_none(tmp_path, monkeypatch, present, expected):
    monkeypatch.setitem(sys.modules, "jtop", None)
    if "rapl" in present:
        rapl_zone(tmp_path, "intel-rapl:0", 5)
    if "ina3221" in present:
        orin_ina3221(tmp_path)
    if "jtop" in present:
        fake_jtop(monkeypatch)
    if "broken-jtop" in present:
        fake_jtop(monkeypatch, start_error=RuntimeError("jtop.service is not active"))
    m = open_meter("auto", sysfs_root=str(tmp_path), period_s=0)
    assert m.source == expected
    if expected == "none":
        assert "jtop:" in m.detail and "ina3221:" in m.detail and "rapl:" in m.detail


def test_bad_kind_one_line_naming_allowed():
    with pytest.raises(ValueError) as e:
        open_meter("nvml")
    msg = str(e.value)
    assert "\n" not in msg and "'nvml'" in msg
    assert all(k in msg for k in KINDS)


# ---- estimate -----------------------------------------------------------------------

def test_estimate_positive_labelled_and_by_formula():
    j, label = estimate_energy_j({"compute_ms": 80.6, "wall_ms": 80.6}, world_size=1)
    assert j > 0 and label == JETSON_ORIN_NANO.name == "jetson-orin-nano-table4"
    phases = {"compute_ms": 100.0, "staging_ms": 20.0, "comm_ms": 30.0, "wall_ms": 160.0}
    j, label = estimate_energy_j(phases, world_size=2, model=CPU_HOST)
    want = 2 * (8.0 * 0.100 + 8.0 * 0.020 + 4.0 * 0.030) + 2.0 * 2 * 0.160
    assert (j, label) == (pytest.approx(want), "cpu-host-assumed")
    assert CPU_HOST.assumed and not JETSON_ORIN_NANO.assumed


def test_estimate_per_rank_lists_and_default_wall():
    m = PowerModel("t", compute_w=1.0, staging_w=0.0, comm_w=0.0, idle_w=1.0, basis="test")
    j, _ = estimate_energy_j({"compute_ms": [100.0, 300.0]}, world_size=2, model=m)
    assert j == pytest.approx((0.1 + 0.3) + 1.0 * 2 * 0.3)         # wall = slowest rank


@pytest.mark.parametrize("phases, world_size, match", [
    ({"latency_ms": 1.0}, 1, "unknown phase keys"),
    ({"compute_ms": -1.0}, 1, "compute_ms=-1.0"),
    ({"compute_ms": [1.0]}, 2, "2 numbers"),
    ({"compute_ms": 1.0, "wall_ms": float("nan")}, 1, "wall_ms"),
    ({"compute_ms": 1.0}, 0, "world_size=0"),
])
def test_estimate_bad_input(phases, world_size, match):
    with pytest.raises(ValueError, match=match):
        estimate_energy_j(phases, world_size)


def test_power_models_json_round_trip_and_validation():
    for m in (JETSON_ORIN_NANO, CPU_HOST):
        assert PowerModel.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    with pytest.raises(ValueError, match="idle_w=-1"):
        PowerModel("bad", compute_w=1, staging_w=0, comm_w=0, idle_w=-1, basis="x")


def _paper_rows():
    d = os.path.join(ROOT, "data/jetson-orin-nano")
    t2 = {(r["strategy"], int(r["batch"])): r
          for r in csv.DictReader(open(os.path.join(d, "latency_breakdown.csv")))}
    for r in csv.DictReader(open(os.path.join(d, "adaptive_vs_voltage.csv"))):
        mode, b = r["prism_adaptive_mode"], int(r["batch"])
        yield mode, (1 if mode == "single" else 2), t2[(mode, b)], \
            float(r["prism_adaptive_energy_j"])


def test_jetson_model_is_the_table4_fit():
    """docs/energy.md: compute_w = least squares (through 0) of Table 4 energy on
    devices x Table 2 compute time, over the single and Prism rows."""
    rows = list(_paper_rows())
    a = [n * float(t2["compute_ms"]) / 1e3 for _, n, t2, _ in rows]
    e = [j for *_, j in rows]
    fit = sum(x * y for x, y in zip(a, e)) / sum(x * x for x in a)
    assert JETSON_ORIN_NANO.compute_w == pytest.approx(fit, abs=0.005)
    for mode, n, t2, j in rows:                                     # every fitted row within 15 %
        phases = {k: float(t2[k]) for k in ("compute_ms", "staging_ms", "comm_ms")}
        est, _ = estimate_energy_j({**phases, "wall_ms": float(t2["total_ms"])}, n)
        assert est == pytest.approx(j, rel=0.15), (mode, t2["batch"])


def test_energy_module_imports_without_torch():
    code = ("import sys, importlib.util as u; sys.modules['torch'] = None; "
            "s = u.spec_from_file_location('energy_alone', 'runtime/measure/meters.py'); "
            "m = u.module_from_spec(s); sys.modules['energy_alone'] = m; "
            "s.loader.exec_module(m); print(m.open_meter('none').source)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"
