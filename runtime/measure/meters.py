"""Energy meters: measured energy where a sensor exists (jtop, INA3221 rails, RAPL).

    meter = open_meter("auto")            # jtop, ina3221, rapl, else none
    with meter:
        run_batch()
    meter.energy_j                        # joules, or None when there is no sensor

A measurement and an estimate never stand in for each other: with no sensor `energy_j`
is None (never 0); the labelled model estimate (costmodel.power.estimate_energy_j)
travels separately (perf map fields `energy_j`, `energy_est_j`, `energy_source`,
`energy_model`). Torch-free. Units: joules (J), watts (W), seconds for clocks and periods.
"""
from __future__ import annotations

import glob
import math
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

KINDS = ("auto", "jtop", "ina3221", "rapl", "none")
AUTO_ORDER = ("jtop", "ina3221", "rapl")
# Rails that already are the whole board: summing them with their sub-rails double counts.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")


class MeterUnavailable(RuntimeError):
    """The requested sensor is missing or unreadable on this machine."""


class Meter:
    """Energy over an interval, in joules. The "none" meter: `stop()` returns None.

    `start()`, work, `stop() -> J | None`; or `with meter: ...` then `meter.energy_j`.
    `source` is the perf map's `energy_source`; `detail` says what was read (or why not).
    """

    source = "none"

    def __init__(self, detail: str = ""):
        self.detail = detail
        self.energy_j: Optional[float] = None
        self._running = False

    def start(self) -> None:
        if self._running:
            raise RuntimeError(f"{self.source} meter: start() called twice without stop()")
        self.energy_j = None
        self._begin()
        self._running = True

    def stop(self) -> Optional[float]:
        """Energy since `start()`, in joules; None when there is no sensor."""
        if not self._running:
            raise RuntimeError(f"{self.source} meter: stop() called before start()")
        self._running = False
        self.energy_j = self._end()
        return self.energy_j

    def close(self) -> None:
        """Release the sensor (the jtop connection); the meter is unusable afterwards."""

    def __enter__(self) -> "Meter":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._running:
            self.stop()

    def _begin(self) -> None:
        pass

    def _end(self) -> Optional[float]:
        return None


def trapezoid_j(samples: Sequence[Tuple[float, float]]) -> float:
    """Integral of (time s, power W) samples by the trapezoid rule, in joules."""
    return sum((p0 + p1) / 2.0 * (t1 - t0) for (t0, p0), (t1, p1) in zip(samples, samples[1:]))


class SamplingMeter(Meter):
    """Integrates a power reading, in watts, sampled every `period_s` seconds.

    Samples are taken at start, at stop and from a background thread in between.
    `period_s=0` runs no thread (samples at start, stop and explicit `sample()` calls),
    which with a fake `clock` replays a power trace deterministically in tests.
    """

    def __init__(self, read_w: Callable[[], float], source: str, *, period_s: float = 0.02,
                 clock: Callable[[], float] = time.monotonic, detail: str = "",
                 on_close: Optional[Callable[[], None]] = None):
        if not (period_s >= 0 and math.isfinite(period_s)):
            raise ValueError(f"period_s={period_s}; must be a finite number of seconds >= 0")
        super().__init__(detail)
        self.source, self.period_s, self._read_w, self._clock = source, period_s, read_w, clock
        self._on_close = on_close
        self.samples: List[Tuple[float, float]] = []
        self.read_errors = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def sample(self) -> None:
        """Read the power now and append (time s, power W)."""
        t, p = self._clock(), float(self._read_w())
        with self._lock:
            self.samples.append((t, p))

    def _loop(self) -> None:
        while not self._halt.wait(self.period_s):
            try:
                self.sample()
            except (OSError, ValueError, KeyError):
                self.read_errors += 1  # one bad read loses one sample, not the interval

    def _begin(self) -> None:
        self.samples, self.read_errors = [], 0
        self.sample()
        if self.period_s > 0:
            self._halt.clear()
            self._thread = threading.Thread(target=self._loop, name=f"{self.source}-meter",
                                            daemon=True)
            self._thread.start()

    def _end(self) -> float:
        if self._thread is not None:
            self._halt.set()
            self._thread.join()
            self._thread = None
        self.sample()
        with self._lock:
            return trapezoid_j(sorted(self.samples))

    def close(self) -> None:
        if self._running:
            self.stop()
        if self._on_close is not None:
            self._on_close()


# ---- jetson-stats (jtop) -------------------------------------------------------------

def _open_jtop(period_s: float, clock, jtop_interval_s: Optional[float] = None, **_) -> Meter:
    try:
        from jtop import jtop  # optional: jetson-stats exists only on Jetson boards
    except ImportError as e:
        raise MeterUnavailable("meter 'jtop' needs jetson-stats (pip install jetson-stats) "
                               "and its jtop service running") from e
    jetson = jtop(interval=jtop_interval_s) if jtop_interval_s else jtop()
    try:
        jetson.start()
        float(jetson.power["tot"]["power"])
    except Exception as e:  # jtop raises its own JtopException when the service is down
        try:
            jetson.close()
        except Exception:
            pass
        raise MeterUnavailable(f"jtop is installed but not usable: {e}") from e

    def read_w() -> float:
        return float(jetson.power["tot"]["power"]) / 1000.0  # jtop reports mW

    return SamplingMeter(read_w, "jtop", period_s=period_s, clock=clock,
                         detail="jtop power['tot']", on_close=jetson.close)


# ---- INA3221 rails in sysfs ----------------------------------------------------------

def _read_num(path: str) -> float:
    with open(path) as f:
        return float(f.read().strip())


def _read_text(path: str, default: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or default
    except OSError:
        return default


def find_ina3221_rails(sysfs_root: str = "/") -> Dict[str, Callable[[], float]]:
    """INA3221 rails under `sysfs_root`: label -> reader returning watts.

    Layouts: hwmon (`name` is ina3221; `in{N}_label`, `in{N}_input` mV, `curr{N}_input` mA),
    as /sys/class/hwmon/hwmon* or the Orin /sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*;
    and the older ina3221x iio layout (`rail_name_{N}`, `in_power{N}_input` mW).
    """
    sys_dir = os.path.join(sysfs_root, "sys")
    rails: Dict[str, Callable[[], float]] = {}

    def add(label: str, where: str, fn: Callable[[], float]) -> None:
        try:
            fn()  # a disabled channel fails here, not in the middle of a measurement
        except (OSError, ValueError):
            return
        rails[f"{label}@{where}" if label in rails else label] = fn

    hwmon = glob.glob(os.path.join(sys_dir, "class/hwmon/hwmon*")) + \
        glob.glob(os.path.join(sys_dir, "bus/i2c/drivers/ina3221/*/hwmon/hwmon*"))
    seen = set()
    for d in sorted(hwmon):
        real = os.path.realpath(d)
        if real in seen or _read_text(os.path.join(d, "name"), "") != "ina3221":
            continue
        seen.add(real)
        for lab in sorted(glob.glob(os.path.join(d, "in*_label"))):
            n = re.fullmatch(r"in(\d+)_label", os.path.basename(lab)).group(1)
            mv, ma = os.path.join(d, f"in{n}_input"), os.path.join(d, f"curr{n}_input")
            if _read_text(os.path.join(d, f"in{n}_enable"), "1") == "0":
                continue
            add(_read_text(lab, f"in{n}"), d,
                lambda mv=mv, ma=ma: _read_num(mv) * _read_num(ma) / 1e6)
    for d in sorted(glob.glob(os.path.join(sys_dir, "bus/i2c/drivers/ina3221x/*/iio:device*"))):
        for pw in sorted(glob.glob(os.path.join(d, "in_power*_input"))):
            n = re.fullmatch(r"in_power(\d+)_input", os.path.basename(pw)).group(1)
            add(_read_text(os.path.join(d, f"rail_name_{n}"), f"in_power{n}"), d,
                lambda pw=pw: _read_num(pw) / 1e3)
    return rails


def _open_ina3221(period_s: float, clock, sysfs_root: str = "/",
                  rails: Optional[Sequence[str]] = None, **_) -> Meter:
    found = find_ina3221_rails(sysfs_root)
    if not found:
        raise MeterUnavailable(f"no readable INA3221 rails under {sysfs_root!r} (looked for hwmon "
                               "name 'ina3221' and sys/bus/i2c/drivers/ina3221x/*/iio:device*)")
    if rails is None:
        total = [r for r in TOTAL_RAILS if r in found]
        rails = total[:1] or sorted(found)  # sum of all rails only when no board-input rail
    missing = [r for r in rails if r not in found]
    if missing:
        raise MeterUnavailable(f"INA3221 rails {missing} not found; available: {sorted(found)}")
    readers = [found[r] for r in rails]
    m = SamplingMeter(lambda: sum(fn() for fn in readers), "ina3221", period_s=period_s,
                      clock=clock, detail="+".join(rails))
    m.rails = list(rails)
    return m


# ---- Linux powercap RAPL -------------------------------------------------------------

def rapl_delta_uj(start_uj: int, end_uj: int, max_range_uj: int) -> int:
    """Counter increase in microjoules, allowing one wraparound at `max_range_uj`."""
    return end_uj - start_uj if end_uj >= start_uj else max_range_uj - start_uj + end_uj


class RaplMeter(Meter):
    """Sum of the top-level powercap zones' `energy_uj` counters, in joules.

    Reads counters at start and stop only: an interval longer than one counter range
    (minutes to hours, depending on the CPU) would wrap more than once and be wrong.
    """

    source = "rapl"

    def __init__(self, zones: Sequence[str]):
        super().__init__(detail=",".join(os.path.basename(z) for z in zones))
        self.zones = list(zones)
        self._max = [int(_read_num(os.path.join(z, "max_energy_range_uj"))) for z in zones]
        self._e0: List[int] = []

    def _read(self) -> List[int]:
        return [int(_read_num(os.path.join(z, "energy_uj"))) for z in self.zones]

    def _begin(self) -> None:
        self._e0 = self._read()

    def _end(self) -> float:
        e1 = self._read()
        return sum(rapl_delta_uj(a, b, m) for a, b, m in zip(self._e0, e1, self._max)) / 1e6


def _open_rapl(sysfs_root: str = "/", **_) -> Meter:
    base = os.path.join(sysfs_root, "sys/class/powercap")
    # Top-level zones only: sub-zones (intel-rapl:0:0) are parts of their package, and
    # psys overlaps the packages.
    zones = [z for z in sorted(glob.glob(os.path.join(base, "intel-rapl:*")))
             if re.fullmatch(r"intel-rapl:\d+", os.path.basename(z))
             and _read_text(os.path.join(z, "name"), "") != "psys"]
    if not zones:
        raise MeterUnavailable(f"no RAPL zones under {base!r}")
    try:
        meter = RaplMeter(zones)
        meter._read()
    except PermissionError as e:
        raise MeterUnavailable(f"RAPL counters not readable ({e.filename}); they are "
                               "root-only on current kernels") from e
    except (OSError, ValueError) as e:
        raise MeterUnavailable(f"RAPL counters not readable: {e}") from e
    return meter


_OPENERS = {"jtop": _open_jtop, "ina3221": _open_ina3221, "rapl": _open_rapl}


def open_meter(kind: str = "auto", *, sysfs_root: str = "/", period_s: float = 0.02,
               rails: Optional[Sequence[str]] = None, jtop_interval_s: Optional[float] = None,
               clock: Callable[[], float] = time.monotonic) -> Meter:
    """A meter of energy in joules. kind: auto (jtop, ina3221, rapl, else none) or one of them.

    sysfs_root: where `sys/` lives (tests point it at synthetic rail files).
    period_s: seconds between power samples (jtop, ina3221); 0 samples only at start/stop.
    rails: INA3221 rail labels to sum (default: the board-input rail, else all rails).
    jtop_interval_s: refresh interval asked of jtop, in seconds (jtop's default if None).
    A kind named explicitly raises MeterUnavailable when its sensor is absent.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown meter kind {kind!r}; allowed: {', '.join(KINDS)}")
    if kind == "none":
        return Meter("requested")
    kw = dict(period_s=period_s, clock=clock, sysfs_root=sysfs_root, rails=rails,
              jtop_interval_s=jtop_interval_s)
    if kind != "auto":
        return _OPENERS[kind](**kw)
    why = []
    for k in AUTO_ORDER:
        try:
            return _OPENERS[k](**kw)
        except MeterUnavailable as e:
            why.append(f"{k}: {e}")
    return Meter("no sensor; " + "; ".join(why))
