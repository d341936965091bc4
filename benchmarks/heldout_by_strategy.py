"""Held-out cost-model error per strategy on one perf map (leave one batch / bw out).

    python benchmarks/heldout_by_strategy.py data/perfmaps/testbed_vit_s_all_p2.json

For each value of each axis (batch, bw) the cost model is fitted without the rows that
have it and predicts them (costmodel.evaluate.leave_one_value_out); the table gives each
strategy's absolute percentage error of the batch latency over all its held-out rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("perfmap")
    ap.add_argument("--axes", default="batch,bw")
    ap.add_argument("--json", help="also write the table here")
    a = ap.parse_args(argv)
    import numpy as np

    from costmodel.evaluate import leave_one_value_out
    from costmodel.perfmap import load_perfmap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = leave_one_value_out(load_perfmap(a.perfmap), axes=tuple(a.axes.split(",")))
    ape = np.abs(out["predicted_ms"] - out["measured_ms"]) / out["measured_ms"] * 100
    rows = []
    for s in [*sorted(set(out["strategy"])), "all"]:
        e = ape if s == "all" else ape[out["strategy"] == s]
        rows.append({"strategy": s, "n": int(len(e)), "median_ape": float(np.median(e)),
                     "p90_ape": float(np.percentile(e, 90)), "max_ape": float(e.max())})
    print(f"| strategy | held-out rows ({a.axes} folds) | median APE % | p90 APE % | max APE % |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['n']} | {r['median_ape']:.1f} | {r['p90_ape']:.1f} | {r['max_ape']:.1f} |")
    if out["skipped"]:
        print("skipped folds:", out["skipped"], file=sys.stderr)
    if a.json:
        from costmodel.perfmap import atomic_write_text
        cmd = " ".join(["python", "benchmarks/heldout_by_strategy.py", *(sys.argv[1:] if argv is None else argv)])
        atomic_write_text(a.json, json.dumps({"schema_version": 1, "command": cmd, "perfmap": a.perfmap,
                                              "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
