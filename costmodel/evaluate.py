"""Held-out evaluation of the cost model and the measured tables behind the figures.

Torch-free and matplotlib-free: everything here returns numbers (numpy arrays, dicts)
that `costmodel.plots` draws, notebooks print, the benchmarks score and
`python -m costmodel evaluate` writes as JSON.

  measured tables   select_slice, measured_table, adaptive_choice, adaptive_gains
  bandwidth         crossover_bw, bandwidth_sweep, default_bws
  held out          predict_records, leave_one_value_out (+ validation_summary): the
                    hybrid's held-out rows with intervals; held_out: hybrid vs analytical
                    vs random forest per axis, pooled metrics
  decisions         situations (every candidate measured), decision_grid
  files             data_dir, testbed_maps

The analyses built on these (protocol A/B, cross-session, extrapolation in world size)
are in costmodel/analysis.py.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .features import STRATEGIES as MODEL_STRATEGIES
from .perfmap import PerfMap, axis_values, load_perfmap, record_key, record_latency_ms

# the paper's comparison: the strategies the measured tables and figures put side by side
COMPARED = ("single", "voltage", "prism")
PHASES = ("compute_ms", "staging_ms", "comm_ms", "other_ms")
AXES = ("batch", "bw", "cr", "seq_len", "world_size")
TARGETS = ("latency", "compute", "staging", "comm")      # held_out scores these


# ----------------------------------------------------------------------------- files

def data_dir() -> Path:
    """The repository's data/ folder (PRISM_EDGE_DATA overrides it)."""
    env = os.environ.get("PRISM_EDGE_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def testbed_maps(data: Optional[Path] = None) -> list:
    """Emulated-testbed perf maps: data/perfmaps/testbed_*.json, sorted. The environment
    variable PRISM_EDGE_TESTBED_MAP (paths joined by os.pathsep) replaces the glob, so a
    notebook can be pointed at any measured map; its value 'none' means no testbed map."""
    env = os.environ.get("PRISM_EDGE_TESTBED_MAP")
    if env == "none":          # force the no-testbed path (tests, or to skip those figures)
        return []
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return sorted(Path(data or data_dir()).glob("perfmaps/testbed_*.json"))



# ----------------------------------------------------------------------------- measured tables

def as_perfmap(pm) -> PerfMap:
    return pm if isinstance(pm, PerfMap) else load_perfmap(pm)


def mode_of(values):
    c = Counter(v for v in values if v is not None)
    return c.most_common(1)[0][0] if c else None


def select_slice(pm, *, model=None, seq_len=None, world_size=None, bw="max", cr="max") -> dict:
    """Resolve which slice of a perf map a figure shows: model and seq_len (default the
    most frequent), world_size (default the smallest > 1), bw in Mbit/s (a number, None
    for an unshaped link, or 'max' / 'min' of the slice's distributed records), Prism cr
    ('max' / 'min' or a number). Returns the resolved dict."""
    pm = as_perfmap(pm)
    recs = pm.usable()
    if not recs:
        raise ValueError("perf map has no usable records (all failed or excluded)")
    model = model or mode_of(r["model"] for r in recs)
    recs = [r for r in recs if r["model"] == model]
    if not recs:
        raise ValueError(f"model {model!r} is not in the perf map")
    seq_len = seq_len or mode_of(r["seq_len"] for r in recs)
    recs = [r for r in recs if r["seq_len"] == seq_len]
    dist = [r for r in recs if r["strategy"] != "single"]
    if world_size is None:
        ws = sorted({r["world_size"] for r in dist})
        world_size = ws[0] if ws else 2
    dist = [r for r in dist if r["world_size"] == world_size]
    if bw in ("max", "min"):
        bws = sorted({float(r["bw"]) for r in dist if r.get("bw") is not None})
        bw = (bws[-1] if bw == "max" else bws[0]) if bws else None
    if cr in ("max", "min"):
        crs = sorted({float(r["cr"]) for r in dist if r["strategy"] == "prism" and r.get("cr") is not None
                      and same_value(r.get("bw"), bw)})
        cr = (crs[-1] if cr == "max" else crs[0]) if crs else None
    return {"model": model, "seq_len": seq_len, "world_size": world_size, "bw": bw, "cr": cr}


def same_value(a, b, tol=1e-6) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


def _energy(r):
    if r.get("energy_j") is not None:
        return float(r["energy_j"]), "measured"
    if r.get("energy_est_j") is not None:
        return float(r["energy_est_j"]), "estimated"
    return np.nan, None


def measured_table(pm, **select) -> tuple:
    """Measured rows of one slice (see select_slice), per strategy, sorted by batch:
    {strategy: {"batch", "latency_ms", "per_sample_ms", "compute_ms", "staging_ms",
    "comm_ms", "other_ms" (latency minus the three phases, >= 0), "energy_j" (J per batch,
    NaN when absent), "energy_kind" ('measured', 'estimated' or None per row)}}, and the
    resolved selection. Where two records share a batch, the one with more repeats is kept."""
    pm = as_perfmap(pm)
    sel = select_slice(pm, **select)
    out = {}
    for s in COMPARED:
        rows = {}
        for r in pm.usable():
            if r["strategy"] != s or r["model"] != sel["model"] or r["seq_len"] != sel["seq_len"]:
                continue
            if s != "single":
                if r["world_size"] != sel["world_size"] or not same_value(r.get("bw"), sel["bw"]):
                    continue
                if s == "prism" and not same_value(r.get("cr"), sel["cr"]):
                    continue
            n = (r.get("latency_ms") or {}).get("n") or 0
            if r["batch"] not in rows or n > rows[r["batch"]][0]:
                rows[r["batch"]] = (n, r)
        if not rows:
            continue
        recs = [rows[b][1] for b in sorted(rows)]
        lat = np.array([record_latency_ms(r) for r in recs], float)
        ph = {p: np.array([np.nan if r.get(p) is None else r[p] for r in recs], float)
              for p in PHASES[:3]}
        other = lat - ph["compute_ms"] - ph["staging_ms"] - ph["comm_ms"]
        en = [_energy(r) for r in recs]
        batch = np.array([r["batch"] for r in recs], int)
        out[s] = {"batch": batch, "latency_ms": lat, "per_sample_ms": lat / batch, **ph,
                  "other_ms": np.where(np.isfinite(other), np.maximum(other, 0.0), np.nan),
                  "energy_j": np.array([e for e, _ in en], float),
                  "energy_kind": [k for _, k in en]}
    if not out:
        raise ValueError(f"no usable records in the slice {sel}")
    return out, sel


def adaptive_choice(table: dict) -> dict:
    """{batch: strategy} with the lowest measured batch latency among the strategies that
    have that batch (the profiling-driven policy on a perf map)."""
    best = {}
    for s, t in table.items():
        for b, lat in zip(t["batch"], t["latency_ms"]):
            b = int(b)
            if np.isfinite(lat) and (b not in best or lat < best[b][1]):
                best[b] = (s, lat)
    return {b: best[b][0] for b in sorted(best)}


def adaptive_gains(pm, *, model=None, **select) -> dict:
    """Per batch: per-sample latency (ms) and energy (J) of single, Voltage, Prism and the
    adaptive choice, measured; where a measured energy is missing and a fitted CostModel is
    given, its prediction fills the gap (flagged in `energy_source`). Gains of the adaptive
    choice in %: latency and energy vs Voltage, latency and energy vs single device."""
    table, sel = measured_table(pm, **select)
    choice = adaptive_choice(table)
    batches = np.array(sorted(choice), int)
    out = {"batch": batches, "adaptive_mode": [choice[int(b)] for b in batches], "selection": sel,
           "latency_ms": {}, "energy_j": {}, "energy_source": {}}
    for s in COMPARED:
        lat = np.full(len(batches), np.nan)
        en = np.full(len(batches), np.nan)
        src = [None] * len(batches)
        t = table.get(s)
        if t is not None:
            for j, b in enumerate(batches):
                k = np.flatnonzero(t["batch"] == b)
                if k.size:
                    lat[j] = t["per_sample_ms"][k[0]]
                    en[j] = t["energy_j"][k[0]] / b
                    src[j] = t["energy_kind"][k[0]]
        if model is not None and (np.isnan(en).any() or t is None):
            miss = np.isnan(en)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = model.predict(batches[miss], sel["bw"] if sel["bw"] is not None else _unshaped(model),
                                  sel["cr"], strategy=s, seq_len=sel["seq_len"],
                                  world_size=1 if s == "single" else sel["world_size"], warn=False)
            pe = np.asarray(p["energy_j"], float) / batches[miss]
            en[miss] = pe
            for j in np.flatnonzero(miss):
                src[j] = "model" if np.isfinite(en[j]) else None
        out["latency_ms"][s], out["energy_j"][s], out["energy_source"][s] = lat, en, src
    lat_a = np.array([out["latency_ms"][m][j] for j, m in enumerate(out["adaptive_mode"])])
    en_a = np.array([out["energy_j"][m][j] for j, m in enumerate(out["adaptive_mode"])])
    out["latency_ms"]["adaptive"], out["energy_j"]["adaptive"] = lat_a, en_a
    out["energy_source"]["adaptive"] = [out["energy_source"][m][j] for j, m in enumerate(out["adaptive_mode"])]

    def gain(ref, new):
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * (ref - new) / ref

    out["gain_pct"] = {
        "latency_vs_voltage": gain(out["latency_ms"]["voltage"], lat_a),
        "energy_vs_voltage": gain(out["energy_j"]["voltage"], en_a),
        "latency_vs_single": gain(out["latency_ms"]["single"], lat_a),
        "energy_vs_single": gain(out["energy_j"]["single"], en_a),
    }
    es = out["energy_source"]
    out["gain_from_model"] = {   # True where an operand is a cost-model estimate, not data
        "latency_vs_voltage": np.zeros(len(batches), bool),
        "latency_vs_single": np.zeros(len(batches), bool),
        "energy_vs_voltage": np.array([es["voltage"][j] == "model" or es["adaptive"][j] == "model"
                                       for j in range(len(batches))]),
        "energy_vs_single": np.array([es["single"][j] == "model" or es["adaptive"][j] == "model"
                                      for j in range(len(batches))]),
    }
    return out


def _unshaped(model):
    bw = (getattr(model, "training_", None) or {}).get("unshaped_bw")
    return float(bw) if bw else np.nan


# ----------------------------------------------------------------------------- bandwidth

def crossover_bw(bws, a, b) -> Optional[float]:
    """The bandwidth (Mbit/s) above which curve `a` stays at or below curve `b` on the
    sampled grid (linear interpolation at the last sign change), i.e. where distributing
    starts to pay for good; None when `a` is above `b` at the top of the grid or below it
    everywhere (no crossover in range)."""
    bws, d = np.asarray(bws, float), np.asarray(a, float) - np.asarray(b, float)
    ok = np.isfinite(d)
    bws, d = bws[ok], d[ok]
    if d.size < 2 or d[-1] > 0:
        return None
    above = np.flatnonzero(d > 0)
    if above.size == 0:
        return None
    i = int(above[-1])
    return float(bws[i] + (bws[i + 1] - bws[i]) * d[i] / (d[i] - d[i + 1]))


def bandwidth_sweep(model, *, batch: int, bws=None, cr: float = 9.9, seq_len=None, world_size: int = 2,
                    model_name=None) -> dict:
    """Predicted per-sample latency (ms, with the interval) of single, Voltage and Prism at
    `cr` over `bws` (Mbit/s, default 200-900 every 5), and the Prism/single and
    Voltage/single crossover bandwidths (None if none in range)."""
    bws = np.arange(200.0, 900.1, 5.0) if bws is None else np.asarray(bws, float)
    out = {"bw": bws, "batch": batch, "cr": cr, "per_sample_ms": {}, "lo": {}, "hi": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s, c in (("single", None), ("voltage", None), ("prism", cr)):
            p = model.predict(batch, bws, c, strategy=s, seq_len=seq_len,
                              world_size=1 if s == "single" else world_size, model=model_name, warn=False)
            out["per_sample_ms"][s] = np.broadcast_to(p["per_sample_ms"], bws.shape).astype(float)
            out["lo"][s] = np.broadcast_to(p["latency_lo_ms"] / batch, bws.shape).astype(float)
            out["hi"][s] = np.broadcast_to(p["latency_hi_ms"] / batch, bws.shape).astype(float)
    out["crossover_bw"] = {s: crossover_bw(bws, out["per_sample_ms"][s], out["per_sample_ms"]["single"])
                           for s in ("prism", "voltage")}
    return out


def default_bws(model, n: int = 141) -> np.ndarray:
    """The bw grid (Mbit/s) of the bandwidth figure: the model's fitted bw range when it
    has one, else the paper's 200-900 sweep."""
    rng = (getattr(model, "ranges_", None) or {}).get("bw")
    lo, hi = (rng if rng and rng[1] > rng[0] else (200.0, 900.0))
    return np.linspace(lo, hi, n)


# ----------------------------------------------------------------------------- held out

PREDICTED = ("latency_ms", "latency_lo_ms", "latency_hi_ms", "compute_ms", "staging_ms", "comm_ms",
             "other_ms")


def predict_records(cm, recs, unshaped_bw=None) -> dict:
    """The model's prediction of each record's configuration (its model, strategy, batch,
    bw, cr, seq_len, world size): {key: array over recs} for the keys in PREDICTED (ms).
    Distributed records with bw null are predicted at unshaped_bw (NaN if None)."""
    out = {k: np.full(len(recs), np.nan) for k in PREDICTED}
    names = np.array([r["model"] for r in recs], dtype=object)
    for name in np.unique(names):
        idx = np.flatnonzero(names == name)
        rs = [recs[i] for i in idx]
        bw = [r["bw"] if r.get("bw") is not None else (unshaped_bw if r["strategy"] != "single" else None)
              for r in rs]
        p = cm.predict(np.array([r["batch"] for r in rs]),
                       np.array([np.nan if v is None else v for v in bw], float),
                       np.array([np.nan if r.get("cr") is None else r["cr"] for r in rs], float),
                       strategy=np.array([r["strategy"] for r in rs], dtype=object),
                       seq_len=np.array([r["seq_len"] for r in rs]),
                       world_size=np.array([r["world_size"] for r in rs]), model=name, warn=False)
        for k in out:
            out[k][idx] = p[k]
    return out


def leave_one_value_out(pm, *, axes: Sequence[str] = ("batch", "bw", "cr", "seq_len", "world_size"),
                        **cm_kwargs) -> dict:
    """Held-out validation: for each axis with >= 2 values, for each value, fit a CostModel
    (cm_kwargs: its settings, e.g. unshaped_bw, cv_folds) on the map without that value and
    predict the rows that have it. Rows an axis does not apply to (single's bw and cr, the
    world size 1 of single) stay in training. Returns row arrays: axis, value, strategy,
    batch, measured_ms, predicted_ms, lo_ms, hi_ms (batch latency, ms) and `skipped`
    ([axis, value, reason] for folds that could not be fitted)."""
    from .model import CostModel

    pm = as_perfmap(pm)
    recs = [r for r in pm.usable(breakdown=True) if r["strategy"] in MODEL_STRATEGIES]
    cols = {k: [] for k in ("axis", "value", "strategy", "batch", "measured_ms", "predicted_ms", "lo_ms", "hi_ms")}
    skipped = []
    for ax in axes:
        vals = axis_values(recs, ax)
        if len(vals) < 2:
            continue
        for v in vals:
            test = [r for r in recs if r.get(ax) == v]
            train = [r for r in recs if r.get(ax) != v]
            if len(train) < 6 or not test:
                skipped.append([ax, v, f"{len(train)} training rows"])
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cm = CostModel(**cm_kwargs).fit(PerfMap(meta=dict(pm.meta), records=train))
            except ValueError as e:
                skipped.append([ax, v, str(e).splitlines()[0]])
                continue
            p = predict_records(cm, test, cm_kwargs.get("unshaped_bw"))
            cols["axis"] += [ax] * len(test)
            cols["value"] += [v] * len(test)
            cols["strategy"] += [r["strategy"] for r in test]
            cols["batch"] += [r["batch"] for r in test]
            cols["measured_ms"] += [record_latency_ms(r) for r in test]
            cols["predicted_ms"] += list(p["latency_ms"])
            cols["lo_ms"] += list(p["latency_lo_ms"])
            cols["hi_ms"] += list(p["latency_hi_ms"])
    out = {k: np.array(v, dtype=object if k in ("axis", "strategy", "value") else float) for k, v in cols.items()}
    out["skipped"] = skipped
    return out


def validation_summary(res: dict) -> dict:
    """Per held-out axis: n, median / P90 absolute % error of batch latency, and the share
    of measured values inside the prediction interval."""
    out = {}
    for ax in dict.fromkeys(res["axis"]):
        m = res["axis"] == ax
        ape = np.abs(res["predicted_ms"][m] / res["measured_ms"][m] - 1) * 100
        inside = (res["measured_ms"][m] >= res["lo_ms"][m]) & (res["measured_ms"][m] <= res["hi_ms"][m])
        out[str(ax)] = {"n": int(m.sum()), "values": len(set(res["value"][m])),
                        "median_ape": float(np.median(ape)), "p90_ape": float(np.percentile(ape, 90)),
                        "coverage": float(inside.mean())}
    return out


def _targets(recs) -> dict:
    out = {"latency": np.array([record_latency_ms(r) for r in recs])}
    for p in TARGETS[1:]:
        out[p] = np.array([r[f"{p}_ms"] for r in recs], float)
    return out


def _raw_X(recs, unshaped_bw, strategies=COMPARED) -> np.ndarray:
    """The random forest's raw features: strategy one-hot, batch, bw, cr, seq_len, P."""
    rows = []
    for r in recs:
        bw = r.get("bw")
        if bw is None and r["strategy"] != "single":
            bw = unshaped_bw
        rows.append([float(r["strategy"] == s) for s in strategies]
                    + [r["batch"], bw or 0.0, r.get("cr") or 0.0, r["seq_len"], r["world_size"]])
    return np.array(rows, float)


def held_out(pm, *, unshaped_bw=None, quick: bool = False, axes=AXES, subsets=None, variants=None,
             keep_predictions: bool = False) -> dict:
    """Leave-one-value-out along each axis with >= 2 values, for the hybrid, the calibrated
    analytical model alone (residual=False) and a random forest on raw features; the
    held-out predictions of every fold pooled per axis and scored (model.metrics) for total
    latency and each phase: res[axis] = {"values", "hybrid": {target: metrics}, ...}.
    Rows an axis does not apply to (single's bw and cr) always stay in training.

    quick: 3 folds / 60 trees (else 5 / 150; forest 100 / 300 trees). subsets: {name:
    strategies or None} -> res[axis]["subsets"][name], the same metrics over those
    strategies' rows only. variants: {name: CostModel kwargs} extra hybrid models (an
    ablation), scored like the others. keep_predictions: also res[axis]["predictions"] =
    {"keys": record keys, model: held-out latency (ms), "hybrid_phases": {phase: the
    hybrid's held-out phase time (ms)}}."""
    from sklearn.ensemble import RandomForestRegressor

    from .model import CostModel, metrics

    pm = as_perfmap(pm)
    recs = pm.usable(breakdown=True)
    Y = _targets(recs)
    strat = np.array([r["strategy"] for r in recs], dtype=object)
    onehot = COMPARED + tuple(s for s in ("tensor_parallel", "galaxy") if s in set(strat))
    kw = dict(unshaped_bw=unshaped_bw, cv_folds=3 if quick else 5,
              residual_estimators=60 if quick else 150)
    models = [("hybrid", kw), ("analytical", dict(kw, residual=False))]
    models += [(name, dict(kw, **v)) for name, v in (variants or {}).items()]
    res = {}
    for ax in axes:
        vals = axis_values(recs, ax)
        if len(vals) < 2:
            continue
        P = {m: {t: np.full(len(recs), np.nan) for t in TARGETS} for m in [n for n, _ in models] + ["forest"]}
        for v in vals:
            te = np.array([r.get(ax) == v for r in recs])
            tr = ~te
            if tr.sum() < 6:
                continue
            train = PerfMap(meta=dict(pm.meta), records=[r for r, t in zip(recs, tr) if t])
            test = [r for r, t in zip(recs, te) if t]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for name, mkw in models:
                    cm = CostModel(**mkw)
                    try:
                        cm.fit(train)
                    except ValueError as e:
                        print(f"  skip {ax}={v} {name}: {e}", file=sys.stderr)
                        continue
                    p = predict_records(cm, test, unshaped_bw)
                    for t in TARGETS:
                        P[name][t][te] = p["latency_ms" if t == "latency" else f"{t}_ms"]
            rf = RandomForestRegressor(n_estimators=100 if quick else 300, random_state=0, n_jobs=1)
            Ytr = np.stack([Y[t][tr] for t in TARGETS], axis=1)
            rf.fit(_raw_X([r for r, t in zip(recs, tr) if t], unshaped_bw, onehot), Ytr)
            pr = rf.predict(_raw_X(test, unshaped_bw, onehot))
            for j, t in enumerate(TARGETS):
                P["forest"][t][te] = pr[:, j]
        res[ax] = {"values": vals, **{m: {t: metrics(P[m][t], Y[t]) for t in TARGETS} for m in P}}
        if keep_predictions:
            res[ax]["predictions"] = {"keys": [record_key(r) for r in recs],
                                      **{m: P[m]["latency"].tolist() for m in P},
                                      "hybrid_phases": {t: P["hybrid"][t].tolist() for t in TARGETS if t != "latency"}}
        if subsets:
            res[ax]["subsets"] = {}
            for name, ss in subsets.items():
                mk = np.ones(len(recs), bool) if ss is None else np.isin(strat, list(ss))
                res[ax]["subsets"][name] = {"n_rows": int(mk.sum()), **{
                    m: {t: metrics(P[m][t][mk], Y[t][mk]) for t in TARGETS} for m in P}}
    return res


# ----------------------------------------------------------------------------- decisions

def requested_cr(r: dict) -> float:
    """The CR the sweep asked for (the resolved L_p/m differs slightly per token count)."""
    return r.get("cr_requested") or r["cr"]


def candidate_label(r: dict) -> str:
    """A record's decision candidate: 'prism(cr=9.9)' for Prism, else its strategy."""
    return f"prism(cr={requested_cr(r):g})" if r["strategy"] == "prism" else r["strategy"]


def situations(pm: PerfMap, crs, strategies=("voltage",)) -> dict:
    """{(model, seq, P, batch, bw): {label: record}} for every situation whose candidates
    (single, `strategies`, Prism at each of `crs`) were all measured."""
    single = {(r["model"], r["seq_len"], r["batch"]): r for r in pm.usable() if r["strategy"] == "single"}
    out = {}
    for r in pm.usable():
        if r["strategy"] == "single" or r.get("bw") is None:
            continue
        key = (r["model"], r["seq_len"], r["world_size"], r["batch"], float(r["bw"]))
        out.setdefault(key, {})[candidate_label(r)] = r
    full = {}
    want = set(strategies) | {f"prism(cr={c:g})" for c in crs}
    for key, d in out.items():
        s = single.get((key[0], key[1], key[3]))
        if s is not None and want <= set(d):
            full[key] = {"single": s, **{k: d[k] for k in want}}
    return full


def decision_grid(model, *, seq_len=None, batches=tuple(range(1, 33)), bws=None, objective="latency",
                  world_size: int = 2, perfmap=None, candidates=None, max_cr=None, model_name=None) -> dict:
    """The DecisionTable over a batch x bw grid: the chosen label per cell (`best`, index
    into `labels`), the gain of the choice over single device in % (`gain_single_pct`,
    0 where single is chosen; None if single is not a candidate) and over the runner-up
    (`margin_pct`), and whether the model extrapolates on seq_len."""
    from .decision import DecisionTable

    bws = np.arange(50.0, 1000.1, 10.0) if bws is None else np.asarray(bws, float)
    kw = {"candidates": candidates} if candidates else {}     # else the table's default candidates
    dt = DecisionTable(model, perfmap=perfmap, **kw, objective=objective, seq_len=seq_len, world_size=world_size,
                       batches=batches, bws=bws, max_cr=max_cr, model_name=model_name)
    key = dt.latency if objective == "latency" else (dt.energy if objective == "energy" else dt.score)
    best_v = np.take_along_axis(key, dt.best[None], 0)[0]
    gain = None
    if "single" in dt.labels:
        ref = key[dt.labels.index("single")]
        gain = 100.0 * (ref - best_v) / ref
    rng = (getattr(model, "ranges_", None) or {}).get("seq_len")
    n = seq_len if seq_len is not None else next(
        m["seq_len"] for m in model.models_ if model_name in (None, m["name"]))
    extrap = bool(rng and not (rng[0] - 1e-9 <= n <= rng[1] + 1e-9))
    return {"table": dt, "labels": dt.labels, "best": dt.best, "batch": dt.batches, "bw": dt.bws,
            "gain_single_pct": gain, "margin_pct": 100.0 * dt.margin, "seq_len": n,
            "extrapolated": extrap, "objective": objective}


def longer_seq_len(n: int) -> int:
    """A ViT token count about 3x longer than n (image side x sqrt(3), patch 16): 197 -> 577."""
    side = round(((n - 1) ** 0.5) * 3 ** 0.5)
    return int(side * side + 1)


