"""One-call prediction on shipped, fitted profiles (costmodel/profiles/*.json).

    >>> import costmodel
    >>> costmodel.list_profiles()
    ['jetson-orin-nano']
    >>> costmodel.predict(16, 500, 9.9)["latency_ms"]        # ms for the batch of 16

A profile is a `CostModel` saved as JSON; regenerate one from a perf map with
`python -m costmodel fit data/perfmaps/X.json --out costmodel/profiles/Y.json`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from . import checks, memory
from .features import QueryError, shape_at
from .model import CostModel
from .strategies import get_formula, make_plan

PROFILE_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "jetson-orin-nano"
_LOADED: dict = {}


def list_profiles() -> list:
    """Names of the shipped fitted profiles (file stems in costmodel/profiles/)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name: str | None = None, *, fast: bool = True) -> CostModel:
    """The fitted CostModel of a shipped profile (cached after the first load; a loaded
    one is reused after one stat of its file; fast=False lists the directory first)."""
    name = DEFAULT_PROFILE if name is None else name
    hit = _LOADED.get(name) if fast and isinstance(name, str) else None
    if hit is not None and hit[3] is PROFILE_DIR:    # loaded: stat its one file, no glob
        try:
            if os.stat(hit[2]).st_mtime_ns == hit[0]:
                return hit[1]
        except OSError:
            pass
    if not isinstance(name, str) or name not in list_profiles():
        raise QueryError(f"unknown profile {name!r}; known: {list_profiles()}")
    path = PROFILE_DIR / f"{name}.json"
    mtime = path.stat().st_mtime_ns
    hit = _LOADED.get(name)
    if hit is None or hit[0] != mtime:
        hit = (mtime, CostModel.load(path), str(path), PROFILE_DIR)
        _LOADED[name] = hit
    return hit[1]


def _out(v):
    a = np.asarray(v, float)
    if a.ndim == 0:
        x = float(a)
        return None if not np.isfinite(x) else x
    return a


def _0d(v) -> bool:
    return type(v) in (int, float) or np.ndim(v) == 0


def _check_scalars(batch, bw, cr, seq_len, strategy, world_size):
    """Scalar arguments checked at the boundary (checks.py: NaN / inf refused, the range
    named), and arguments the strategy does not take refused rather than ignored."""
    from .strategies import get_formula, list_strategies

    if _0d(batch):
        checks.count("batch", batch)
    if bw is not None and _0d(bw):
        checks.positive("bw", bw, unit="Mbit/s")
    if cr is not None and _0d(cr):
        checks.positive("cr", cr)
    if seq_len is not None and _0d(seq_len):
        checks.count("seq_len", seq_len, minimum=2)
    if world_size is not None and _0d(world_size):
        checks.count("world_size", world_size)
    if not isinstance(strategy, str):
        return
    try:
        f = get_formula(strategy)
    except ValueError as e:
        raise QueryError(str(e)) from None
    if cr is not None and _0d(cr) and not f.compresses:
        raise QueryError(f"cr={cr:g} applies to {list_strategies(compresses=True)}, not to "
                         f"{strategy!r}; give cr=None")
    if not f.distributed and world_size is not None and _0d(world_size) and world_size != 1:
        raise QueryError(f"strategy {strategy!r} runs on one device; world_size={world_size} "
                         f"must be 1 (or None)")


def predict(batch, bw, cr, *, seq_len=None, strategy="prism", world_size=None, profile=None,
            model=None, fast: bool = True) -> dict:
    """Predict one configuration (or broadcast arrays of them) on a shipped profile.

    batch: samples per batch (integer >= 1); bw: nominal link rate in Mbit/s (may be None
    for strategy 'single'); cr: Prism compression rate L_p/m (None unless the strategy
    compresses: a cr given to 'single' or 'voltage' is refused, not ignored);
    seq_len: tokens N (default: the profile's model); strategy: 'single', 'voltage' or
    'prism'; world_size: devices P (default 2; 1 or None for single, any other value is
    refused); profile: a name from list_profiles().

    Returns {"latency_ms": batch latency in ms, "per_sample_ms", "energy_j": J per batch
    (None without an energy calibration), "breakdown": {"compute_ms", "staging_ms",
    "comm_ms", "other_ms"}, "interval": {"level", "latency_ms": [lo, hi], "energy_j":
    [lo, hi]}, "analytical_ms": the calibrated physics alone, "profile", "strategy",
    "memory_peak_bytes": predicted peak bytes per device (costmodel.memory; None for arrays)}.
    Scalars in, floats out; arrays in, arrays out. Bad input raises ValueError (one line).
    A scalar query takes CostModel.predict_one (no numpy broadcasting; the same numbers);
    fast=False takes the path as it was (a directory listing per call, the vectorised
    CostModel.predict, memory.peak_for), for comparison (benchmarks/bench_predict.py).
    """
    _check_scalars(batch, bw, cr, seq_len, strategy, world_size)
    cm = load_profile(profile, fast=fast)
    if world_size is None:
        world_size = 2
    if isinstance(strategy, str) and strategy == "single":
        world_size = 1
    p = (cm.predict_one(batch, bw, cr, strategy=strategy, seq_len=seq_len, world_size=world_size,
                        model=model) if fast else None)
    if p is not None:                     # one configuration: floats, no arrays
        fin = _fin
        return {
            "latency_ms": fin(p["latency_ms"]), "per_sample_ms": fin(p["per_sample_ms"]),
            "energy_j": fin(p["energy_j"]),
            "breakdown": {k: fin(p[k]) for k in ("compute_ms", "staging_ms", "comm_ms", "other_ms")},
            "interval": {"level": cm.interval_["level"],
                         "latency_ms": [fin(p["latency_lo_ms"]), fin(p["latency_hi_ms"])],
                         "energy_j": [fin(p["energy_lo_j"]), fin(p["energy_hi_j"])]},
            "analytical_ms": fin(p["analytical_ms"]),
            "profile": DEFAULT_PROFILE if profile is None else profile,
            "strategy": strategy,
            "memory_peak_bytes": _memory_peak(cm, batch, cr, seq_len, strategy, world_size, model,
                                              scalar=True),
        }
    p = cm.predict(batch, bw, cr, strategy=strategy, seq_len=seq_len, world_size=world_size,
                   model=model)
    return {
        "latency_ms": _out(p["latency_ms"]),
        "per_sample_ms": _out(p["per_sample_ms"]),
        "energy_j": _out(p["energy_j"]),
        "breakdown": {k: _out(p[k]) for k in ("compute_ms", "staging_ms", "comm_ms", "other_ms")},
        "interval": {"level": cm.interval_["level"],
                     "latency_ms": [_out(p["latency_lo_ms"]), _out(p["latency_hi_ms"])],
                     "energy_j": [_out(p["energy_lo_j"]), _out(p["energy_hi_j"])]},
        "analytical_ms": _out(p["analytical_ms"]),
        "profile": DEFAULT_PROFILE if profile is None else profile,
        "strategy": strategy if isinstance(strategy, str) else None,
        "memory_peak_bytes": _memory_peak(cm, batch, cr, seq_len, strategy, world_size, model,
                                          fast=fast),
    }


def _fin(x: float):
    return x if math.isfinite(x) else None


def _memory_peak(cm, batch, cr, seq_len, strategy, world_size, model, scalar=False, fast=True):
    """Predicted peak bytes per device (costmodel.memory) for a scalar query; None for
    array queries (the vectorised path stays as it was). scalar: known to be one;
    fast=False: memory.peak_for (as before) instead of _peak (the same numbers)."""
    if not scalar and (not isinstance(strategy, str)
                       or any(np.ndim(v) for v in (batch, cr, seq_len, world_size))):
        return None
    key = (id(cm), model, seq_len, strategy, world_size, batch, cr, fast)
    hit = _PEAKS.get(key)
    if hit is None:
        shape = cm._fast_shape(model) if fast else cm._shape(model)      # the same shape
        shape = shape if seq_len is None else shape_at(shape, int(seq_len))
        hit = (_peak(strategy, shape, int(world_size), int(batch), cr) if fast else
               _peak_for(strategy, shape, world_size=int(world_size), batch=int(batch), cr=cr))
        if len(_PEAKS) > 10_000:
            _PEAKS.clear()
        _PEAKS[key] = hit
    return list(hit)


_PEAKS: dict = {}
_PLANS: dict = {}


def _peak_for(*a, **kw):
    return memory.peak_for(*a, **kw)


def _batch_free_make_plans() -> tuple:
    """make_plan methods whose Plan depends on the batch only through Plan.batch (every
    Formula's but the pipeline's, whose micro-batches follow the batch)."""
    from .strategies import Formula, Galaxy, Prism, Single, TensorParallel

    return (Formula.make_plan, Single.make_plan, Prism.make_plan, TensorParallel.make_plan,
            Galaxy.make_plan)


def _peak(strategy: str, shape, world_size: int, batch: int, cr):
    """memory.peak_for(strategy, shape, ...) (tests/test_predict_fast.py checks they agree):
    for a Formula whose make_plan is batch-free, the Plan is the batch-1 plan (resolved
    once) with its batch replaced (dataclasses.replace), and, without a Formula memory
    hook, each device's peak is memory_breakdown's weights + activations + buffers with
    the weights (which the batch does not change) computed once per plan."""
    f = get_formula(strategy)
    if type(f).make_plan not in _batch_free_make_plans():
        return memory.peak_for(strategy, shape, world_size=world_size, batch=batch, cr=cr)
    opts = {"cr": float(cr)} if cr is not None and f.compresses else {}
    key = (strategy, shape, world_size, opts.get("cr"))
    hit = _PLANS.get(key)
    if hit is None:
        one = make_plan(strategy, shape, world_size=world_size, batch=1, **opts)
        hooked = getattr(one.formula, "memory", None) is not None
        hit = (one, None if hooked else [memory.weights_bytes(one, r) for r in range(one.world_size)])
        if len(_PLANS) > 10_000:
            _PLANS.clear()
        _PLANS[key] = hit
    one, weights = hit
    plan = one if batch == 1 else dataclasses.replace(one, batch=batch)
    if weights is None:
        return memory.memory_peak(plan)
    return [w + memory.activation_bytes(plan, r) + memory.buffer_bytes(plan, r)
            for r, w in enumerate(weights)]
