"""A profiling sweep's specification and its expansion into configurations.

    spec = SweepSpec(models=("vit_tiny_patch16_224",), batches=(1, 2), bws=(200, 500))
    configs = expand(spec)         # single first, then by world_size, bw, model, img_size

A configuration is keyed `model/imgI/PP/bwB/strategy/crC/BN` (`#passK` from the second
pass on); the raw log (rawlog.py) and the perf map use these keys. Strategies come from
the registry: a strategy whose Formula compresses sweeps the cr axis, one that is not
distributed (single) runs once per (model, img_size, batch) on one device.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Optional

from costmodel.strategies import get_formula, make_plan

DEFAULT_CRS = (3.3, 4.95, 9.9)

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
    memory: bool = False                  # one extra un-timed forward per configuration: measured peaks
    meter: str = "auto"
    power_model: str = "cpu-host-assumed"
    passes: int = 1                       # the whole grid, measured this many times in turn
    order: str = "grid"                   # "shuffled": each pass in its own seeded random order

    def __post_init__(self):
        from ..netem.testbed import MODES
        from ..parallel import list_strategies
        from ..parallel.exchange import EXCHANGES

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
        if self.distributed():
            need(len(self.bws) > 0, "bw is empty; the distributed strategies need at least one rate")
            need(len(self.world_sizes) > 0, "world_size is empty; the distributed strategies need P >= 2")
        for s in self.strategies:
            if get_formula(s).compresses:
                need(len(self.crs) > 0, f"{s} needs at least one cr")
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

    def distributed(self) -> list:
        """The strategies of the sweep that run on P >= 2 devices over the link."""
        return [s for s in self.strategies if get_formula(s).distributed]

    def local(self) -> list:
        """The strategies that run on one device (single)."""
        return [s for s in self.strategies if not get_formula(s).distributed]

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

    from ..models import ModelSpec, build_adapter

    ms = ModelSpec(model, img_size=img_size, patch_size=patch_size, depth=depth)
    with torch.device("meta"):
        return build_adapter(ms, device="meta").shape


def expand(spec: SweepSpec, *, shaped: bool = True) -> list:
    """Every configuration of the sweep, in run order: single first, then by world_size,
    bw, model, img_size, and within a group by strategy, cr, batch. Validates each
    (model, img_size, world_size, cr) against the token count; raises ValueError."""
    shapes = {}
    for m in spec.models:
        for i in spec.img_sizes:
            try:
                shapes[(m, i)] = model_shape(spec, m, i)
            except (ValueError, TypeError, RuntimeError) as e:
                raise ValueError(f"model {m!r} at img_size={i}: {e}") from None
    out = []
    for s in spec.local():
        for m in spec.models:
            for i in spec.img_sizes:
                out += [Config(m, i, 1, None, s, b, None) for b in spec.batches]
    dist = spec.distributed()
    if not dist:
        return _with_passes(out, spec.passes)
    bws = spec.bws if shaped else (None,)
    for p in spec.world_sizes:
        for bw in bws:
            for m in spec.models:
                for i in spec.img_sizes:
                    sh = shapes[(m, i)]
                    for s in dist:
                        crs = spec.crs if get_formula(s).compresses else (None,)
                        for cr in crs:
                            try:
                                make_plan(s, sh, world_size=p, batch=1, cr=cr, exchange=spec.exchange)
                            except ValueError as e:
                                raise ValueError(f"{s} on {m} img_size={i} (seq_len={sh.seq_len}) "
                                                 f"at world_size={p}: {e}") from None
                            out += [Config(m, i, p, bw, s, b, cr) for b in spec.batches]
    return _with_passes(out, spec.passes)


def orderer(spec: SweepSpec, pass_no: int):
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
    return configs + [replace(c, pass_no=k) for k in range(2, passes + 1) for c in configs]


