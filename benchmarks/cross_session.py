"""How well can anything predict a fresh session of this testbed? (issues 4 and 5)

The same 378 vit_tiny configurations were measured in two sessions: A =
testbed_vit_p2.json (5 repeats) and B = testbed_vit_p2a.json (adaptive 5-25 repeats).
Scoring against B (and then A against B's), side by side:

  latency (median / P90 APE, share within +-10 %):
    - A's own measurement of the same configuration (re-measuring: the testbed's floor),
    - the hybrid cost model fitted on all of A,
    - the hybrid fitted on A without the held-out value (leave one bw / batch value out),
      so that it never saw that configuration in either session;
  decisions (every situation: batch x bw x seq_len, candidates single, Voltage and
  Prism at each CR), latency objective:
    - A's oracle (the best candidate as measured in A: what the decision table does when
      it is given A's perf map, whose exact entries win over the model),
    - the model-only decision table fitted on A,
    - with --blend W..., a mix: argmin of W x A's measurement + (1 - W) x the model,
  each as share agreeing with B's oracle, mean and max regret in B.

If the model fitted on A is as close to B as A's own measurements are, the error left
is the testbed's session-to-session noise, not the model.

    python benchmarks/cross_session.py                  # A = p2, B = p2a; ~1 min on 2 cores
    python benchmarks/cross_session.py MAP_A MAP_B      # any two maps of the same grid
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from bench_costmodel import _predict as predict_records  # noqa: E402
from bench_decision import _cr, situations  # noqa: E402
from costmodel.decision import DecisionTable  # noqa: E402
from costmodel.model import CostModel, metrics  # noqa: E402
from costmodel.perfmap import PerfMap, atomic_write_text, load_perfmap, record_latency_ms  # noqa: E402

MAP_A = os.path.join(ROOT, "data/perfmaps/testbed_vit_p2.json")
MAP_B = os.path.join(ROOT, "data/perfmaps/testbed_vit_p2a.json")


def _tiny(pm: PerfMap) -> PerfMap:
    return PerfMap(meta=pm.meta, records=[r for r in pm.records if r["model"].startswith("vit_tiny")])


def _predict(cm: CostModel, recs: list) -> np.ndarray:
    return predict_records(cm, recs, None)["latency"]


def _fmt(m: dict) -> str:
    return f"{m['median_ape']:6.1f} {m['p90_ape']:6.1f} {m['within_10pct'] * 100:6.0f}%"


def latency_part(A: PerfMap, B: PerfMap) -> dict:
    a_by = {r["key"]: r for r in A.usable()}
    recs = [r for r in B.usable() if r["key"] in a_by]
    y = np.array([record_latency_ms(r) for r in recs])
    out = {"n": len(recs)}
    out["A measured"] = metrics(np.array([record_latency_ms(a_by[r["key"]]) for r in recs]), y)
    out["hybrid fit on A"] = metrics(_predict(CostModel().fit(A), recs), y)
    for ax in ("bw", "batch"):
        pred = np.full(len(recs), np.nan)
        for v in sorted({r[ax] for r in recs if r.get(ax) is not None}):
            # hold the value out of A; single rows stay when the axis does not apply to them
            train = PerfMap(meta=A.meta, records=[r for r in A.records
                                                  if r.get(ax) is None or r.get(ax) != v])
            idx = [i for i, r in enumerate(recs) if r.get(ax) == v]
            pred[idx] = _predict(CostModel().fit(train), [recs[i] for i in idx])
        ok = np.isfinite(pred)
        out[f"hybrid fit on A, {ax} held out"] = metrics(pred[ok], y[ok])
    return out


def decision_part(A: PerfMap, B: PerfMap, blend=()) -> dict:
    crs = sorted({round(_cr(r), 4) for r in A.usable() if r.get("cr")})
    sa, sb = situations(A, crs), situations(B, crs)
    keys = sorted(set(sa) & set(sb))
    cands = [("single", None), ("voltage", None)] + [("prism", c) for c in crs]
    cm = CostModel().fit(A)
    if blend:              # the model's latency of every candidate of every situation, one call
        recs_a = [r for key in keys for r in sa[key].values()]
        model_a = dict(zip(map(id, recs_a), _predict(cm, recs_a)))
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


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("maps", nargs="*", default=[MAP_A, MAP_B], help="two perf maps (vit_tiny rows are used)")
    ap.add_argument("--blend", type=float, nargs="*", default=[],
                    help="weights W in (0, 1) of A's measurement against the model (decisions)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/cross_session.json"))
    a = ap.parse_args()
    if len(a.maps) != 2:
        ap.error(f"give two perf maps, not {len(a.maps)}")
    if any(not 0 < w < 1 for w in a.blend):
        ap.error(f"--blend weights must lie in (0, 1), got {a.blend}")
    warnings.simplefilter("ignore")
    maps = {"A": _tiny(load_perfmap(a.maps[0])), "B": _tiny(load_perfmap(a.maps[1]))}
    report = {"schema_version": 1, "A": os.path.basename(a.maps[0]), "B": os.path.basename(a.maps[1])}
    for src, dst in (("A", "B"), ("B", "A")):        # both directions
        lat = latency_part(maps[src], maps[dst])
        print(f"latency of session {dst}'s {lat['n']} configurations    median    P90  within 10 %")
        for name, m in lat.items():
            if name != "n":
                print(f"  predicted by {name.replace('A', src):<32}{_fmt(m)}")
        dec = decision_part(maps[src], maps[dst], a.blend)
        print(f"decisions on {dec['n']} situations, scored in {dst}     agree  mean regret  max regret")
        for name, m in dec.items():
            if name != "n":
                print(f"  {name.replace('A', src):<38}{m['agree_with_B_oracle'] * 100:5.1f}%"
                      f"  {m['mean_regret_pct']:8.2f}%  {m['max_regret_pct']:9.1f}%")
        print()
        report[f"{src}->{dst}"] = {"latency": lat, "decision": dec}
    atomic_write_text(a.out, json.dumps(report, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
