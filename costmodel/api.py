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


def predict(batch, bw, cr, *, seq_len=None, strategy="prism", world_size=2, profile=None,
            model=None) -> dict:
    """Predict one configuration (or broadcast arrays of them) on a shipped profile.

    batch: samples per batch (integer >= 1); bw: nominal link rate in Mbit/s (may be None
    for strategy 'single'); cr: Prism compression rate L_p/m (ignored unless prism);
    seq_len: tokens N (default: the profile's model); strategy: 'single', 'voltage' or
    'prism'; world_size: devices P (1 for single); profile: a name from list_profiles().

    Returns {"latency_ms": batch latency in ms, "per_sample_ms", "energy_j": J per batch
    (None without an energy calibration), "breakdown": {"compute_ms", "staging_ms",
    "comm_ms", "other_ms"}, "interval": {"level", "latency_ms": [lo, hi], "energy_j":
    [lo, hi]}, "analytical_ms": the calibrated physics alone, "profile", "strategy"}.
    Scalars in, floats out; arrays in, arrays out. Bad input raises ValueError (one line).
    """
    cm = load_profile(profile)
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
    }
