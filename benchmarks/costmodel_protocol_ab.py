"""Measurement protocols behind the cost model's accuracy (issue 4).

vit_tiny's 378 configurations, measured in three sessions with three protocols:
  p2   testbed_vit_p2.json   5 repeats in one burst,
  p2a  testbed_vit_p2a.json  adaptive: 5-25 repeats until the median's robust relative
                             standard error is <= 1.5 %,
  p2m  testbed_vit_p2m.json  K passes over the whole grid, 5 repeats each; the median of
                             the passes' medians (profile --passes K),
how far each pair of sessions' medians lie apart, and the leave-one-value-out error of
the hybrid, the analytical model alone and a random forest on each map (maps that are
not there are skipped). For a map measured in passes, also its own measurement floor
(costmodel/noise.py: first half of the passes against the second; the error a model
that knew each configuration's long-run median would still show, by bootstrap over the
passes; per phase too where the passes record phase times) and the share of the
hybrid's held-out predictions inside each record's 90 % bootstrap interval. Per axis,
the hybrid's error is also split into held-out end values of the axis (extrapolation)
and interior ones, and scored again with each measured phase time in place of its
prediction (the total is the sum of the phases, so this is the error left if that phase
were predicted exactly: which phase the error comes from).

    python benchmarks/costmodel_protocol_ab.py              # ~5 min per map on 2 cores
    python benchmarks/costmodel_protocol_ab.py --score p2m  # score one map again; the others'
                                                            # entries are kept from the last run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from bench_costmodel import lovo  # noqa: E402
from costmodel.noise import PHASE_TARGETS, measurement_floor, record_intervals  # noqa: E402
from costmodel.model import metrics  # noqa: E402
from costmodel.perfmap import PerfMap, atomic_write_text, load_perfmap, record_key, record_latency_ms  # noqa: E402

AXES = ("batch", "bw", "cr", "seq_len")


MAPS = (("p2 vit_tiny (5 repeats)", "testbed_vit_p2.json"),
        ("p2a vit_tiny (adaptive 5-25)", "testbed_vit_p2a.json"),
        ("p2m vit_tiny (passes x 5)", "testbed_vit_p2m.json"))


def session_difference(a: PerfMap, b: PerfMap) -> dict:
    """|median_b / median_a - 1| (%) over the configurations both measured."""
    by_key = {r["key"]: r for r in a.usable()}
    d = np.array([abs(r["latency_ms"]["median"] / by_key[r["key"]]["latency_ms"]["median"] - 1) * 100
                  for r in b.usable() if r["key"] in by_key])
    return {"median": float(np.median(d)), "p90": float(np.percentile(d, 90)),
            "within_10pct": float(np.mean(d <= 10)), "n": int(d.size)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--score", nargs="+", choices=[n.split()[0] for n, _ in MAPS],
                    help="maps to score (leave-one-value-out, floor); the others keep their entries "
                         "from the results file (default: all)")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    maps = []
    for name, fn in MAPS:
        path = os.path.join(ROOT, "data/perfmaps", fn)
        if os.path.exists(path):
            pm = load_perfmap(path)
            maps.append((name, PerfMap(meta=pm.meta, records=[r for r in pm.records
                                                               if r["model"].startswith("vit_tiny")])))
    out = os.path.join(ROOT, "benchmarks/results/costmodel_protocol_ab.json")
    report = {"schema_version": 1, "session_difference_pct": {}}
    if args.score and os.path.exists(out):
        with open(out) as fh:
            last = json.load(fh)
        report.update({k: v for k, v in last.items() if k.split()[0] not in args.score
                       and k not in ("schema_version", "session_difference_pct")})
    for i, (na, a) in enumerate(maps):
        for nb, b in maps[i + 1:]:
            d = session_difference(a, b)
            report["session_difference_pct"][f"{na.split()[0]} vs {nb.split()[0]}"] = d
            print(f"same configurations, {na.split()[0]} vs {nb.split()[0]}: |median difference| median "
                  f"{d['median']:.1f} %, P90 {d['p90']:.1f} %, within 10 %: {d['within_10pct'] * 100:.0f} % "
                  f"(n={d['n']})")
    for name, pm in maps:
        if args.score and name.split()[0] not in args.score:
            continue
        if pm.meta.get("protocol", {}).get("passes"):
            name = name.replace("passes", f"{pm.meta['protocol']['passes']} passes")
        res = lovo(pm, unshaped_bw=None, quick=False, axes=AXES, keep_predictions=True)
        report[name] = {ax: {m: v[m]["latency"] for m in ("hybrid", "analytical", "forest")}
                        for ax, v in res.items()}
        lat = {record_key(r): r for r in pm.usable()}
        for ax, v in res.items():
            pr, vals = v["predictions"], v["values"]
            for part, sel in (("ends", {vals[0], vals[-1]}), ("interior", set(vals[1:-1]))):
                ks = [(k, p) for k, p in zip(pr["keys"], pr["hybrid"]) if np.isfinite(p) and lat[k].get(ax) in sel]
                if ks:
                    m = metrics(np.array([p for _, p in ks]), np.array([record_latency_ms(lat[k]) for k, _ in ks]))
                    report[name][ax][f"hybrid_{part}"] = {"values": sorted(sel), **m}
                    print(f"{name:<30} {ax:<8} hybrid, held-out {part} {sorted(sel)}: median {m['median_ape']:.1f}"
                          f"  P90 {m['p90_ape']:.1f}  within10 {m['within_10pct'] * 100:.0f}%")
        for ax, v in res.items():       # which phase's error the total's error is made of
            pr = v["predictions"]
            recs = [lat[k] for k in pr["keys"]]
            y = np.array([record_latency_ms(r) for r in recs])
            report[name][ax]["hybrid_with_measured_phase"] = {}
            for ph, pp in pr["hybrid_phases"].items():
                meas = np.array([r.get(f"{ph}_ms") if r.get(f"{ph}_ms") is not None else np.nan for r in recs])
                m = metrics(np.array(pr["hybrid"]) - np.array(pp) + meas, y)
                report[name][ax]["hybrid_with_measured_phase"][ph] = m
                print(f"{name:<30} {ax:<8} hybrid with the measured {ph:<8} phase: median {m['median_ape']:.1f}"
                      f"  P90 {m['p90_ape']:.1f}  within10 {m['within_10pct'] * 100:.0f}%")
        floor = measurement_floor(pm)
        if floor.get("n"):
            ci = record_intervals(pm, coverage=0.9)
            report[name]["measurement_floor"] = floor
            h, b = floor["halves"], floor
            print(f"{name:<30} floor: half vs half median {h['median_ape']:.1f}  P90 {h['p90_ape']:.1f}  within10 "
                  f"{h['within_10pct'] * 100:.0f}%; bootstrap median {b['median_ape']:.1f}  P90 {b['p90_ape']:.1f}"
                  f"  within10 {b['within_10pct'] * 100:.0f}%")
            for ph in PHASE_TARGETS:      # each phase's floor beside its held-out error
                fp = measurement_floor(pm, target=ph)
                if not fp.get("n"):
                    continue
                report[name].setdefault("measurement_floor_phases", {})[ph] = fp
                held = "; ".join(f"{ax} {v['hybrid'][ph]['median_ape']:.1f} / {v['hybrid'][ph]['p90_ape']:.1f}"
                                 for ax, v in res.items() if v["hybrid"][ph]["n"])
                print(f"{name:<30} {ph:<8} phase floor median {fp['median_ape']:.1f}  P90 {fp['p90_ape']:.1f}"
                      f"  within10 {fp['within_10pct'] * 100:.0f}%; hybrid held out (median / P90): {held}")
                for ax, v in res.items():
                    report[name][ax].setdefault("hybrid_phase", {})[ph] = v["hybrid"][ph]
            for ax, v in res.items():
                pr = v["predictions"]
                inside = [ci[k][0] <= p <= ci[k][1] for k, p in zip(pr["keys"], pr["hybrid"])
                          if k in ci and np.isfinite(p)]
                report[name][ax]["hybrid_inside_90pct_interval"] = float(np.mean(inside))
                print(f"{name:<30} {ax:<8} hybrid held-out inside the record's 90 % interval: "
                      f"{np.mean(inside) * 100:.0f} % (n={len(inside)})")
        for ax, v in res.items():
            for m in ("hybrid", "analytical", "forest"):
                t = v[m]["latency"]
                print(f"{name:<30} {ax:<8} {m:<10} median {t['median_ape']:5.1f}  P90 {t['p90_ape']:5.1f}"
                      f"  within10 {t['within_10pct'] * 100:4.0f}%", flush=True)
    atomic_write_text(out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
