"""Measurement-protocol A/B behind the cost model's accuracy (issue 4).

vit_tiny's rows of the 5-repeat map (testbed_vit_p2.json) against the same
configurations re-measured in a later session with adaptive repeats
(testbed_vit_p2a.json: 5-25 repeats until the median's robust relative standard error
is <= 1.5 %): how far the two sessions' medians lie apart, and the leave-one-value-out
error of the hybrid, the analytical model alone and a random forest on each.

    python benchmarks/costmodel_protocol_ab.py      # ~10 min on 2 cores
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


def main() -> None:
    warnings.simplefilter("ignore")
    old = load_perfmap(os.path.join(ROOT, "data/perfmaps/testbed_vit_p2.json"))
    old = PerfMap(meta=old.meta, records=[r for r in old.records if r["model"].startswith("vit_tiny")])
    new = load_perfmap(os.path.join(ROOT, "data/perfmaps/testbed_vit_p2a.json"))
    by_key = {r["key"]: r for r in old.records}
    diff = np.array([abs(r["latency_ms"]["median"] / by_key[r["key"]]["latency_ms"]["median"] - 1) * 100
                     for r in new.records if not r.get("error") and r["key"] in by_key])
    print(f"same configurations, two sessions: |median difference| median {np.median(diff):.1f} %, "
          f"P90 {np.percentile(diff, 90):.1f} %, within 10 %: {np.mean(diff <= 10) * 100:.0f} % (n={diff.size})")
    report = {"schema_version": 1, "session_difference_pct": {
        "median": float(np.median(diff)), "p90": float(np.percentile(diff, 90)), "n": int(diff.size)}}
    for name, pm in (("p2 vit_tiny (5 repeats)", old), ("p2a vit_tiny (adaptive 5-25)", new)):
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
