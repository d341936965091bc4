"""Measurement-protocol A/B behind the cost model's accuracy (issue 4): vit_tiny's rows of
the 5-repeat map (testbed_vit_p2.json) against the same configurations re-measured with
adaptive repeats (testbed_vit_p2a.json: 5-25 repeats until the median's robust relative
standard error <= 1.5 %), leave-one-value-out error of the hybrid, the analytical model
alone and a random forest, and how far the two sessions' medians lie apart.

    python benchmarks/costmodel_protocol_ab.py      # ~10 min on 2 cores
"""
import sys, json, warnings, numpy as np
import os
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
os.chdir(ROOT)
warnings.simplefilter("ignore")
from costmodel.perfmap import load_perfmap, PerfMap
from bench_costmodel import lovo
o = load_perfmap('data/perfmaps/testbed_vit_p2.json')
o = PerfMap(meta=o.meta, records=[r for r in o.records if r['model'].startswith('vit_tiny')])
a = load_perfmap('data/perfmaps/testbed_vit_p2a.json')
ko = {r["key"]: r for r in o.records}
d = [abs(r["latency_ms"]["median"] / ko[r["key"]]["latency_ms"]["median"] - 1) * 100
     for r in a.records if not r.get("error") and r["key"] in ko]
print(f"same configurations, two sessions: |median difference| median {np.median(d):.1f} %, "
      f"P90 {np.percentile(d, 90):.1f} %, within 10 %: {np.mean(np.array(d) <= 10) * 100:.0f} % (n={len(d)})")
out = {}
for name, pm in (("p2 vit_tiny (5 repeats)", o), ("p2a vit_tiny (adaptive 5-25)", a)):
    res = lovo(pm, unshaped_bw=None, quick=False, axes=("batch","bw","cr","seq_len"))
    out[name] = res
    for ax, v in res.items():
        for m in ("hybrid","analytical","forest"):
            t = v[m]["latency"]
            print(f"{name:<30} {ax:<8} {m:<10} median {t['median_ape']:5.1f}  P90 {t['p90_ape']:5.1f}  within10 {t['within_10pct']*100:4.0f}%", flush=True)
json.dump({k: {ax: {m: v[m]["latency"] for m in ("hybrid","analytical","forest")} for ax, v in r.items()} for k, r in out.items()},
          open('benchmarks/results/costmodel_protocol_ab.json','w'), indent=1)
