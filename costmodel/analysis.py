"""Analyses of the measured testbed maps behind docs/costmodel.md, as functions that
return JSON-ready dicts (`python -m costmodel evaluate protocol-ab | cross-session |
extrapolation`; results in benchmarks/results/).

  protocol_ab     vit_tiny's 378 configurations measured in three sessions with three
                  protocols (p2: 5 repeats in one burst; p2a: adaptive 5-25 repeats until
                  the median's robust relative standard error is <= 1.5 %; p2m: K passes
                  over the whole grid, 5 repeats each, the median of the passes' medians):
                  how far each pair of sessions' medians lie apart, and the held-out error
                  of the hybrid, the analytical model alone and a random forest on each map
                  (evaluate.held_out). For a map measured in passes, also its measurement
                  floor (noise.py; per phase where the passes record phase times) and the
                  share of the hybrid's held-out predictions inside each record's 90 %
                  bootstrap interval. Per axis the hybrid's error is split into held-out end
                  values (extrapolation) and interior ones, and scored again with each
                  measured phase in place of its prediction (which phase the error is in).
  cross_session   how well anything predicts a fresh session: session B's latencies
                  predicted by A's own measurements, the hybrid fitted on A, and the hybrid
                  fitted on A without the held-out bw / batch value; decisions over every
                  situation by A's oracle, the model-only table fitted on A, and blends
                  (argmin of w x A's measurement + (1 - w) x the model), scored in B.
  extrapolation   a profile fitted at P = 2 predicting measured P = 3 rows, per strategy.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from .evaluate import data_dir, held_out, predict_records, requested_cr, situations
from .perfmap import PerfMap, load_perfmap, record_key, record_latency_ms

PROTOCOL_MAPS = (("p2 vit_tiny (5 repeats)", "testbed_vit_p2.json"),
                 ("p2a vit_tiny (adaptive 5-25)", "testbed_vit_p2a.json"),
                 ("p2m vit_tiny (passes x 5)", "testbed_vit_p2m.json"))
PROTOCOL_AXES = ("batch", "bw", "cr", "seq_len")
HELD_OUT_MODELS = ("hybrid", "analytical", "forest")


def vit_tiny(pm: PerfMap) -> PerfMap:
    """The map's vit_tiny records only (the grid the three sessions share)."""
    return PerfMap(meta=pm.meta, records=[r for r in pm.records if r["model"].startswith("vit_tiny")])


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- protocol A/B

def session_difference(a: PerfMap, b: PerfMap) -> dict:
    """|median_b / median_a - 1| (%) over the configurations both measured."""
    by_key = {r["key"]: r for r in a.usable()}
    d = np.array([abs(r["latency_ms"]["median"] / by_key[r["key"]]["latency_ms"]["median"] - 1) * 100
                  for r in b.usable() if r["key"] in by_key])
    return {"median": float(np.median(d)), "p90": float(np.percentile(d, 90)),
            "within_10pct": float(np.mean(d <= 10)), "n": int(d.size)}


def _split_ends(pm: PerfMap, res: dict, report: dict) -> None:
    """hybrid_ends / hybrid_interior: the held-out error on the axis' end values and on
    the others."""
    from .model import metrics

    lat = {record_key(r): r for r in pm.usable()}
    for ax, v in res.items():
        pr, vals = v["predictions"], v["values"]
        for part, sel in (("ends", {vals[0], vals[-1]}), ("interior", set(vals[1:-1]))):
            ks = [(k, p) for k, p in zip(pr["keys"], pr["hybrid"]) if np.isfinite(p) and lat[k].get(ax) in sel]
            if ks:
                m = metrics(np.array([p for _, p in ks]), np.array([record_latency_ms(lat[k]) for k, _ in ks]))
                report[ax][f"hybrid_{part}"] = {"values": sorted(sel), **m}


def _with_measured_phase(pm: PerfMap, res: dict, report: dict) -> None:
    """The hybrid's held-out total with each phase's prediction replaced by its
    measurement: the error left if that phase were predicted exactly."""
    from .model import metrics

    lat = {record_key(r): r for r in pm.usable()}
    for ax, v in res.items():
        pr = v["predictions"]
        recs = [lat[k] for k in pr["keys"]]
        y = np.array([record_latency_ms(r) for r in recs])
        report[ax]["hybrid_with_measured_phase"] = {}
        for ph, pp in pr["hybrid_phases"].items():
            meas = np.array([r.get(f"{ph}_ms") if r.get(f"{ph}_ms") is not None else np.nan for r in recs])
            report[ax]["hybrid_with_measured_phase"][ph] = metrics(np.array(pr["hybrid"]) - np.array(pp) + meas, y)


def _floors(pm: PerfMap, res: dict, report: dict) -> None:
    """A map measured in passes: its measurement floor (total and per phase), each axis'
    hybrid phase errors beside them, and the share of held-out predictions inside the
    record's 90 % bootstrap interval."""
    from .noise import PHASE_TARGETS, measurement_floor, record_intervals

    floor = measurement_floor(pm)
    if not floor.get("n"):
        return
    ci = record_intervals(pm, coverage=0.9)
    report["measurement_floor"] = floor
    for ph in PHASE_TARGETS:
        fp = measurement_floor(pm, target=ph)
        if not fp.get("n"):
            continue
        report.setdefault("measurement_floor_phases", {})[ph] = fp
        for ax, v in res.items():
            report[ax].setdefault("hybrid_phase", {})[ph] = v["hybrid"][ph]
    for ax, v in res.items():
        pr = v["predictions"]
        inside = [ci[k][0] <= p <= ci[k][1] for k, p in zip(pr["keys"], pr["hybrid"]) if k in ci and np.isfinite(p)]
        report[ax]["hybrid_inside_90pct_interval"] = float(np.mean(inside))


def protocol_map(pm: PerfMap) -> dict:
    """One map's entry of protocol_ab (held out per axis, floors)."""
    res = held_out(pm, unshaped_bw=None, quick=False, axes=PROTOCOL_AXES, keep_predictions=True)
    report = {ax: {m: v[m]["latency"] for m in HELD_OUT_MODELS} for ax, v in res.items()}
    _split_ends(pm, res, report)
    _with_measured_phase(pm, res, report)
    _floors(pm, res, report)
    return report


def protocol_ab(data=None, *, score=None, last: dict | None = None) -> dict:
    """The protocol comparison over the maps of PROTOCOL_MAPS found in data/perfmaps
    (vit_tiny rows). score: short names ('p2', 'p2a', 'p2m') to score; the other maps'
    entries are kept from `last` (a previous report) when given."""
    warnings.simplefilter("ignore")
    folder = Path(data or data_dir()) / "perfmaps"
    maps = [(name, vit_tiny(load_perfmap(folder / fn))) for name, fn in PROTOCOL_MAPS if (folder / fn).exists()]
    report = {"schema_version": 1, "session_difference_pct": {}}
    if score and last:
        report.update({k: v for k, v in last.items() if k.split()[0] not in score
                       and k not in ("schema_version", "session_difference_pct", "command")})
    for i, (na, a) in enumerate(maps):
        for nb, b in maps[i + 1:]:
            report["session_difference_pct"][f"{na.split()[0]} vs {nb.split()[0]}"] = session_difference(a, b)
    for name, pm in maps:
        if score and name.split()[0] not in score:
            continue
        if pm.meta.get("protocol", {}).get("passes"):
            name = name.replace("passes", f"{pm.meta['protocol']['passes']} passes")
        _log(f"protocol-ab: scoring {name}")
        report[name] = protocol_map(pm)
    return report


# ----------------------------------------------------------------------------- cross session

def _latency(cm, recs: list) -> np.ndarray:
    return predict_records(cm, recs, None)["latency_ms"]


def cross_latency(A: PerfMap, B: PerfMap) -> dict:
    """Session B's latencies predicted by A's measurements and by hybrids fitted on A."""
    from .model import CostModel, metrics

    a_by = {r["key"]: r for r in A.usable()}
    recs = [r for r in B.usable() if r["key"] in a_by]
    y = np.array([record_latency_ms(r) for r in recs])
    out = {"n": len(recs)}
    out["A measured"] = metrics(np.array([record_latency_ms(a_by[r["key"]]) for r in recs]), y)
    out["hybrid fit on A"] = metrics(_latency(CostModel().fit(A), recs), y)
    for ax in ("bw", "batch"):
        pred = np.full(len(recs), np.nan)
        for v in sorted({r[ax] for r in recs if r.get(ax) is not None}):
            # hold the value out of A; single rows stay when the axis does not apply to them
            train = PerfMap(meta=A.meta, records=[r for r in A.records if r.get(ax) is None or r.get(ax) != v])
            idx = [i for i, r in enumerate(recs) if r.get(ax) == v]
            pred[idx] = _latency(CostModel().fit(train), [recs[i] for i in idx])
        ok = np.isfinite(pred)
        out[f"hybrid fit on A, {ax} held out"] = metrics(pred[ok], y[ok])
    return out


def cross_decision(A: PerfMap, B: PerfMap, blend=()) -> dict:
    """Decisions over the situations both sessions measured, chosen from A, scored in B."""
    from .decision import DecisionTable
    from .model import CostModel

    crs = sorted({round(requested_cr(r), 4) for r in A.usable() if r.get("cr")})
    sa, sb = situations(A, crs), situations(B, crs)
    keys = sorted(set(sa) & set(sb))
    cands = [("single", None), ("voltage", None)] + [("prism", c) for c in crs]
    cm = CostModel().fit(A)
    if blend:              # the model's latency of every candidate of every situation, one call
        recs_a = [r for key in keys for r in sa[key].values()]
        model_a = dict(zip(map(id, recs_a), _latency(cm, recs_a)))
    tables = {}
    lat = lambda d: {k: record_latency_ms(r) for k, r in d.items()}  # noqa: E731
    rows = {"A oracle": [], "model fit on A": [], **{f"blend w={w:g}": [] for w in blend}}
    for key in keys:
        model, seq, P, batch, bw = key
        if (model, seq, P) not in tables:
            tables[(model, seq, P)] = DecisionTable(cm, None, candidates=cands, seq_len=seq, world_size=P,
                                                    model_name=model, batches=sorted({k[3] for k in keys}),
                                                    bws=sorted({k[4] for k in keys}))
        la, lb = lat(sa[key]), lat(sb[key])
        best_b = min(lb, key=lb.get)
        choices = [("A oracle", min(la, key=la.get)),
                   ("model fit on A", tables[(model, seq, P)].choose(batch, bw)["mode"])]
        for w in blend:
            mix = {k: w * la[k] + (1 - w) * model_a[id(r)] for k, r in sa[key].items()}
            choices.append((f"blend w={w:g}", min(mix, key=mix.get)))
        for name, choice in choices:
            rows[name].append(lb[choice] / lb[best_b] - 1.0)
    out = {"n": len(keys)}
    for name, reg in rows.items():
        reg = np.array(reg)
        out[name] = {"agree_with_B_oracle": float(np.mean(reg <= 1e-12)),
                     "mean_regret_pct": float(reg.mean() * 100), "max_regret_pct": float(reg.max() * 100)}
    return out


def cross_session(map_a, map_b, *, blend=()) -> dict:
    """Both directions (A -> B, B -> A) of cross_latency and cross_decision on two maps
    of the same grid (vit_tiny rows)."""
    if any(not 0 < w < 1 for w in blend):
        raise ValueError(f"blend weights must lie in (0, 1), got {list(blend)}")
    warnings.simplefilter("ignore")
    maps = {"A": vit_tiny(load_perfmap(map_a)), "B": vit_tiny(load_perfmap(map_b))}
    report = {"schema_version": 1, "A": Path(map_a).name, "B": Path(map_b).name}
    for src, dst in (("A", "B"), ("B", "A")):
        _log(f"cross-session: {src} -> {dst}")
        report[f"{src}->{dst}"] = {"latency": cross_latency(maps[src], maps[dst]),
                                   "decision": cross_decision(maps[src], maps[dst], blend)}
    return report


# ----------------------------------------------------------------------------- extrapolation

EXTRAPOLATION_STRATEGIES = ("voltage", "prism", "tensor_parallel", "galaxy")


def extrapolation(profile: str, perfmaps, *, world_size: int = 3,
                  strategies=EXTRAPOLATION_STRATEGIES, model_prefix: str = "vit_tiny") -> dict:
    """A shipped profile's error on measured rows outside its fit (e.g. testbed-vit-tp,
    fitted at P = 2, on P = 3 maps): per strategy the metrics of batch latency and the
    median predicted / measured. Rows of models not starting with model_prefix are
    skipped."""
    from .api import load_profile
    from .model import metrics

    warnings.simplefilter("ignore")
    cm = load_profile(profile)
    rows = [r for p in perfmaps for r in load_perfmap(p).usable() if r["model"].startswith(model_prefix)]
    out = {"schema_version": 1, "profile": profile, "strategies": {}}
    for s in strategies:
        rs = [r for r in rows if r["strategy"] == s]
        pred = np.array([float(cm.predict(r["batch"], r["bw"], r.get("cr"), strategy=s, seq_len=r["seq_len"],
                                          world_size=world_size, model=r["model"], warn=False)["latency_ms"])
                         for r in rs])
        y = np.array([record_latency_ms(r) for r in rs])
        out["strategies"][s] = {**metrics(pred, y), "median_pred_over_measured": float(np.median(pred / y))}
    return out
