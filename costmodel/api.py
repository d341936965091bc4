"""One-call prediction on shipped, fitted profiles (costmodel/profiles/*.json).

    >>> import costmodel
    >>> costmodel.list_profiles()
    ['jetson-orin-nano']
    >>> costmodel.predict(16, 500, 9.9)["latency_ms"]        # ms for the batch of 16

A profile is a `CostModel` saved as JSON; regenerate one from a perf map with
`python -m costmodel fit data/perfmaps/X.json --out costmodel/profiles/Y.json`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import checks
from .features import QueryError
from .model import CostModel

PROFILE_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "jetson-orin-nano"
_LOADED: dict = {}


def list_profiles() -> list:
    """Names of the shipped fitted profiles (file stems in costmodel/profiles/)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(name: str | None = None) -> CostModel:
    """The fitted CostModel of a shipped profile (cached after the first load)."""
    name = DEFAULT_PROFILE if name is None else name
    if not isinstance(name, str) or name not in list_profiles():
        raise QueryError(f"unknown profile {name!r}; known: {list_profiles()}")
    path = PROFILE_DIR / f"{name}.json"
    mtime = path.stat().st_mtime_ns
    hit = _LOADED.get(name)
    if hit is None or hit[0] != mtime:
        hit = (mtime, CostModel.load(path))
        _LOADED[name] = hit
    return hit[1]


def _out(v):
    a = np.asarray(v, float)
    if a.ndim == 0:
        x = float(a)
        return None if not np.isfinite(x) else x
    return a


def _check_scalars(batch, bw, cr, seq_len, strategy, world_size):
    """Scalar arguments checked at the boundary (checks.py: NaN / inf refused, the range
    named), and arguments the strategy does not take refused rather than ignored."""
    from .strategies import get_formula, list_strategies

    if np.ndim(batch) == 0:
        checks.count("batch", batch)
    if bw is not None and np.ndim(bw) == 0:
        checks.positive("bw", bw, unit="Mbit/s")
    if cr is not None and np.ndim(cr) == 0:
        checks.positive("cr", cr)
    if seq_len is not None and np.ndim(seq_len) == 0:
        checks.count("seq_len", seq_len, minimum=2)
    if world_size is not None and np.ndim(world_size) == 0:
        checks.count("world_size", world_size)
    if not isinstance(strategy, str):
        return
    try:
        f = get_formula(strategy)
    except ValueError as e:
        raise QueryError(str(e)) from None
    if cr is not None and np.ndim(cr) == 0 and not f.compresses:
        raise QueryError(f"cr={cr:g} applies to {list_strategies(compresses=True)}, not to "
                         f"{strategy!r}; give cr=None")
    if not f.distributed and world_size is not None and np.ndim(world_size) == 0 and world_size != 1:
        raise QueryError(f"strategy {strategy!r} runs on one device; world_size={world_size} "
                         f"must be 1 (or None)")


def predict(batch, bw, cr, *, seq_len=None, strategy="prism", world_size=None, profile=None,
            model=None) -> dict:
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
    """
    _check_scalars(batch, bw, cr, seq_len, strategy, world_size)
    cm = load_profile(profile)
    if world_size is None:
        world_size = 2
    if isinstance(strategy, str) and strategy == "single":
        world_size = 1
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
        "memory_peak_bytes": _memory_peak(cm, batch, cr, seq_len, strategy, world_size, model),
    }


def _memory_peak(cm, batch, cr, seq_len, strategy, world_size, model):
    """Predicted peak bytes per device (costmodel.memory) for a scalar query; None for
    array queries (the vectorised path stays as it was)."""
    if not isinstance(strategy, str) or any(np.ndim(v) for v in (batch, cr, seq_len, world_size)):
        return None
    key = (id(cm), model, seq_len, strategy, world_size, batch, cr)
    hit = _PEAKS.get(key)
    if hit is None:
        from .features import shape_at
        from .memory import peak_for

        shape = cm._shape(model)
        shape = shape if seq_len is None else shape_at(shape, int(seq_len))
        hit = peak_for(strategy, shape, world_size=int(world_size), batch=int(batch), cr=cr)
        if len(_PEAKS) > 10_000:
            _PEAKS.clear()
        _PEAKS[key] = hit
    return list(hit)


_PEAKS: dict = {}
