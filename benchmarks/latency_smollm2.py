"""SmolLM2-135M at batch 1 on the emulated network: does a long sequence make
distributing pay? Single vs Voltage vs Prism (plain, and averaged="kv" with the sink row).

    HF_HUB_OFFLINE=1 python benchmarks/latency_smollm2.py      # root; a quiet host; ~10 min
    -> benchmarks/results/latency_smollm2.json (+ the table on stdout)

N = 256 and 1024 tokens, P = 2, links of 200 / 500 / 900 Mbit/s (runtime.netem.Testbed,
one core and one thread per rank; single: one process, one thread). Latency: median of
`python -m runtime run` repeats; bytes: what rank 0 sends per pass. Perplexity of each
setting at N = 128 is in data/fidelity/smollm2.json (fidelity_smollm2.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from side_by_side import run_one, shaped_link

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = [("single", "single", []), ("voltage", "voltage", []),
            ("prism CR 4", "prism", ["--cr", "4"]),
            ("prism CR 4 kv + sink", "prism", ["--cr", "4", "--averaged", "kv", "--sink-rows", "1"]),
            ("prism CR 16 kv + sink", "prism", ["--cr", "16", "--averaged", "kv", "--sink-rows", "1"])]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-lens", default="256,1024")
    ap.add_argument("--bws", default="200,500,900")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "latency_smollm2.json"))
    a = ap.parse_args(argv)
    from costmodel.perfmap import atomic_write_text

    rows = []
    for n in [int(x) for x in a.seq_lens.split(",")]:
        model = ["--model", "smollm2-135m", "--seq-len", str(n)]
        single = run_one(None, "single", [], None, 1, a.repeats, model, warmup=1)
        rows.append({"seq_len": n, "bw": None, "setting": "single", **single})
        print(json.dumps(rows[-1]), file=sys.stderr)
        for bw in [float(b) for b in a.bws.split(",")]:
            with shaped_link(bw, "sml") as tb:
                for label, strategy, flags in SETTINGS[1:]:
                    r = run_one(tb, strategy, flags, None, 1, a.repeats, model, warmup=1)
                    rows.append({"seq_len": n, "bw": bw, "bw_measured": tb.link.get("bw_measured"),
                                 "setting": label, **r, "vs_single": single["latency_ms"] / r["latency_ms"]})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    cmd = " ".join(["python", "benchmarks/latency_smollm2.py", *(sys.argv[1:] if argv is None else argv)])
    atomic_write_text(a.out, json.dumps({"schema_version": 1, "command": cmd, "model": "smollm2-135m",
                                         "world_size": 2, "batch": 1, "rows": rows}, indent=1) + "\n")
    print(f"{'N':>5s} {'setting':24s} " + " ".join(f"{'bw ' + b:>12s}" for b in a.bws.split(",")) + "  MB/pass")
    for n in sorted({r["seq_len"] for r in rows}):
        for label, _, _ in SETTINGS:
            rs = [r for r in rows if r["seq_len"] == n and r["setting"] == label]
            cells = ([f"{rs[0]['latency_ms']:10.0f}ms"] * len(a.bws.split(",")) if label == "single"
                     else [f"{r['latency_ms']:10.0f}ms" for r in rs])
            print(f"{n:5d} {label:24s} " + " ".join(f"{c:>12s}" for c in cells) + f"  {rs[0]['comm_bytes'] / 1e6:7.2f}")
    print(a.out)


if __name__ == "__main__":
    main()
