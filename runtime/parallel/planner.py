"""Heterogeneity-aware planning: from profiled per-device speeds, the partition sizes
(voltage / prism), head and column splits (tensor_parallel) and head, column and row
splits (galaxy) that minimise the predicted latency; coformer's sub-model widths and
aggregation interval under memory and accuracy-drop bounds (`plan_coformer`, DeBo's
first step); and a way to make one emulated device slower.

    speeds = profile_speed(adapter)                 # FLOP/s of this rank, one block
    plan = plan_splits("galaxy", adapter.shape, speeds_of_every_rank, bw=300)
    create_strategy("galaxy", **plan.options).apply(adapter, DistContext(..., partition=plan.partition))

Predicted latency (ms) of a plan: max_r flops_r / speed_r  +  max_r comm_bytes_r * 8 / bw
(+ latency_ms per exchange). Every block is the same and synchronises with its peers,
so the pass is paced by the slowest device's compute; comm is charged without overlap
(an upper bound for galaxy). The FLOPs and bytes are costmodel.formulas' (Plan.flops,
Plan.comm_bytes). Galaxy's sequence split only moves the connective ops (not matmuls),
so its rows are sized in proportion to speed.

Slow device (netem/cpuquota.py): `cpu_quota(fraction)` puts the calling process (all its threads) into a
cgroup with a CFS bandwidth quota (cgroup v2 cpu.max or v1 cpu.cfs_quota_us) of
`fraction` CPUs per 10 ms period: the kernel runs it at most that share of one core, as
a board with a slower CPU would, compute and its GLOO I/O threads alike. The planner
does not assume the fraction: it uses the speeds measured under the quota (on a loaded
host a quota of 0.5 may bind less than that, and the profiled speed says so).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from costmodel.formulas import ModelShape, Plan, block_flops, split_proportional
from costmodel.strategies import get_formula, list_strategies, make_plan
from ..netem.cpuquota import cpu_quota  # noqa: F401  - re-exported: the planner's slow device


def planned() -> list:
    """The strategies plan_splits can split unevenly: every distributed one."""
    return list_strategies(distributed=True)


def profile_speed(adapter, *, repeats: int = 3, rows: Optional[int] = None) -> float:
    """This device's speed in FLOP/s: block 0 of the real model on `rows` tokens (default
    all N), median of `repeats` after one warm-up, divided into the formula's FLOPs."""
    import torch

    s = adapter.shape
    n = s.seq_len if rows is None else int(rows)
    x = torch.randn(1, n, s.d, generator=torch.Generator().manual_seed(0))
    ts = []
    with torch.inference_mode():
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            adapter.block(0, x)
            if k:
                ts.append(time.perf_counter() - t0)
    ts.sort()
    return block_flops(n, n, s.d, s.d_ff) / ts[len(ts) // 2]


# --------------------------------------------------------------------------- prediction

def predict_ms(plan: Plan, speeds: Sequence[float], *, bw: Optional[float] = None,
               latency_ms: float = 0.0) -> float:
    """Predicted latency in ms: slowest device's FLOPs / speed (FLOP/s), plus the
    largest per-device traffic at bw Mbit/s (none when bw is None), plus latency_ms per
    exchange."""
    if len(speeds) != plan.world_size:
        raise ValueError(f"{len(speeds)} speeds for world_size={plan.world_size}")
    comp = max(plan.flops(r) / speeds[r] for r in range(plan.world_size)) * 1e3
    comm = 0.0 if bw is None else max(plan.comm_bytes(r) for r in range(plan.world_size)) * 8 / (bw * 1e6) * 1e3
    return comp + comm + plan.n_exchanges * latency_ms


@dataclass(frozen=True)
class SplitPlan:
    """A chosen split: `options` for create_strategy, `partition` for DistContext."""

    strategy: str
    partition: Optional[tuple]
    options: dict
    predicted_ms: float
    speeds: tuple
    even_predicted_ms: float
    plan: Plan = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "partition": None if self.partition is None else list(self.partition),
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()},
                "predicted_ms": self.predicted_ms, "even_predicted_ms": self.even_predicted_ms,
                "speeds_gflops": [s / 1e9 for s in self.speeds]}


def _descend(x: list, lo: int, f, steps) -> tuple:
    """Integer local search on a vector with a fixed sum: move `step` units between any
    two entries while the objective f improves."""
    best = f(x)
    for step in steps:
        improved = True
        while improved:
            improved = False
            for i, j in itertools.permutations(range(len(x)), 2):
                if x[i] - step < lo:
                    continue
                y = list(x)
                y[i] -= step
                y[j] += step
                v = f(y)
                if v < best - 1e-12:
                    x, best, improved = y, v, True
    return x, best


def _steps(n: int) -> list:
    out, s = [], 1
    while s <= max(1, n // 4):
        out.append(s)
        s *= 4
    return sorted(out, reverse=True)


def _compositions(n: int, p: int):
    for cut in itertools.combinations(range(n + p - 1), p - 1):
        prev, parts = -1, []
        for c in cut + (n + p - 1,):
            parts.append(c - prev - 1)
            prev = c
        yield parts


def _plan_layers(strategy: str, shape: ModelShape, speeds: tuple, pred, batch: int) -> SplitPlan:
    """Pipeline: the blocks per device (contiguous stages) that minimise predict_ms
    (the slowest stage paces a full pipeline), searched from the split proportional
    to speed; every stage keeps at least one block when there are enough."""
    p, nl = len(speeds), shape.n_layers
    lo = 1 if nl >= p else 0

    def mk(layers):
        return make_plan(strategy, shape, world_size=p, batch=batch, layers=layers)

    even = mk(None)
    start = split_proportional(nl, speeds, minimum=lo)
    layers, best = _descend(start, lo, lambda ls: pred(mk(ls)), _steps(nl))
    if best >= pred(even):
        layers, best = list(even.layers_split), pred(even)
    return SplitPlan(strategy, None, {"layers": tuple(layers)}, best, speeds, pred(even), mk(layers))


def plan_splits(strategy: str, shape: ModelShape, speeds: Sequence[float], *,
                bw: Optional[float] = None, batch: int = 1, latency_ms: float = 0.0,
                cr: Optional[float] = None, m: Optional[int] = None,
                collective: Optional[str] = None, tiles: Optional[int] = None) -> SplitPlan:
    """The split of `strategy` over devices of the given speeds (FLOP/s, by rank) that
    minimises predict_ms. voltage / prism: token partition; tensor_parallel: heads and
    MLP columns; galaxy: heads, columns (searched) and rows (in proportion to speed);
    pipeline: blocks per device."""
    if strategy not in planned():
        raise ValueError(f"unknown strategy {strategy!r} to plan; known: {planned()}")
    fm = get_formula(strategy)
    speeds = tuple(float(s) for s in speeds)
    p, n = len(speeds), shape.seq_len
    if p < 2:
        raise ValueError(f"{p} speeds; planning needs world_size >= 2")
    if any(not s > 0 for s in speeds):
        raise ValueError(f"speeds {list(speeds)} must all be > 0 FLOP/s")
    pred = lambda pl: predict_ms(pl, speeds, bw=bw, latency_ms=latency_ms)  # noqa: E731
    if not fm.splits_weights:            # row split: the token partition
        kw = dict(cr=cr, m=m) if fm.compresses else {}

        def mk(sizes):
            return make_plan(strategy, shape, world_size=p, batch=batch, partition=sizes, **kw)

        def f(sizes):
            try:
                return pred(mk(sizes))
            except ValueError:          # e.g. prism's cr larger than a part allows
                return float("inf")

        even = mk(None)
        start = split_proportional(n, speeds, minimum=1)
        sizes, best = _descend(start, 1, f, _steps(n))
        if best >= pred(even):
            sizes, best = list(even.sizes), pred(even)
        return SplitPlan(strategy, tuple(sizes), dict(kw), best, speeds, pred(even), mk(sizes))

    if "layers" in fm.options:           # layer pipeline: blocks per device
        return _plan_layers(strategy, shape, speeds, pred, batch)
    extra = {"collective": collective} if collective else {}
    if "tiles" in fm.options and tiles is not None:
        extra["tiles"] = tiles
    # a sequence-parallel weight split (galaxy) also takes rows, in proportion to speed
    rows = None if fm.all_rows else tuple(split_proportional(n, speeds, minimum=1))

    def mk(heads, cols, part=rows):
        return make_plan(strategy, shape, world_size=p, batch=batch, heads=heads, cols=cols,
                         partition=part, **extra)

    even = mk(None, None, None)
    # ties (within 0.5 %) go to the heads split closest to proportional to speed
    target = [shape.heads * s / sum(speeds) for s in speeds]
    dist = lambda hs: sum(abs(h - t) for h, t in zip(hs, target))  # noqa: E731
    cands = []
    for heads in _compositions(shape.heads, p):
        cols0 = split_proportional(shape.d_ff, speeds)
        cols, v = _descend(cols0, 0, lambda c: pred(mk(heads, c)), _steps(shape.d_ff))
        cands.append((v, tuple(heads), tuple(cols)))
    vmin = min(c[0] for c in cands)
    v, heads, cols = min((c for c in cands if c[0] <= vmin * 1.005), key=lambda c: (dist(c[1]), c[0]))
    if v >= pred(even):
        rows = None
    opts = dict(heads=heads, cols=cols, **extra)
    return SplitPlan(strategy, rows, opts, v, speeds, pred(even), mk(heads, cols, rows))


# --------------------------------------------------------------------------- coformer (DeBo)

@dataclass(frozen=True)
class CoformerPlan(SplitPlan):
    """plan_coformer's answer: SplitPlan (options heads, cols, k) plus the predicted
    accuracy drop (None without an accuracy model) and each device's predicted peak bytes."""

    accuracy_drop: Optional[float] = None
    memory_peak: tuple = ()

    def to_dict(self) -> dict:
        return {**super().to_dict(), "accuracy_drop": self.accuracy_drop,
                "memory_peak_bytes": list(self.memory_peak)}


def _drop_of(accuracy_drop, k: int, heads: tuple, cols: tuple):
    """Predicted accuracy drop of (k, heads, cols): a callable's answer, or a table's entry
    under (k, heads, cols) or k; None when a table has neither (unknown: not certified)."""
    if accuracy_drop is None:
        return None
    if callable(accuracy_drop):
        return float(accuracy_drop(k, heads, cols))
    for key in ((k, tuple(heads), tuple(cols)), k):
        if key in accuracy_drop:
            return float(accuracy_drop[key])
    return 0.0 if k == 1 else None           # k = 1 is tensor_parallel: exact


def plan_coformer(shape: ModelShape, speeds: Sequence[float], *, memory: Optional[Sequence[float]] = None,
                  bw: Optional[float] = None, batch: int = 1, latency_ms: float = 0.0,
                  ks: Optional[Sequence[int]] = None, accuracy_drop=None,
                  max_drop: Optional[float] = None) -> CoformerPlan:
    """DeBo's first step for coformer: per-device sub-model widths (heads, MLP columns) and
    the aggregation interval k that minimise predict_ms on devices of the given speeds
    (FLOP/s, by rank), subject to
      - memory: each device's predicted peak bytes (costmodel.memory.memory_peak: its
        weights, activations and buffers) <= memory[r] (None: no limit);
      - max_drop: predicted accuracy drop <= max_drop, from `accuracy_drop`, a callable
        (k, heads, cols) -> drop or a table {k: drop} / {(k, heads, cols): drop} (a
        table without the entry leaves that candidate out, except k = 1, exact).
    ks: the k values tried (default 1 .. depth). Widths: every heads composition, columns
    by local search from the split proportional to speed (as plan_splits). Ties within
    0.5 % go to the larger k (fewer aggregations), then to heads closest to proportional."""
    from costmodel.memory import memory_peak

    speeds = tuple(float(s) for s in speeds)
    p, L = len(speeds), shape.n_layers
    if p < 2:
        raise ValueError(f"{p} speeds; planning needs world_size >= 2")
    if any(not s > 0 for s in speeds):
        raise ValueError(f"speeds {list(speeds)} must all be > 0 FLOP/s")
    if memory is not None and (len(memory) != p or any(not m > 0 for m in memory)):
        raise ValueError(f"memory {list(memory)} must give {p} budgets > 0 (bytes)")
    if max_drop is not None and accuracy_drop is None:
        raise ValueError("max_drop needs accuracy_drop (a callable or a table of predicted drops)")
    ks = list(range(1, L + 1)) if ks is None else [int(k) for k in ks]
    if not ks or any(not 1 <= k <= L for k in ks):
        raise ValueError(f"ks {ks} must be integers from 1 to depth {L}")
    pred = lambda pl: predict_ms(pl, speeds, bw=bw, latency_ms=latency_ms)  # noqa: E731

    def mk(heads, cols, k):
        return make_plan("coformer", shape, world_size=p, batch=batch, heads=heads, cols=cols, k=k)

    def over(pl):                # bytes over the memory budgets, summed over devices
        if memory is None:
            return 0.0
        return sum(max(0.0, b - m) for b, m in zip(memory_peak(pl), memory))

    def cost(heads, cols, k):
        pl = mk(heads, cols, k)
        drop = _drop_of(accuracy_drop, k, tuple(heads), tuple(cols))
        bad = max_drop is not None and (drop is None or drop > max_drop)
        return pred(pl) + over(pl) * 1e3 + (1e12 if bad else 0.0)

    target = [shape.heads * s / sum(speeds) for s in speeds]
    cands = []
    for k in ks:
        for heads in _compositions(shape.heads, p):
            cols0 = split_proportional(shape.d_ff, speeds)
            cols, v = _descend(cols0, 0, lambda c: cost(heads, c, k), _steps(shape.d_ff))
            pl = mk(heads, cols, k)
            drop = _drop_of(accuracy_drop, k, tuple(heads), tuple(cols))
            if over(pl) > 0 or (max_drop is not None and (drop is None or drop > max_drop)):
                continue
            cands.append((pred(pl), k, tuple(heads), tuple(cols), drop, pl))
    if not cands:
        raise ValueError("no coformer split satisfies the constraints (memory budgets "
                         f"{None if memory is None else list(memory)}, max_drop {max_drop})")
    vmin = min(c[0] for c in cands)
    dist = lambda hs: sum(abs(h - t) for h, t in zip(hs, target))  # noqa: E731
    v, k, heads, cols, drop, pl = min((c for c in cands if c[0] <= vmin * 1.005),
                                      key=lambda c: (-c[1], dist(c[2]), c[0]))
    even = pred(mk(None, None, k))
    return CoformerPlan("coformer", None, {"heads": heads, "cols": cols, "k": k}, v, speeds, even, pl,
                        accuracy_drop=drop, memory_peak=tuple(memory_peak(pl)))
