"""Physics features of configurations, vectorised, from the shared formulas (formulas.py).

Everything a plan gives scales linearly with the batch (FLOPs, bytes sent, bytes
staged), so each distinct (strategy, model shape, world_size, cr, exchange) is resolved
once with `formulas.make_plan(batch=1)` and multiplied by the batch array. That keeps a
100k-configuration query at a few hundred plan resolutions at most.

Quantities are those of rank 0, the terminal device whose phase times a perf map
records (docs/perfmap.md).

Strategies: every entry of the registry in costmodel/strategies.py: single, voltage,
prism (row split, one pairwise exchange per block) and the head/column splits
tensor_parallel and galaxy (Formula.splits_weights). The latter resolve with the
runtime's defaults unless a record says otherwise (`tp` options):
even heads / columns, tensor_parallel's all-reduce collective "native" (GLOO's ring),
galaxy's tiles = 1. For them `rows` is all N tokens (every device runs its heads and
columns over all rows) and `flops` is rank 0's share.

Message steps. `n_exchanges` counts collectives per pass (the formulas' Plan.n_exchanges:
one per block for voltage/prism, 2 all-reduces per block for tensor_parallel, 2
reduce-scatters + 2 all-gathers per block for galaxy). `n_messages` counts the
latency-bearing message steps on the wire per pass, one after the other:
  voltage / prism (pairwise): 1 per exchange (the P-1 peer messages are in flight
    together), so n_messages == n_exchanges;
  tensor_parallel "native": a ring all-reduce takes 2 (P-1) steps (reduce-scatter ring
    then all-gather ring), so 2 (P-1) per all-reduce;
  tensor_parallel "pairwise": reduce-scatter + all-gather, 2 steps per all-reduce;
  galaxy: 1 step per collective per tile (a message cut into `tiles` row tiles is
    `tiles` messages), so tiles per collective.
The comm phase's per-message latency multiplies n_messages (model.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .formulas import ModelShape
from .strategies import find_formula, get_formula, list_strategies, make_plan

TP_OPTIONS = ("heads", "cols", "collective", "tiles", "k")   # k: coformer's blocks per aggregation


def __getattr__(name):
    # STRATEGIES: every registered strategy, read from the registry at each access
    if name == "STRATEGIES":
        return tuple(list_strategies())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class QueryError(ValueError):
    """A configuration the cost model cannot answer (one line, names what is allowed)."""


@dataclass(frozen=True)
class PerSample:
    """Rank-0 quantities of one sample (batch 1) of a resolved plan."""

    flops: float          # FLOPs of rank 0 (blocks, own embedding, head on rank 0)
    flops_all: float      # FLOPs of all devices together (energy is paid on every device)
    rows: int             # query rows rank 0 processes per block (all N for TP / galaxy)
    n_exchanges: int      # exchanges (collectives) per forward pass
    n_messages: int       # latency-bearing message steps per forward pass (module docstring)
    wire_bytes: float     # max(bytes sent, bytes received) by rank 0 per pass
    staged_bytes: float   # host<->device bytes of rank 0 per pass
    m: float              # segment means (nan unless prism)
    cr: float             # resolved compression rate (nan unless prism)


def shape_at(base: ModelShape, seq_len: int) -> ModelShape:
    """`base` at another token count: same dimensions, embedding FLOPs scaled by the
    number of patch tokens (ViT: seq_len - 1 patches plus CLS)."""
    seq_len = int(seq_len)
    if seq_len == base.seq_len:
        return base
    if seq_len < 2:
        raise QueryError(f"seq_len={seq_len} must be an integer >= 2")
    scale = (seq_len - 1) / max(base.seq_len - 1, 1)
    return dataclasses.replace(base, seq_len=seq_len, embed_flops=base.embed_flops * scale)


_CACHE: dict = {}


def tp_key(opts) -> tuple | None:
    """Hashable form of tensor_parallel / galaxy options (a dict with any of heads, cols,
    collective, tiles; None or {} = the runtime defaults)."""
    if not opts:
        return None
    bad = sorted(set(opts) - set(TP_OPTIONS))
    if bad:
        raise QueryError(f"unknown tensor_parallel/galaxy option(s) {bad}; known: {list(TP_OPTIONS)}")
    out = tuple((k, tuple(int(x) for x in opts[k]) if k in ("heads", "cols") else opts[k])
                for k in TP_OPTIONS if opts.get(k) is not None)
    return out or None


def tp_is_default(strategy: str, shape: ModelShape, world_size: int, opts) -> bool:
    """Whether tensor_parallel / galaxy options resolve to the runtime defaults (even
    heads / columns, collective native for tensor_parallel, tiles 1)."""
    if not opts:
        return True
    try:
        a = make_plan(strategy, shape, world_size=int(world_size), **dict(tp_key(opts) or ()))
    except ValueError:
        return False
    b = make_plan(strategy, shape, world_size=int(world_size))
    return all(getattr(a, k, None) == getattr(b, k, None)
               for k in ("heads_split", "cols_split", "collective", "tiles", "k"))


def per_sample(strategy: str, shape: ModelShape, world_size: int, cr: float | None,
               exchange: str = "pairwise", m: int | None = None, tp: tuple | None = None) -> PerSample:
    """Resolve one plan at batch 1 (cached); raises QueryError with one line.
    tp: tp_key() of tensor_parallel / galaxy options (None = the runtime defaults)."""
    key = (strategy, shape, int(world_size), None if cr is None else float(cr), exchange, m, tp)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    try:
        f = get_formula(strategy)
    except ValueError as e:
        raise QueryError(str(e)) from None
    try:
        if f.compresses:
            if m is not None:
                plan = make_plan(strategy, shape, world_size=int(world_size), batch=1, m=int(m),
                                 exchange=exchange)
            else:
                if cr is None or not np.isfinite(cr):
                    raise QueryError(f"strategy {strategy!r} needs cr (compression rate L_p/m)")
                plan = make_plan(strategy, shape, world_size=int(world_size), batch=1,
                                 cr=float(cr), exchange=exchange)
        elif f.splits_weights:
            plan = make_plan(strategy, shape, world_size=int(world_size), batch=1, exchange=exchange,
                             **dict(tp or ()))
        else:
            if tp:
                raise QueryError(f"options {[k for k, _ in tp]} apply to "
                                 f"{list_strategies(splits_weights=True)}, not to {strategy!r}")
            plan = make_plan(strategy, shape, world_size=int(world_size) if f.distributed else 1,
                             batch=1, exchange=exchange)
    except QueryError:
        raise
    except ValueError as e:
        raise QueryError(str(e)) from None
    ps = PerSample(
        flops=plan.flops(0), flops_all=sum(plan.flops(r) for r in range(plan.world_size)),
        rows=shape.seq_len if f.all_rows or f.splits_weights else plan.sizes[0],
        n_exchanges=plan.n_exchanges, n_messages=plan.n_messages,
        wire_bytes=float(max(plan.comm_bytes(0), plan.recv_bytes(0))),
        staged_bytes=float(plan.staged_bytes(0)),
        m=float(plan.m) if plan.m is not None else np.nan,
        cr=float(plan.cr) if plan.cr is not None else np.nan)
    if len(_CACHE) > 100_000:
        _CACHE.clear()
    _CACHE[key] = ps
    return ps


# Columns of the physics feature matrix (one row per configuration).
FEATURES = ("flops", "flops_all", "rows", "flops_per_row", "n_exchanges", "n_messages", "wire_bytes",
            "staged_bytes", "comm_ms_nominal", "batch", "bw", "cr", "seq_len", "world_size")


def physics(strategy, batch, bw, cr, seq_len, world_size, shape: ModelShape,
            exchange: str = "pairwise", m=None, tp=None) -> dict:
    """Physics features of broadcast configuration arrays (one model shape).

    batch: samples per batch; bw: nominal link rate in Mbit/s (ignored for single);
    cr: prism compression rate (ignored otherwise); seq_len: tokens N; world_size: P;
    m: prism segment means per row (None = from cr); tp: tensor_parallel / galaxy
    options (heads / cols / collective / tiles): one dict for every such row, or one
    dict-or-None per (flattened) configuration; None = the runtime defaults.
    Returns a dict of float arrays named as FEATURES plus 'strategy' (str array);
    `comm_ms_nominal` is wire bits / bw in ms, the link time at 100 % efficiency.
    """
    strategy, batch, bw, cr, seq_len, world_size = np.broadcast_arrays(
        np.asarray(strategy, dtype=object), np.asarray(batch, dtype=float),
        np.asarray(bw, dtype=float), np.asarray(cr, dtype=float),
        np.asarray(seq_len, dtype=float), np.asarray(world_size, dtype=float))
    m_arr = None if m is None else np.broadcast_to(np.asarray(m, dtype=object), strategy.shape)
    shp = strategy.shape
    strategy, batch, bw, cr, seq_len, world_size = (a.ravel() for a in (strategy, batch, bw, cr, seq_len, world_size))
    n = strategy.size
    if n == 0:
        raise QueryError("empty query")
    bad = ~np.isfinite(batch) | (batch < 1) | (batch != np.round(batch))
    if bad.any():
        raise QueryError(f"batch={batch[bad][0]:g} must be an integer >= 1")
    if (~np.isfinite(seq_len) | (seq_len < 2) | (seq_len != np.round(seq_len))).any():
        raise QueryError(f"seq_len must be an integer >= 2, got {seq_len[~np.isfinite(seq_len) | (seq_len < 2) | (seq_len != np.round(seq_len))][0]:g}")
    known = set(list_strategies())
    unknown = [x for x in np.unique(strategy) if x not in known]
    if unknown:
        raise QueryError(f"unknown strategy {unknown[0]!r}; known: {sorted(known)}")
    local = set(list_strategies(distributed=False))
    is_single = np.isin(strategy, list(local)) if local else np.zeros(strategy.shape, bool)
    ws = np.where(is_single, 1.0, world_size)
    if (~np.isfinite(ws) | (ws < 1) | (ws != np.round(ws))).any():
        raise QueryError("world_size must be an integer >= 1")
    dist = ~is_single & (ws > 1)
    badbw = dist & (~np.isfinite(bw) | (bw <= 0))
    if badbw.any():
        raise QueryError(f"bw={bw[badbw][0]:g}: a distributed strategy needs a positive link rate bw in Mbit/s")
    badbw = np.isfinite(bw) & (bw <= 0)
    if badbw.any():
        raise QueryError(f"bw={bw[badbw][0]:g} Mbit/s must be a positive number")
    is_prism = np.isin(strategy, list_strategies(compresses=True))
    cr_eff = np.where(is_prism, cr, np.nan)

    # resolve each distinct configuration (apart from batch and bw) once
    keys = np.stack([np.unique(strategy, return_inverse=True)[1].ravel().astype(float),
                     np.nan_to_num(cr_eff, nan=-1.0), seq_len, ws], axis=1)
    if m_arr is not None:
        mm = np.array([-1.0 if v is None else float(v) for v in m_arr.ravel()])
        keys = np.concatenate([keys, mm[:, None]], axis=1)
    tpv = None
    if tp is not None:
        tpv = np.empty(n, dtype=object)
        if isinstance(tp, dict):       # one set of options for every TP / galaxy row
            k, split = tp_key(tp), set(list_strategies(splits_weights=True))
            for i, s in enumerate(strategy):
                tpv[i] = k if s in split else None
        else:
            seq = list(np.asarray(tp, dtype=object).ravel()) if isinstance(tp, np.ndarray) else list(tp)
            if len(seq) != n:
                raise QueryError(f"tp has {len(seq)} entries for {n} configurations")
            for i, o in enumerate(seq):
                tpv[i] = tp_key(o)
        codes: dict = {}
        tcode = np.array([codes.setdefault(k, len(codes)) for k in tpv], float)
        keys = np.concatenate([keys, tcode[:, None]], axis=1)
    uniq, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inv = inv.ravel()
    cols = ("flops", "flops_all", "rows", "n_exchanges", "n_messages", "wire_bytes", "staged_bytes",
            "m", "cr")
    per = np.empty((len(uniq), len(cols)))
    for g, i in enumerate(first):
        mi = int(keys[i, 4]) if m_arr is not None and keys[i, 4] >= 1 else None
        ps = per_sample(str(strategy[i]), shape_at(shape, int(seq_len[i])), int(ws[i]),
                        None if not np.isfinite(cr_eff[i]) else float(cr_eff[i]), exchange, mi,
                        None if tpv is None else tpv[i])
        per[g] = [getattr(ps, c) for c in cols]
    out = {c: per[inv, j] for j, c in enumerate(cols)}
    f = {
        "strategy": strategy,
        "flops": out["flops"] * batch,
        "flops_all": out["flops_all"] * batch,
        "rows": out["rows"] * batch,
        "flops_per_row": out["flops"] / out["rows"],
        "n_exchanges": out["n_exchanges"],
        "n_messages": out["n_messages"],
        "wire_bytes": out["wire_bytes"] * batch,
        "staged_bytes": out["staged_bytes"] * batch,
        "batch": batch, "bw": np.where(dist, bw, np.nan), "cr": out["cr"],
        "m": out["m"], "seq_len": seq_len, "world_size": ws,
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        f["comm_ms_nominal"] = np.where(dist, f["wire_bytes"] * 8.0 / (f["bw"] * 1e6) * 1e3, 0.0)
    f["_shape"] = shp
    return f


def physics_one(strategy: str, batch: float, bw: float, cr: float, seq_len: float, world_size: float,
                shape: ModelShape, exchange: str = "pairwise") -> dict | None:
    """physics() of one configuration (tp options default, m from cr), in Python floats:
    the same features, computed by the same operations on float64 values. Arguments are
    floats (bw / cr NaN when not given). Returns None for anything physics() would
    refuse (unknown strategy, a batch / seq_len / world_size / bw out of range, a plan
    that does not resolve), so the caller can let physics() raise its own error."""
    f = find_formula(strategy) if isinstance(strategy, str) else None
    if f is None:
        return None
    if not (math.isfinite(batch) and batch >= 1 and batch == round(batch)):
        return None
    if not (math.isfinite(seq_len) and seq_len >= 2 and seq_len == round(seq_len)):
        return None
    single = f.distributed == False  # noqa: E712  (list_strategies(distributed=False))
    ws = 1.0 if single else world_size
    if not (math.isfinite(ws) and ws >= 1 and ws == round(ws)):
        return None
    dist = not single and ws > 1
    if dist and not (math.isfinite(bw) and bw > 0):
        return None
    if math.isfinite(bw) and bw <= 0:
        return None
    cr_eff = cr if f.compresses == True else math.nan  # noqa: E712
    try:
        ps = per_sample(strategy, shape_at(shape, int(seq_len)), int(ws),
                        None if not math.isfinite(cr_eff) else float(cr_eff), exchange, None, None)
    except QueryError:
        return None
    wire = ps.wire_bytes * batch
    bw_out = bw if dist else math.nan
    return {
        "strategy": strategy,
        "flops": ps.flops * batch, "flops_all": ps.flops_all * batch, "rows": ps.rows * batch,
        "flops_per_row": ps.flops / ps.rows, "n_exchanges": float(ps.n_exchanges),
        "n_messages": float(ps.n_messages), "wire_bytes": wire,
        "staged_bytes": ps.staged_bytes * batch, "batch": batch, "bw": bw_out, "cr": ps.cr,
        "m": ps.m, "seq_len": seq_len, "world_size": ws,
        "comm_ms_nominal": wire * 8.0 / (bw_out * 1e6) * 1e3 if dist else 0.0,
    }
