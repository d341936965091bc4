"""Out of sample in world size: the testbed-vit-tp profile (fitted on P = 2 rows only)
predicts the P = 3 rows of testbed_vit_tp3.json (tensor_parallel, galaxy) and of
testbed_vit_p3.json (voltage, prism; vit_tiny, same img sizes / batches / rates).

If the message-step count 2 (P - 1) of the ring all-reduce were wrong, tensor_parallel
would fare worse than voltage/prism at P = 3; all of them share the host's 2 cores at
P = 3, which no P = 2 row shows, so the absolute errors are large for every strategy.

    python benchmarks/check_p3_extrapolation.py
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import costmodel  # noqa: E402
from costmodel.model import metrics  # noqa: E402
from costmodel.perfmap import atomic_write_text, load_perfmap, record_latency_ms  # noqa: E402


def main() -> None:
    warnings.simplefilter("ignore")
    cm = costmodel.load_profile("testbed-vit-tp")
    rows = [r for r in load_perfmap(os.path.join(ROOT, "data/perfmaps/testbed_vit_tp3.json")).usable()]
    rows += [r for r in load_perfmap(os.path.join(ROOT, "data/perfmaps/testbed_vit_p3.json")).usable()
             if r["model"].startswith("vit_tiny")]
    out = {"schema_version": 1, "profile": "testbed-vit-tp", "strategies": {}}
    print(f"{'strategy':<16}{'n':>4}{'median APE %':>14}{'P90 APE %':>11}{'bias (pred/meas)':>18}")
    for s in ("voltage", "prism", "tensor_parallel", "galaxy"):
        rs = [r for r in rows if r["strategy"] == s]
        pred = np.array([float(cm.predict(r["batch"], r["bw"], r.get("cr"), strategy=s, seq_len=r["seq_len"],
                                          world_size=3, model=r["model"], warn=False)["latency_ms"])
                         for r in rs])
        y = np.array([record_latency_ms(r) for r in rs])
        m = metrics(pred, y)
        bias = float(np.median(pred / y))
        out["strategies"][s] = {**m, "median_pred_over_measured": bias}
        print(f"{s:<16}{m['n']:>4}{m['median_ape']:>14.1f}{m['p90_ape']:>11.1f}{bias:>18.2f}")
    path = os.path.join(ROOT, "benchmarks/results/check_p3_extrapolation.json")
    atomic_write_text(path, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
