"""Every strategy on one model over the emulated network: batch x bw latency and bytes.

    python benchmarks/strategy_grid.py --model bert-base --seq-len 128     # root; a quiet host
    -> benchmarks/results/strategy_grid_<model>.json (+ the table on stdout)

For models the profiling sweep (`prism-edge profile`, timm ViTs) does not take: each
configuration is one `python -m runtime run` on the testbed's two ranks (single: one
process), median of the timed repeats; bytes are what rank 0 sent per pass. A strategy
that refuses the model (one line, exit 2) is listed with its reason.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from side_by_side import run_one, shaped_link

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATEGIES = [("single", []), ("voltage", []), ("prism", ["--cr", "9.9"]), ("tensor_parallel", []),
              ("galaxy", []), ("pipeline", []), ("coformer", [])]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--bws", default="200,500,900")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    from costmodel.perfmap import atomic_write_text

    model = ["--model", a.model] + (["--seq-len", str(a.seq_len)] if a.seq_len else [])
    batches = [int(b) for b in a.batches.split(",")]
    rows, refused = [], {}
    for b in batches:
        r = run_one(None, "single", [], None, b, a.repeats, model, warmup=1)
        rows.append({"strategy": "single", "batch": b, "bw": None, **r})
        print(json.dumps(rows[-1]), file=sys.stderr)
    for bw in [float(x) for x in a.bws.split(",")]:
        with shaped_link(bw, "grid") as tb:
            for name, flags in STRATEGIES[1:]:
                if name in refused:
                    continue
                for b in batches:
                    try:
                        r = run_one(tb, name, flags, None, b, a.repeats, model, warmup=1)
                    except (subprocess.CalledProcessError, RuntimeError, ValueError) as e:
                        refused[name] = str(e).strip().splitlines()[-1][:300]
                        print(f"{name}: refused or failed: {refused[name]}", file=sys.stderr)
                        break
                    rows.append({"strategy": name, "flags": flags, "batch": b, "bw": bw,
                                 "bw_measured": tb.link.get("bw_measured"), **r})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    out = a.out or os.path.join(ROOT, "benchmarks", "results", f"strategy_grid_{a.model}.json")
    cmd = " ".join(["python", "benchmarks/strategy_grid.py", *(sys.argv[1:] if argv is None else argv)])
    atomic_write_text(out, json.dumps({"schema_version": 1, "command": cmd, "model": a.model,
                                       "seq_len": a.seq_len, "world_size": 2, "rows": rows,
                                       "refused": refused}, indent=1) + "\n")
    bws = a.bws.split(",")
    print(f"| strategy | MB/pass (batch 1) | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|---|" + "---|" * len(batches))
    for name, _ in STRATEGIES:
        rs = [r for r in rows if r["strategy"] == name]
        if not rs:
            print(f"| {name} | refused: {refused.get(name, '?')} |")
            continue
        cells = []
        for b in batches:
            v = [r["latency_ms"] for r in rs if r["batch"] == b]
            cells.append(f"{v[0]:.0f}" if name == "single" else " / ".join(f"{x:.0f}" for x in v))
        mb = [r["comm_bytes"] for r in rs if r["batch"] == 1][0] / 1e6
        print(f"| {name} | {mb:.2f} | " + " | ".join(cells) + " |")
    print(f"(ms at {' / '.join(bws)} Mbit/s) {out}")


if __name__ == "__main__":
    main()
