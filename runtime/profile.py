"""Profiling sweeps on the emulated network -> a perf map (docs/perfmap.md).

    python -m runtime profile --model vit_tiny_patch16_224 --strategy single,voltage,prism \\
        --batch 1,2,4 --bw 200,500 --cr 3.3,9.9 --img-size 96,224 --world-size 2 \\
        --out data/perfmaps/x.json

Speed: ranks are started once per group (model, world_size, bw), not per
configuration. The parent sets the rate with tc, measures it with a bulk transfer, then
launches `python -m runtime profile-worker --plan PLAN.json` in the namespaces; the
ranks build the model once per img_size and loop over the group's (img_size, strategy,
cr, batch), printing one JSON row per configuration on rank 0's stdout. `single` is
measured once per (model, img_size, batch) on one process, outside the emulated network.

Durability: every row is appended to a JSONL file (flush + fsync) as soon as it is
measured, keyed by its configuration. A restarted sweep skips keys already present,
tolerates a torn last line (a SIGKILL mid-write), and so neither loses nor duplicates
rows. The perf map is written at the end, atomically, from the JSONL file.

A configuration that fails becomes a row with its `error`; the sweep goes on.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Optional

from .energy import PHASE_KEYS

log = logging.getLogger("runtime.profile")

RAW_KIND = "prism-edge.perfmap.raw"
RAW_SCHEMA_VERSION = 1
DEFAULT_CRS = (3.3, 4.95, 9.9)


# --------------------------------------------------------------------------- the sweep

ORDERS = ("grid", "shuffled")           # SweepSpec.order: how each pass orders its configurations


@dataclass(frozen=True)
class SweepSpec:
    """A resolved profiling sweep. bw in Mbit/s; img_size sets the token count
    seq_len = (img_size / patch)^2 + 1; world_size lists P for the distributed
    strategies (single always runs on one device)."""

    models: tuple = ("vit_tiny_patch16_224",)
    strategies: tuple = ("single", "voltage", "prism")
    batches: tuple = (1,)
    bws: tuple = (300.0,)
    crs: tuple = DEFAULT_CRS
    img_sizes: tuple = (224,)
    world_sizes: tuple = (2,)
    depth: Optional[int] = None
    patch_size: Optional[int] = None
    exchange: str = "pairwise"
    warmup: int = 1
    repeats: int = 5
    max_repeats: Optional[int] = None     # adaptive: repeat past `repeats` until the median is precise
    target_rel_se: float = 0.02           # ... to this robust relative standard error
    repeat_budget_s: float = 20.0         # ... or this many seconds of repeats per configuration
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    delay_ms: float = 0.0
    testbed: str = "auto"
    timeout_s: float = 120.0
    blocks: bool = False
    meter: str = "auto"
    power_model: str = "cpu-host-assumed"
    passes: int = 1                       # the whole grid, measured this many times in turn
    order: str = "grid"                   # "shuffled": each pass in its own seeded random order

    def __post_init__(self):
        from .strategies import list_strategies
        from .exchange import EXCHANGES
        from .testbed import MODES

        def need(cond, msg):
            if not cond:
                raise ValueError(msg)

        for axis in ("models", "strategies", "batches", "img_sizes"):
            need(len(getattr(self, axis)) > 0, f"{axis} is empty; give at least one value")
        known = list_strategies()
        for s in self.strategies:
            need(s in known, f"unknown strategy {s!r}; known: {known}")
        need(len(set(self.strategies)) == len(self.strategies), f"strategy repeated in {list(self.strategies)}")
        for b in self.batches:
            need(isinstance(b, int) and not isinstance(b, bool) and b >= 1, f"batch={b!r} must be an integer >= 1")
        for bw in self.bws:
            need(isinstance(bw, (int, float)) and math.isfinite(bw) and bw > 0, f"bw={bw} Mbit/s must be > 0")
        for cr in self.crs:
            need(isinstance(cr, (int, float)) and math.isfinite(cr) and cr >= 1, f"cr={cr} must be >= 1")
        for p in self.world_sizes:
            need(isinstance(p, int) and p >= 2, f"world_size={p} must be an integer >= 2 "
                                               "(single runs on one device by itself)")
        for i in self.img_sizes:
            need(isinstance(i, int) and i >= 1, f"img_size={i} must be a positive integer")
        if any(s != "single" for s in self.strategies):
            need(len(self.bws) > 0, "bw is empty; the distributed strategies need at least one rate")
            need(len(self.world_sizes) > 0, "world_size is empty; the distributed strategies need P >= 2")
        if "prism" in self.strategies:
            need(len(self.crs) > 0, "prism needs at least one cr")
        need(self.exchange in EXCHANGES, f"unknown exchange {self.exchange!r}; known: {list(EXCHANGES)}")
        need(self.warmup >= 0 and self.repeats >= 1, f"warmup={self.warmup} must be >= 0 and repeats={self.repeats} >= 1")
        need(self.max_repeats is None or self.max_repeats >= self.repeats,
             f"max_repeats={self.max_repeats} must be >= repeats={self.repeats}")
        need(0 < self.target_rel_se < 1, f"target_rel_se={self.target_rel_se} must be in (0, 1)")
        need(self.repeat_budget_s > 0, f"repeat_budget_s={self.repeat_budget_s} must be > 0")
        need(isinstance(self.passes, int) and not isinstance(self.passes, bool) and self.passes >= 1,
             f"passes={self.passes!r} must be an integer >= 1")
        need(self.order in ORDERS, f"order={self.order!r}; allowed: {', '.join(ORDERS)}")
        need(self.testbed in MODES, f"unknown testbed mode {self.testbed!r}; allowed: {list(MODES)}")
        need(self.delay_ms >= 0, f"delay={self.delay_ms} ms must be >= 0")
        need(self.timeout_s > 0, f"timeout={self.timeout_s} s must be > 0")
        need(self.device == "cpu" or self.device.startswith("cuda"),
             f"device={self.device!r}; allowed: cpu, cuda, cuda:N")

    def protocol(self) -> dict:
        """What must not change between a sweep and its resumption."""
        p = {"warmup": self.warmup, "repeats": self.repeats, "statistic": "median",
             "threads_per_rank": self.threads, "exchange": self.exchange, "seed": self.seed,
             "device": self.device, "depth": self.depth, "patch_size": self.patch_size,
             "delay_ms": self.delay_ms}
        if self.max_repeats is not None and self.max_repeats > self.repeats:
            p.update(max_repeats=self.max_repeats, target_rel_se=self.target_rel_se,
                     repeat_budget_s=self.repeat_budget_s,
                     repeats_rule="at least `repeats`; more until the median's robust relative "
                                  "standard error <= target_rel_se, or max_repeats, or the budget")
        if self.order != "grid":
            p.update(order=self.order, order_rule="each pass runs its rates, its groups and the "
                                                  "configurations of each group in a random order "
                                                  "seeded by (seed, pass)")
        return p


@dataclass(frozen=True)
class Config:
    """One measured configuration (a perf-map record)."""

    model: str
    img_size: int
    world_size: int
    bw: Optional[float]
    strategy: str
    batch: int
    cr: Optional[float]
    pass_no: int = 1      # --passes: the grid's pass this measurement belongs to

    @property
    def base_key(self) -> str:
        """The configuration, whatever the pass: the perf-map record's key."""
        bw = "none" if self.bw is None else f"{self.bw:g}"
        cr = "none" if self.cr is None else f"{self.cr:g}"
        return (f"{self.model}/img{self.img_size}/P{self.world_size}/bw{bw}/{self.strategy}"
                f"/cr{cr}/B{self.batch}")

    @property
    def key(self) -> str:
        """The raw-log row's key: the base key, with `#passK` from the second pass on."""
        return self.base_key if self.pass_no == 1 else f"{self.base_key}#pass{self.pass_no}"

    @property
    def group(self) -> tuple:
        return (self.model, self.world_size, self.bw)


def model_shape(spec: SweepSpec, model: str, img_size: int):
    """formulas.ModelShape of a model at an img_size (meta device: no weights)."""
    return _shape(model, img_size, spec.patch_size, spec.depth)


@functools.lru_cache(maxsize=256)
def _shape(model: str, img_size: int, patch_size, depth):
    import torch

    from .models import ModelSpec, build_adapter

    ms = ModelSpec(model, img_size=img_size, patch_size=patch_size, depth=depth)
    with torch.device("meta"):
        return build_adapter(ms, device="meta").shape


def expand(spec: SweepSpec, *, shaped: bool = True) -> list:
    """Every configuration of the sweep, in run order: single first, then by world_size,
    bw, model, img_size, and within a group by strategy, cr, batch. Validates each
    (model, img_size, world_size, cr) against the token count; raises ValueError."""
    from costmodel.formulas import make_plan

    shapes = {}
    for m in spec.models:
        for i in spec.img_sizes:
            try:
                shapes[(m, i)] = model_shape(spec, m, i)
            except (ValueError, TypeError, RuntimeError) as e:
                raise ValueError(f"model {m!r} at img_size={i}: {e}") from None
    out = []
    if "single" in spec.strategies:
        for m in spec.models:
            for i in spec.img_sizes:
                out += [Config(m, i, 1, None, "single", b, None) for b in spec.batches]
    dist = [s for s in spec.strategies if s != "single"]
    if not dist:
        return out
    bws = spec.bws if shaped else (None,)
    for p in spec.world_sizes:
        for bw in bws:
            for m in spec.models:
                for i in spec.img_sizes:
                    sh = shapes[(m, i)]
                    for s in dist:
                        crs = spec.crs if s == "prism" else (None,)
                        for cr in crs:
                            try:
                                make_plan(s, sh, world_size=p, batch=1, cr=cr, exchange=spec.exchange)
                            except ValueError as e:
                                raise ValueError(f"{s} on {m} img_size={i} (seq_len={sh.seq_len}) "
                                                 f"at world_size={p}: {e}") from None
                            out += [Config(m, i, p, bw, s, b, cr) for b in spec.batches]
    return _with_passes(out, spec.passes)


def _orderer(spec: SweepSpec, pass_no: int):
    """items -> items in this pass's order: unchanged for order "grid", else a copy
    shuffled by a generator seeded with (spec.seed, pass_no) (reproducible)."""
    import random

    if spec.order == "grid":
        return list
    rng = random.Random(f"{spec.seed}/pass{pass_no}")

    def shuffled(items):
        items = list(items)
        rng.shuffle(items)
        return items
    return shuffled


def _with_passes(configs: list, passes: int) -> list:
    """The grid again for passes 2..K, after the whole first pass (so that a slow drift
    of the host falls on different configurations in each pass, not on one)."""
    from dataclasses import replace

    return configs + [replace(c, pass_no=k) for k in range(2, passes + 1) for c in configs]


def combine_passes(rows: list) -> dict:
    """One perf-map record from the rows of one configuration's passes: latency median
    = the median of the passes' medians (p10 / p90 over every repeat of every pass),
    phases and energy = medians over passes, `passes` = each pass's latency median and
    their spread, and each pass's phase times (compute_ms / staging_ms / comm_ms lists,
    for the per-phase floor in costmodel/noise.py). Rows with an error are left out while
    at least one pass measured."""
    import numpy as np

    good = [r for r in rows if not r.get("error")]
    if len(rows) == 1 or not good:
        out = dict(rows[-1])
        out["key"] = out["key"].split("#pass")[0]
        return out
    meds = [r["latency_ms"]["median"] for r in good]
    med = float(statistics.median(meds))
    rep = min(good, key=lambda r: abs(r["latency_ms"]["median"] - med))   # ranks, blocks, link
    out = dict(rep)
    out["key"] = rep["key"].split("#pass")[0]
    samples = [v for r in good for v in r["latency_ms"]["samples"]]
    p10, p90 = np.percentile(samples, [10, 90])          # as run_group does for one pass
    out["latency_ms"] = {"median": med, "p10": float(p10), "p90": float(p90), "n": len(samples),
                         "samples": samples}
    out["per_sample_ms"] = med / rep["batch"]
    for k in PHASE_KEYS:
        out[k] = float(statistics.median(r[k] for r in good))
    for k in ("energy_j", "energy_est_j"):
        vals = [r.get(k) for r in good]
        out[k] = float(statistics.median(vals)) if all(v is not None for v in vals) else None
    out["wall_s"] = round(sum(r.get("wall_s", 0.0) for r in rows), 4)
    foreign = [r["host_foreign_cpu_pct"] for r in good if r.get("host_foreign_cpu_pct") is not None]
    if foreign:
        out["host_foreign_cpu_pct"] = max(foreign)
    out["passes"] = {"n": len(good), "n_errors": len(rows) - len(good),
                     "latency_median_ms": [round(m, 4) for m in meds],
                     "spread_pct": round((max(meds) / min(meds) - 1) * 100, 2),
                     **{k: [None if r.get(k) is None else round(r[k], 4) for r in good] for k in PHASE_KEYS}}
    return out


# --------------------------------------------------------------------------- raw JSONL

class RawLog:
    """Append-only JSONL of measured rows: a header line, then one row per line.

    Every append is flushed and fsynced. On open, a torn last line (writer killed mid
    line) is cut off so the next append starts on a fresh line; rows are keyed by
    `key` and the last row of a key wins."""

    def __init__(self, path: str, protocol: dict):
        self.path, self.protocol = path, protocol
        self.rows: dict = {}
        self.header: Optional[dict] = None
        self._f = None
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        good_end = 0
        pos = 0
        torn = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:                      # no newline: the writer died mid line
                torn += 1
                break
            line = data[pos:nl]
            pos = nl + 1
            try:
                obj = json.loads(line)
            except ValueError:
                torn += 1                   # keep scanning: later lines are still good
                continue
            good_end = pos
            if obj.get("kind") == RAW_KIND:
                self.header = obj
            elif isinstance(obj, dict) and "key" in obj:
                self.rows[obj["key"]] = obj
        if torn:
            log.warning("raw log %s: dropped %d torn line(s) (a killed writer)", self.path, torn)
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        if self.header is not None and self.header.get("protocol") != self.protocol:
            raise ValueError(f"raw log {self.path} was started with protocol {self.header.get('protocol')}, "
                             f"not {self.protocol}; use the same settings or another --raw file")

    def append(self, row: dict) -> None:
        if self._f is None:
            d = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(d, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
            if self.header is None:
                self.header = {"kind": RAW_KIND, "schema_version": RAW_SCHEMA_VERSION,
                               "protocol": self.protocol, "created": _now()}
                self._write(self.header)
        self._write(row)
        self.rows[row["key"]] = row

    def _write(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, allow_nan=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# --------------------------------------------------------------------------- worker (ranks)

def _die_with_parent() -> None:
    """A rank dies when the sweep process dies (even by SIGKILL): no orphan keeps
    measuring, and a resumed sweep never races a leftover one."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)            # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)
    except Exception:  # noqa: BLE001 - not Linux: best effort
        pass


def _error_row(c: dict, plan_meta: dict, msg: str, seq_len=None) -> dict:
    return {"key": c["key"], "strategy": c["strategy"], "model": plan_meta["model"],
            "seq_len": seq_len, "img_size": c["img_size"],
            "world_size": plan_meta["world_size"], "batch": c["batch"],
            "cr": c.get("cr"), "cr_requested": c.get("cr"), "m": None,
            "exchange": plan_meta["exchange"], "partition": None, "latency_ms": None,
            "per_sample_ms": None, "compute_ms": None, "staging_ms": None, "comm_ms": None,
            "comm_bytes": None, "staged_bytes": None, "energy_j": None, "energy_est_j": None,
            "energy_source": "none", "energy_model": None, "error": msg}


def _energy_tools(plan: dict, rank: int):
    """(meter or None, estimator or None) — runtime.energy when installed."""
    try:
        from . import energy
    except ImportError:
        return None, None       # TODO(energy): runtime.energy not installed: energy fields stay null
    meter = None
    # one host: rank 0's meter already covers every rank; real devices: each its own
    if rank == 0 or plan.get("energy_scope") == "per-device":
        try:
            meter = energy.open_meter(plan.get("meter", "auto"))
        except Exception as e:  # noqa: BLE001 - an explicit meter that is absent: record none
            log.warning("energy meter %r unavailable: %s", plan.get("meter"), e)
    pm = energy.POWER_MODELS.get(plan.get("power_model", "cpu-host-assumed"))

    def estimate(phases: dict, ws: int):
        if pm is None:
            return None, None
        return energy.estimate_energy_j(phases, ws, model=pm)
    return meter, estimate


def _stop_repeating(lat: list, plan: dict, spent_s: float, rank: int, world_size: int) -> bool:
    """Adaptive repeats (plan max_repeats > repeats): stop once the median is precise
    enough — robust relative standard error 1.2533 * (IQR / 1.349) / sqrt(n) / median
    at most target_rel_se — or the extra-repeat time budget is spent. Rank 0 decides
    on its own wall times (they start together after a barrier) and tells the others."""
    import numpy as np
    import torch

    stop = 0
    if rank == 0:
        q1, med, q3 = np.percentile(lat, [25, 50, 75])
        se = 1.2533 * (q3 - q1) / 1.349 / math.sqrt(len(lat)) / med
        stop = int(se <= plan.get("target_rel_se", 0.02) or spent_s >= plan.get("repeat_budget_s", 20.0))
    if world_size > 1:
        t = torch.tensor([stop], dtype=torch.int64)
        torch.distributed.broadcast(t, src=0)
        stop = int(t.item())
    return bool(stop)


def _cpu_snapshot() -> Optional[tuple]:
    """(host user+nice jiffies from /proc/stat, this process's user jiffies, clock)."""
    try:
        with open("/proc/stat") as f:
            cpu = f.readline().split()
        host_user = int(cpu[1]) + int(cpu[2])
        return host_user, os.times().user * os.sysconf("SC_CLK_TCK"), time.monotonic()
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _cpu_delta(snap) -> Optional[dict]:
    now = _cpu_snapshot()
    if snap is None or now is None:
        return None
    return {"host_user": now[0] - snap[0], "own_user": now[1] - snap[1], "wall_s": now[2] - snap[2]}


def _foreign_cpu(every: list, plan: dict) -> Optional[float]:
    """User CPU that processes other than the ranks used on the host while this
    configuration was measured, in % of the host's cores (a contamination check for
    the one-host testbed; None on real multi-device runs)."""
    if plan.get("energy_scope") == "per-device":
        return None
    cpus = [r.get("cpu") for r in every]
    if any(c is None for c in cpus) or cpus[0]["wall_s"] <= 0:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    foreign = cpus[0]["host_user"] - sum(c["own_user"] for c in cpus)
    return round(max(0.0, foreign / tck / cpus[0]["wall_s"] / (os.cpu_count() or 1) * 100), 2)


def group_plan(spec: SweepSpec, model: str, world_size: int, configs: list, *,
               energy_scope: str = "host") -> dict:
    """The JSON plan the ranks of one group run (run_group): the spec's protocol and the
    group's configurations. energy_scope: "host" (rank 0's meter covers every rank, one
    host) or "per-device" (each rank reads its own; real boards)."""
    return {"model": model, "patch_size": spec.patch_size, "depth": spec.depth, "seed": spec.seed,
            "world_size": world_size, "exchange": spec.exchange, "warmup": spec.warmup,
            "repeats": spec.repeats, "max_repeats": spec.max_repeats,
            "target_rel_se": spec.target_rel_se, "repeat_budget_s": spec.repeat_budget_s,
            "timeout_s": spec.timeout_s, "device": spec.device, "threads": spec.threads,
            "blocks": spec.blocks, "meter": spec.meter, "power_model": spec.power_model,
            "energy_scope": energy_scope,
            "configs": [{"key": c.key, "img_size": c.img_size, "strategy": c.strategy,
                         "batch": c.batch, "cr": c.cr} for c in configs]}


def run_group(plan: dict, rank: int, world_size: int, emit) -> None:
    """Measure every configuration of one group on this rank; rank 0 calls emit(row)."""
    import numpy as np
    import torch

    from . import exchange as xch
    from .models import ModelSpec, build_adapter
    from .run import _median_timing
    from .strategies import DistContext, create_strategy

    torch.set_num_threads(plan.get("threads", 1))
    device = torch.device(plan.get("device", "cpu"))
    meter, estimate = _energy_tools(plan, rank)
    adapters, inputs = {}, {}
    warmup, repeats = plan["warmup"], plan["repeats"]
    for c in plan["configs"]:
        b, img = c["batch"], c["img_size"]
        if img not in adapters:          # one model per token count, weights from the seed
            adapters.clear()
            inputs.clear()
            adapters[img] = build_adapter(ModelSpec(plan["model"], img_size=img,
                                                    patch_size=plan.get("patch_size"),
                                                    depth=plan.get("depth"), seed=plan["seed"]), device)
        adapter = adapters[img]
        seq_len = adapter.shape.seq_len
        try:    # planning is deterministic: every rank fails the same way, no collective yet
            opts = {"cr": c["cr"]} if c["strategy"] == "prism" else {}
            ctx = DistContext(rank, world_size, device, plan["exchange"])
            runner = create_strategy(c["strategy"], **opts).apply(adapter, ctx, b)
        except (ValueError, TypeError) as e:
            if rank == 0:
                emit(_error_row(c, plan, f"{type(e).__name__}: {e}", seq_len))
            continue
        if b not in inputs:
            inputs[b] = adapter.make_inputs(b, plan["seed"], device)
        x = inputs[b]
        for _ in range(warmup):
            runner(x)
        lat, timings, res = [], [], None
        if meter is not None:
            meter.start()
        cpu0 = _cpu_snapshot()
        t_rep = time.perf_counter()
        while True:
            if world_size > 1:
                torch.distributed.barrier()
            t0 = time.perf_counter()
            res = runner(x)
            lat.append((time.perf_counter() - t0) * 1e3)
            timings.append(res.timing)
            if len(lat) >= max(repeats, plan.get("max_repeats") or repeats):
                break
            if len(lat) >= repeats and _stop_repeating(lat, plan, time.perf_counter() - t_rep,
                                                       rank, world_size):
                break
        n_rep = len(lat)
        joules = meter.stop() if meter is not None else None
        mine = {"rank": rank, "latency_ms": lat, "timing": _median_timing(timings),
                "joules": joules if joules is not None and joules > 0 else None,
                "cpu": _cpu_delta(cpu0)}
        every = xch.gather_json(mine, rank, world_size)
        if rank != 0:
            continue
        p = res.plan
        e2e = [max(r["latency_ms"][i] for r in every) for i in range(n_rep)]
        med = float(statistics.median(e2e))
        tot = every[0]["timing"]["totals"]
        row = {
            "key": c["key"], "strategy": c["strategy"], "model": plan["model"], "seq_len": seq_len,
            "img_size": img, "world_size": world_size, "batch": b, "cr": p.cr, "cr_requested": c.get("cr"),
            "m": p.m, "exchange": plan["exchange"], "partition": list(p.sizes),
            "latency_ms": {"median": med, "p10": float(np.percentile(e2e, 10)),
                           "p90": float(np.percentile(e2e, 90)), "n": len(e2e),
                           "samples": [round(v, 4) for v in e2e]},
            "per_sample_ms": med / b,
            "compute_ms": tot["compute_ms"], "staging_ms": tot["staging_ms"], "comm_ms": tot["comm_ms"],
            "comm_bytes": int(tot["comm_bytes"]), "staged_bytes": int(tot["staged_bytes"]),
            "comm_bytes_predicted": p.comm_bytes(0),
            "energy_j": None, "energy_est_j": None, "energy_source": "none", "energy_model": None,
            "ranks": [{"rank": r["rank"], **r["timing"]["totals"]} for r in every],
            "error": None,
        }
        if plan.get("energy_scope") == "per-device":
            js = [r.get("joules") for r in every]
            if all(j is not None for j in js):       # every device measured: their sum
                row["energy_j"] = sum(js) / n_rep
                row["energy_source"] = f"{meter.source} (sum over {world_size} devices)"
        elif joules is not None and joules > 0:
            row["energy_j"], row["energy_source"] = joules / n_rep, meter.source
        if estimate is not None:
            phases = {k: [r["timing"]["totals"][k] for r in every] for k in PHASE_KEYS}
            est, label = estimate({**phases, "wall_ms": med}, world_size)
            if est and est > 0:
                row["energy_est_j"], row["energy_model"] = float(est), label
        foreign = _foreign_cpu(every, plan)
        if foreign is not None:
            row["host_foreign_cpu_pct"] = foreign
        if plan.get("blocks"):
            row["blocks"] = [{k: (int(v) if k.endswith("_bytes") else v) for k, v in blk.items()}
                             for blk in every[0]["timing"]["blocks"]]
        emit(row)


def add_worker_args(p) -> None:
    p.add_argument("--plan", required=True, help="group plan JSON written by `profile`")


def worker_main(a, argv_tail) -> int:
    from . import exchange as xch

    _die_with_parent()
    with open(a.plan) as f:
        plan = json.load(f)
    rank, ws = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if ws != plan["world_size"]:
        raise RuntimeError(f"WORLD_SIZE={ws} but the plan is for world_size={plan['world_size']}")
    if ws > 1:
        xch.init_process_group(rank, ws, timeout_s=plan["timeout_s"])
    try:
        run_group(plan, rank, ws, lambda row: print(json.dumps(row, allow_nan=False), flush=True))
    finally:
        xch.destroy()
    return 0


# --------------------------------------------------------------------------- the parent

def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def environment(link_emulation) -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "python": platform.python_version(),
            "kernel": platform.release(), "os": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "gpu": gpu, "link_emulation": link_emulation}


class Sweep:
    """Runs a SweepSpec, appending rows to `raw_path` and writing the perf map `out`."""

    def __init__(self, spec: SweepSpec, out: str, raw_path: Optional[str] = None,
                 prefix: str = "pe", progress: bool = True, host_check: bool = False):
        self.spec, self.out = spec, out
        self.host_check = host_check   # run runtime.hostcheck before and after the sweep
        self.host_checks: dict = {}
        self.raw_path = raw_path or (os.path.splitext(out)[0] + ".raw.jsonl")
        self.prefix, self.progress = prefix, progress
        self.links: dict = {}         # world_size -> testbed link (without the rate)
        self.link_checks: list = []
        self.overrides: dict = {}     # section -> fields replacing build_map's defaults

    # ---------------------------------------------------------------- preparation
    def prepare(self) -> None:
        """Validate everything that can be checked before a process starts: axes, token
        counts, namespace permissions, the raw log's protocol. Raises ValueError."""
        from .testbed import TestbedError, resolve_mode

        need_net = any(s != "single" for s in self.spec.strategies)
        self.mode = None
        if need_net:
            try:
                self.mode = resolve_mode(self.spec.testbed)
            except TestbedError as e:
                raise ValueError(str(e)) from None
        self.configs = expand(self.spec, shaped=self.mode != "loopback")
        keys = [c.key for c in self.configs]
        assert len(keys) == len(set(keys)), "duplicate configuration keys"
        self.raw = RawLog(self.raw_path, self.spec.protocol())
        if os.path.isdir(self.out):
            raise ValueError(f"--out {self.out} is a directory; give a .json file path")

    def pending(self) -> list:
        return [c for c in self.configs if c.key not in self.raw.rows]

    # ---------------------------------------------------------------- running
    def run(self) -> dict:
        from .testbed import cleanup_stale

        if self.mode == "netns":
            cleanup_stale(self.prefix)      # left by a SIGKILLed earlier run of this sweep
        todo = self.pending()
        done0 = len(self.configs) - len(todo)
        if done0:
            log.info("resuming: %d of %d configurations already in %s", done0, len(self.configs), self.raw_path)
        bar = None
        if self.progress and todo:
            from tqdm import tqdm
            bar = tqdm(total=len(todo), file=sys.stderr, unit="cfg", dynamic_ncols=True,
                       desc="profile", smoothing=0.1)
        self._bar = bar
        self._t_last = time.monotonic()
        os.makedirs(os.path.dirname(os.path.abspath(self.raw_path)), exist_ok=True)
        stderr_log = open(self.raw_path + ".ranks.log", "ab")
        tmpdir = tempfile.mkdtemp(prefix="pe-profile-")
        if self.host_check and todo:
            self._host_check("before")
        try:
            for k in sorted({c.pass_no for c in todo}):
                if self.spec.passes > 1:
                    log.info("pass %d of %d", k, self.spec.passes)
                self._run_configs([c for c in todo if c.pass_no == k], tmpdir, stderr_log)
            if self.host_check and todo:
                self._host_check("after")
        finally:
            stderr_log.close()
            if bar is not None:
                bar.close()
            self.raw.close()
            for fn in os.listdir(tmpdir):
                os.unlink(os.path.join(tmpdir, fn))
            os.rmdir(tmpdir)
        return self.write_map()

    def _run_configs(self, todo: list, tmpdir: str, stderr_log) -> None:
        """Measure `todo` (one pass): single first, then one emulated network per world
        size, its rates in turn (rate checked before each), the groups of each rate. With
        order "shuffled" the rates, the groups and each group's configurations run in a
        random order seeded by (seed, pass), so that an effect of a configuration's place
        in the pass (e.g. right after a re-shape) falls on different ones in each pass."""
        from .testbed import Testbed

        shuffle = _orderer(self.spec, todo[0].pass_no if todo else 1)
        groups = {}
        for c in todo:
            groups.setdefault(c.group, []).append(c)
        groups = {g: shuffle(cs) for g, cs in shuffle(list(groups.items()))}
        singles = [g for g in groups if g[1] == 1]
        for g in singles:
            self._run_group(g, groups[g], None, tmpdir, stderr_log)
        by_ws = {}
        for g in groups:
            if g[1] > 1:
                by_ws.setdefault(g[1], []).append(g)
        for ws, gs in by_ws.items():
            bws = shuffle(sorted({g[2] for g in gs}, key=lambda v: -1 if v is None else v))
            first_bw = bws[0] if bws[0] is not None else None
            with Testbed(ws, first_bw, delay_ms=self.spec.delay_ms, mode=self.mode,
                         prefix=self.prefix) as tb:
                for bw in bws:
                    if bw is not None:
                        tb.set_bw(bw)
                        try:
                            mbps = round(tb.measure_bw(), 3)
                        except Exception as e:  # noqa: BLE001 - rows say the rate is unverified
                            log.error("P=%d bw=%g Mbit/s: rate check failed: %s", ws, bw, e)
                            mbps, tb.link["bw_check_error"] = None, f"{type(e).__name__}: {e}"
                        self.link_checks.append({"world_size": ws, "bw": bw, "bw_measured": mbps})
                        log.info("P=%d bw=%g Mbit/s: measured %s Mbit/s", ws, bw, mbps)
                    link = dict(tb.link)
                    self.links[ws] = {k: v for k, v in link.items()
                                      if k not in ("bw", "bw_requested", "bw_measured",
                                                   "shaper_rate_mbit", "bw_measured_bytes",
                                                   "bw_check_error")}
                    for g in [g for g in gs if g[2] == bw]:
                        self._run_group(g, groups[g], tb, tmpdir, stderr_log)

    def _host_check(self, when: str) -> None:
        """Compute stability of the cores the ranks are pinned to (runtime.hostcheck),
        kept in the map's cluster.host_check; a failure is logged, not fatal."""
        from .hostcheck import HostCheckError, host_check, usable_cores

        cores = usable_cores()[:max(c.world_size for c in self.configs)]
        try:
            res = host_check(cores, iters=50, rounds=1)
        except HostCheckError as e:
            log.error("host check %s the sweep failed: %s", when, e)
            return
        self.host_checks[when] = res
        log.info("host check %s the sweep: slowdown %.1f %%, concurrent spread %.1f %%", when,
                 res["summary"]["max_slowdown_pct"], res["summary"]["max_concurrent_spread_pct"])

    def _record(self, row: dict, link: Optional[dict], bw) -> None:
        now = time.monotonic()
        row["wall_s"] = round(now - self._t_last, 4)
        self._t_last = now
        row["bw"] = bw
        row["bw_measured"] = link.get("bw_measured") if link else None
        row["link"] = link
        row["created"] = _now()
        self.raw.append(row)
        if self._bar is not None:
            self._bar.update(1)

    def _run_group(self, g, configs: list, tb, tmpdir: str, stderr_log) -> None:
        from .launch import LaunchError, launch, self_argv
        from .testbed import TestbedError

        model, ws, bw = g
        link = dict(tb.link) if tb is not None else None
        if link is not None and link.get("bw") is None:
            bw = None             # loopback: unshaped, recorded as such
        remaining = list(configs)
        attempts, failed_in_a_row = {}, 0   # each configuration gets two launches
        while remaining:
            plan = group_plan(self.spec, model, ws, remaining)
            path = os.path.join(tmpdir, f"plan-{abs(hash(g))}.json")
            with open(path, "w") as f:
                json.dump(plan, f)
            wanted = {c.key for c in remaining}
            got = []
            state = {"open": True}

            def on_line(line: str) -> None:
                if not state["open"]:
                    return
                try:
                    row = json.loads(line)
                except ValueError:
                    log.warning("rank 0 printed a non-JSON line: %r", line[:200])
                    return
                if not isinstance(row, dict) or row.get("key") not in wanted or row["key"] in got:
                    return
                got.append(row["key"])
                self._record(row, link, bw)

            argv = self_argv(["profile-worker", "--plan", path])
            n = len(remaining)
            reps = max(self.spec.repeats, self.spec.max_repeats or 0)
            budget = 120 + self.spec.timeout_s * n * (self.spec.warmup + reps + 1)
            err = None
            try:
                if tb is None:
                    launch(argv, 1, timeout_s=budget, stderr=stderr_log, on_stdout_line=on_line,
                           wrap=_pin_wrap, env_per_rank=lambda r: {"OMP_NUM_THREADS": "1"})
                else:
                    tb.launch(argv, budget, stderr=stderr_log, on_stdout_line=on_line)
            except Exception as e:  # noqa: BLE001 - a failed group is rows with errors, not the end
                log.debug("group %s failed", g, exc_info=True)
                err = f"{type(e).__name__}: {e}"
            finally:
                state["open"] = False
            remaining = [c for c in remaining if c.key not in got]
            if not remaining:
                if err is not None:   # every row is in; a rank then failed on its way out
                    log.warning("group %s: all rows measured, then: %s", g, err)
                return
            if err is None:
                err = "ranks exited without measuring this configuration"
            err += _tail(self.raw_path + ".ranks.log")
            if got:
                failed_in_a_row = 0
            c = remaining[0]      # the configuration that was running when it failed
            attempts[c.key] = attempts.get(c.key, 0) + 1
            if attempts[c.key] < 2:
                log.warning("%s: ranks failed (%s); retrying once", c.key, err)
                continue
            failed_in_a_row += 1
            give_up = failed_in_a_row >= 3
            for c in (remaining if give_up else remaining[:1]):
                log.warning("%s failed: %s", c.key, err)
                self._record(_error_row({"key": c.key, "strategy": c.strategy, "batch": c.batch,
                                         "cr": c.cr, "img_size": c.img_size},
                                        {"model": model, "world_size": ws, "exchange": self.spec.exchange},
                                        err if not give_up else f"group abandoned after 3 failed "
                                        f"configurations in a row: {err}", self._seq_len(model, c.img_size)),
                             link, bw)
            if give_up:
                return
            remaining = remaining[1:]

    def _seq_len(self, model: str, img: int) -> int:
        return model_shape(self.spec, model, img).seq_len

    # ---------------------------------------------------------------- the perf map
    def build_map(self) -> dict:
        sp = self.spec
        by_base: dict = {}          # the configuration -> its rows, one per pass measured
        for c in self.configs:
            row = self.raw.rows.get(c.key)
            if row is not None:
                by_base.setdefault(c.base_key, []).append(
                    {k: v for k, v in row.items() if k not in ("created",)})
        records = [combine_passes(rows) for rows in by_base.values()]
        models, seen = [], set()
        from costmodel.perfmap import model_entry

        for m in sp.models:
            for i in sp.img_sizes:
                sh = model_shape(sp, m, i)
                if (sh.name, sh.seq_len) not in seen:
                    seen.add((sh.name, sh.seq_len))
                    models.append({**model_entry(sh), "img_size": i})
        for r in records:      # error rows written before the token count was known
            if r.get("seq_len") is None:
                r["seq_len"] = self._seq_len(r["model"], r["img_size"])
        links = {str(k): v for k, v in sorted(self.links.items())}
        if not links:     # everything was resumed: take the link description from the rows
            for r in records:
                if r.get("link") and str(r["world_size"]) not in links:
                    links[str(r["world_size"])] = {k: v for k, v in r["link"].items()
                                                   if k not in ("bw", "bw_requested", "bw_measured",
                                                                "shaper_rate_mbit", "bw_measured_bytes")}
        checks = self.link_checks or _checks_from(records)
        ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ws_all = sorted({r["world_size"] for r in records} | set(sp.world_sizes if any(
            s != "single" for s in sp.strategies) else ()) | ({1} if "single" in sp.strategies else set()))
        mode = self.mode or "none"
        d = {
            "schema_version": 1, "kind": "prism-edge.perfmap", "source": "measured",
            "created": _now(),
            "units": {"latency_ms": "ms", "per_sample_ms": "ms", "compute_ms": "ms",
                      "staging_ms": "ms", "comm_ms": "ms", "bw": "Mbit/s (TCP payload)",
                      "bw_measured": "Mbit/s", "energy_j": "J", "energy_est_j": "J",
                      "comm_bytes": "bytes", "staged_bytes": "bytes", "wall_s": "s",
                      "duration_s": "s"},
            "environment": environment(links),
            "cluster": {"world_sizes": ws_all,
                        "devices": f"P ranks as processes on one host ({ncores} usable cores), "
                                   "one core and one torch thread per rank"
                                   + (" (cores shared when P > cores)" if max(ws_all) > (ncores or 1) else ""),
                        "link": {"netns": "veth + bridge in network namespaces, tc tbf both directions",
                                 "unshare": "veth + bridge in unprivileged user+net namespaces, tc tbf both directions",
                                 "loopback": "loopback, UNSHAPED (bw null)",
                                 "none": "no link (single only)"}.get(mode, mode),
                        "testbed_mode": mode, "link_checks": checks},
            "models": models,
            "protocol": {**sp.protocol(), **({"passes": sp.passes, "passes_rule":
                         "the whole grid measured `passes` times in turn; a record's median is the "
                         "median of its passes' medians"} if sp.passes > 1 else {}),
                         "pinning": "one core per rank (taskset), rank r -> core r mod cores",
                         "latency": "per repeat, the slowest rank's time for one batch after a barrier",
                         "phases": "rank 0 per-phase totals, median over repeats",
                         "energy": f"meter={sp.meter}; estimate power model={sp.power_model}",
                         "single": "one process, no link, pinned to core 0"},
            "sweep": {"axes": {"strategy": list(sp.strategies), "model": list(sp.models),
                               "batch": list(sp.batches),
                               "bw": list(sp.bws) if mode not in ("loopback",) else [None],
                               "cr": list(sp.crs) if "prism" in sp.strategies else [],
                               "img_size": list(sp.img_sizes),
                               "seq_len": sorted({m["seq_len"] for m in models}),
                               "world_size": ws_all},
                      "n_configs": len({c.base_key for c in self.configs}), "n_records": len(records),
                      "n_errors": sum(1 for r in records if r.get("error")),
                      "duration_s": round(sum(r.get("wall_s", 0.0) for r in records), 2),
                      "duration_note": "sum of the wall time attributed to each record (set-up, "
                                       "rate checks, launches and measurement), over all sessions",
                      "raw": os.path.basename(self.raw_path)},
            "records": records,
        }
        if self.host_checks:
            d["cluster"]["host_check"] = dict(self.host_checks)
        if self.overrides:      # another launcher (runtime/cluster.py) describes its devices
            for section, fields in self.overrides.items():
                d[section].update(fields)
        return d

    def write_map(self) -> dict:
        from costmodel.perfmap import save_perfmap

        missing = [c.key for c in self.configs if c.key not in self.raw.rows]
        if missing:
            raise RuntimeError(f"{len(missing)} configurations have no row (first: {missing[0]})")
        d = self.build_map()
        save_perfmap(d, self.out)
        return d


def _checks_from(records: list) -> list:
    seen, out = set(), []
    for r in records:
        k = (r["world_size"], r.get("bw"))
        if r.get("bw") is not None and k not in seen and r.get("bw_measured") is not None:
            seen.add(k)
            out.append({"world_size": r["world_size"], "bw": r["bw"], "bw_measured": r["bw_measured"]})
    return out


def _pin_wrap(rank: int, argv: list) -> list:
    import shutil

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", str(cpus[rank % len(cpus)])] + argv
    return argv


def _tail(path: str, n: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            t = f.read().decode(errors="replace").strip().splitlines()
        return f" | ranks' stderr: {t[-1][:200]}" if t else ""
    except OSError:
        return ""


# --------------------------------------------------------------------------- CLI

def _list(kind, name):
    def parse(s: str):
        out = []
        for tok in s.split(","):
            tok = tok.strip()
            if not tok:
                continue
            try:
                out.append(kind(tok))
            except ValueError:
                raise ValueError(f"--{name} value {tok!r} is not a{'n integer' if kind is int else ' number'}")
        return tuple(out)
    return parse


def add_profile_args(p) -> None:
    p.add_argument("--model", "--models", dest="models", default="vit_tiny_patch16_224",
                   help="comma-separated timm ViT names")
    p.add_argument("--strategy", "--strategies", dest="strategies", default="single,voltage,prism")
    p.add_argument("--batch", "--batches", dest="batches", default="1")
    p.add_argument("--bw", "--bws", dest="bws", default="300", help="link rates, Mbit/s")
    p.add_argument("--cr", "--crs", dest="crs", default=",".join(f"{c:g}" for c in DEFAULT_CRS),
                   help="prism compression rates L_p/m")
    p.add_argument("--img-size", "--img-sizes", dest="img_sizes", default="224",
                   help="token counts via image size: seq_len = (img/patch)^2 + 1")
    p.add_argument("--world-size", "--world-sizes", dest="world_sizes", default="2",
                   help="devices P for voltage/prism")
    p.add_argument("--depth", type=int, help="override the number of blocks (tiny test models)")
    p.add_argument("--patch-size", type=int)
    p.add_argument("--exchange", default="pairwise", help="pairwise | allgather")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per configuration (at least)")
    p.add_argument("--max-repeats", type=int, default=None,
                   help="adaptive: repeat up to this many times until the median is precise (--target-se)")
    p.add_argument("--target-se", type=float, default=0.02,
                   help="adaptive repeats stop at this robust relative standard error of the median")
    p.add_argument("--repeat-budget", type=float, default=20.0,
                   help="adaptive repeats: seconds of repeats per configuration at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--delay", type=float, default=0.0, help="one-way delay, ms (netem where available)")
    p.add_argument("--testbed", default="auto", help="auto | netns | unshare | loopback")
    p.add_argument("--timeout", type=float, default=120.0, help="process-group timeout, s")
    p.add_argument("--blocks", action="store_true", help="keep rank 0's per-block breakdown")
    p.add_argument("--meter", default="auto", help="energy meter: auto | jtop | ina3221 | rapl | none")
    p.add_argument("--power-model", default="cpu-host-assumed", help="power model of energy_est_j")
    p.add_argument("--out", required=True, help="perf map JSON to write")
    p.add_argument("--raw", help="raw JSONL (default: <out>.raw.jsonl); resumed when it exists")
    p.add_argument("--prefix", default="pe", help="namespace name prefix")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--passes", type=int, default=1,
                   help="measure the whole grid this many times in turn; a record's median is the "
                        "median of its passes' medians (a host or link that drifts over minutes)")
    p.add_argument("--order", default="grid", choices=ORDERS,
                   help="grid: every pass in the grid's order; shuffled: each pass in its own "
                        "seeded random order of rates, groups and configurations")
    p.add_argument("--host-check", action="store_true",
                   help="before and after the sweep, time a fixed workload on the ranks' cores alone "
                        "and together (python -m runtime host-check); stored in cluster.host_check")


def spec_from_args(a) -> SweepSpec:
    return SweepSpec(
        models=tuple(s.strip() for s in a.models.split(",") if s.strip()),
        strategies=tuple(s.strip() for s in a.strategies.split(",") if s.strip()),
        batches=_list(int, "batch")(a.batches), bws=_list(float, "bw")(a.bws),
        crs=_list(float, "cr")(a.crs), img_sizes=_list(int, "img-size")(a.img_sizes),
        world_sizes=_list(int, "world-size")(a.world_sizes), depth=a.depth,
        patch_size=a.patch_size, exchange=a.exchange, warmup=a.warmup, repeats=a.repeats,
        max_repeats=a.max_repeats, target_rel_se=a.target_se, repeat_budget_s=a.repeat_budget,
        seed=a.seed, device=a.device, delay_ms=a.delay, testbed=a.testbed, timeout_s=a.timeout,
        blocks=a.blocks, meter=a.meter, power_model=a.power_model, passes=a.passes,
        order=a.order)


def profile_main(a, argv_tail) -> int:
    from .cli import UsageError

    try:
        spec = spec_from_args(a)
        if a.meter not in ("auto", "jtop", "ina3221", "rapl", "none"):
            raise ValueError(f"--meter {a.meter!r}; allowed: auto, jtop, ina3221, rapl, none")
        try:
            from .energy import POWER_MODELS
            if a.power_model not in POWER_MODELS:
                raise ValueError(f"--power-model {a.power_model!r}; allowed: {sorted(POWER_MODELS)}")
        except ImportError:
            pass
        sweep = Sweep(spec, a.out, a.raw, prefix=a.prefix, progress=not a.no_progress,
                      host_check=a.host_check)
        sweep.prepare()
    except ValueError as e:
        raise UsageError(str(e))
    from .testbed import TestbedError

    try:
        d = sweep.run()
    except KeyboardInterrupt:
        print(f"error: interrupted; {len(sweep.raw.rows)} rows are kept in {sweep.raw_path}: "
              "run the same command again to resume", file=sys.stderr)
        return 130
    except TestbedError as e:
        print(f"error: emulated network: {e} (rows so far are kept in {sweep.raw_path})", file=sys.stderr)
        return 1
    s = d["sweep"]
    print(json.dumps({"out": a.out, "raw": sweep.raw_path, "n_records": s["n_records"],
                      "n_errors": s["n_errors"], "duration_s": s["duration_s"],
                      "link_checks": d["cluster"]["link_checks"]}))
    return 0


def _register() -> None:
    from .cli import COMMANDS, command

    if "profile" not in COMMANDS:
        command("profile", "profiling sweep on the emulated network -> perf map JSON")(
            (add_profile_args, profile_main))
    if "profile-worker" not in COMMANDS:
        command("profile-worker", "internal: the ranks of one profiling group")(
            (add_worker_args, worker_main))


_register()
