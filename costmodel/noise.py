"""How reproducible a perf map's own measurements are: the floor under any model's error.

A model scored against measured medians cannot be more accurate than those medians are
reproducible. For a map measured in passes (`python -m runtime profile --passes K`: the
whole grid K times in turn; a record's median is the median of its K pass medians) two
estimates of that floor come from the map itself, no model involved:

- **halves**: the median of the first K/2 passes against the median of the last K/2,
  |a / b - 1| per configuration. Two independent half-size re-measurements; what a
  second session of K/2 passes would disagree by.
- **bootstrap**: each record's K pass medians resampled with replacement, the median of
  each resample against the record's median. The spread a perfect model (one that knew
  each configuration's long-run median) would still show against this map. The same
  resamples give each record a central interval (`record_intervals`), to ask what share
  of a model's predictions fall inside the measurement's own uncertainty.

Pass medians are used, not the pooled samples: repeats inside one pass run back to back
and share that minute's host state, so resampling them would understate the noise.
Records without `passes` (one burst) are skipped and counted.

`target` picks what is resampled: "latency" (the total, the default) or one phase
("compute", "staging", "comm"): each pass's phase time, which maps record in
`passes.<phase>_ms` from the profile change that added them on (older maps: skipped).
A phase's floor against the model's held-out error on that phase says which phase's
error is noise and which is the model. Records whose phase time is 0 (single's comm)
have no relative error and are skipped.
"""
from __future__ import annotations

import numpy as np

from .perfmap import PerfMap, load_perfmap, record_key, record_latency_ms

MIN_PASSES = 4
PHASE_TARGETS = ("compute", "staging", "comm")     # phases the passes record (passes.<phase>_ms)
TARGETS = ("latency",) + PHASE_TARGETS


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {list(TARGETS)}")


def pass_medians(r: dict, target: str = "latency") -> np.ndarray | None:
    """The record's per-pass medians (ms) of `target` (the latency or one phase), or None
    when it was measured in fewer than MIN_PASSES passes or does not record them."""
    _check_target(target)
    p = (r.get("passes") or {}).get("latency_median_ms" if target == "latency" else f"{target}_ms")
    if not p:
        return None
    v = np.asarray([x for x in p if x is not None], dtype=float)
    return v if v.size >= MIN_PASSES else None


def _reference(r: dict, target: str) -> float:
    """The record's value of `target` (ms): what the map reports and a model is scored on."""
    return record_latency_ms(r) if target == "latency" else float(r.get(f"{target}_ms") or 0.0)


def _records(perfmap, target: str = "latency") -> tuple[list, list]:
    """(record, pass medians) of the records measured in >= MIN_PASSES passes (with a
    positive value of `target`), and all usable records."""
    _check_target(target)
    pm = perfmap if isinstance(perfmap, PerfMap) else load_perfmap(perfmap)
    recs = pm.usable()
    with_passes = [(r, pass_medians(r, target)) for r in recs]
    return [(r, v) for r, v in with_passes if v is not None and _reference(r, target) > 0], recs


def _by_strategy(rows: list, ape: np.ndarray) -> dict:
    strat = np.array([r["strategy"] for r in rows], dtype=object)
    return {s: _summary(ape[strat == s]) for s in dict.fromkeys(strat)}


def _summary(a: np.ndarray) -> dict:
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "median_ape": float(np.median(a)), "p90_ape": float(np.percentile(a, 90)),
            "within_10pct": float(np.mean(a <= 10.0))}


def halves(perfmap, *, target: str = "latency") -> dict:
    """|median(first half of passes) / median(second half) - 1| (%) per configuration."""
    return _halves(*_records(perfmap, target))


def _halves(rows: list, recs: list) -> dict:
    if not rows:
        return {"n": 0, "skipped": len(recs), "reason": f"no record measured in >= {MIN_PASSES} passes"}
    ape = np.array([abs(np.median(v[: v.size // 2]) / np.median(v[v.size - v.size // 2:]) - 1) * 100
                    for _, v in rows])
    return {**_summary(ape), "skipped": len(recs) - len(rows),
            "passes_per_half": int(min(v.size for _, v in rows) // 2),
            "by_strategy": _by_strategy([r for r, _ in rows], ape)}


def _boot(v: np.ndarray, n_boot: int, rng) -> np.ndarray:
    return np.median(v[rng.integers(0, v.size, size=(n_boot, v.size))], axis=1)


def measurement_floor(perfmap, *, target: str = "latency", n_boot: int = 400, seed: int = 0) -> dict:
    """Bootstrap floor of `target` (the latency or one phase): APE (%) of resampled
    medians against each record's value, pooled over records and resamples (`n` counts
    resamples, `n_records` records); plus the halves comparison."""
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    rows, recs = _records(perfmap, target)
    out = {"method": f"bootstrap over pass medians ({n_boot} resamples per record)", "target": target,
           "halves": _halves(rows, recs)}
    if not rows:
        return {**out, "n": 0, "skipped": len(recs)}
    rng = np.random.default_rng(seed)
    ape = [np.abs(_boot(v, n_boot, rng) / _reference(r, target) - 1) * 100 for r, v in rows]
    flat = np.concatenate(ape)
    strat = [r["strategy"] for r, _ in rows]
    return {**out, **_summary(flat), "n_records": len(rows), "skipped": len(recs) - len(rows),
            "passes": int(np.median([v.size for _, v in rows])),
            "by_strategy": {s: _summary(np.concatenate([a for a, t in zip(ape, strat) if t == s]))
                            for s in dict.fromkeys(strat)}}


def record_intervals(perfmap, *, coverage: float = 0.9, n_boot: int = 400, seed: int = 0) -> dict:
    """{record_key(r): (low, high)} ms: the central `coverage` interval of each record's
    bootstrapped median (records measured in >= MIN_PASSES passes only)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    rows, _ = _records(perfmap)
    rng = np.random.default_rng(seed)
    q = (1 - coverage) / 2 * 100
    out = {}
    for r, v in rows:
        b = _boot(v, n_boot, rng)
        out[record_key(r)] = (float(np.percentile(b, q)), float(np.percentile(b, 100 - q)))
    return out
