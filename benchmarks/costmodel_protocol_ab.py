"""Measurement protocols behind the cost model's accuracy (issue 4).

vit_tiny's 378 configurations, measured in three sessions with three protocols:
  p2   testbed_vit_p2.json   5 repeats in one burst,
  p2a  testbed_vit_p2a.json  adaptive: 5-25 repeats until the median's robust relative
                             standard error is <= 1.5 %,
  p2m  testbed_vit_p2m.json  3 passes over the whole grid, 5 repeats each; the median of
                             the passes' medians (profile --passes 3),
how far each pair of sessions' medians lie apart, and the leave-one-value-out error of
the hybrid, the analytical model alone and a random forest on each map (maps that are
not there are skipped).

    python benchmarks/costmodel_protocol_ab.py      # ~5 min per map on 2 cores
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

from bench_costmodel import lovo  # noqa: E402
from costmodel.perfmap import PerfMap, atomic_write_text, load_perfmap  # noqa: E402

AXES = ("batch", "bw", "cr", "seq_len")


MAPS = (("p2 vit_tiny (5 repeats)", "testbed_vit_p2.json"),
        ("p2a vit_tiny (adaptive 5-25)", "testbed_vit_p2a.json"),
        ("p2m vit_tiny (10 passes x 5)", "testbed_vit_p2m.json"))


def session_difference(a: PerfMap, b: PerfMap) -> dict:
    """|median_b / median_a - 1| (%) over the configurations both measured."""
    by_key = {r["key"]: r for r in a.usable()}
    d = np.array([abs(r["latency_ms"]["median"] / by_key[r["key"]]["latency_ms"]["median"] - 1) * 100
                  for r in b.usable() if r["key"] in by_key])
    return {"median": float(np.median(d)), "p90": float(np.percentile(d, 90)),
            "within_10pct": float(np.mean(d <= 10)), "n": int(d.size)}


def main() -> None:
    warnings.simplefilter("ignore")
    maps = []
    for name, fn in MAPS:
        path = os.path.join(ROOT, "data/perfmaps", fn)
        if os.path.exists(path):
            pm = load_perfmap(path)
            maps.append((name, PerfMap(meta=pm.meta, records=[r for r in pm.records
                                                               if r["model"].startswith("vit_tiny")])))
    report = {"schema_version": 1, "session_difference_pct": {}}
    for i, (na, a) in enumerate(maps):
        for nb, b in maps[i + 1:]:
            d = session_difference(a, b)
            report["session_difference_pct"][f"{na.split()[0]} vs {nb.split()[0]}"] = d
            print(f"same configurations, {na.split()[0]} vs {nb.split()[0]}: |median difference| median "
                  f"{d['median']:.1f} %, P90 {d['p90']:.1f} %, within 10 %: {d['within_10pct'] * 100:.0f} % "
                  f"(n={d['n']})")
    for name, pm in maps:
        res = lovo(pm, unshaped_bw=None, quick=False, axes=AXES)
        report[name] = {ax: {m: v[m]["latency"] for m in ("hybrid", "analytical", "forest")}
                        for ax, v in res.items()}
        for ax, v in res.items():
            for m in ("hybrid", "analytical", "forest"):
                t = v[m]["latency"]
                print(f"{name:<30} {ax:<8} {m:<10} median {t['median_ape']:5.1f}  P90 {t['p90_ape']:5.1f}"
                      f"  within10 {t['within_10pct'] * 100:4.0f}%", flush=True)
    out = os.path.join(ROOT, "benchmarks/results/costmodel_protocol_ab.json")
    atomic_write_text(out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
