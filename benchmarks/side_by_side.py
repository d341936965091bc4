"""Latency, bytes and accuracy of every strategy side by side on the emulated network.

    python benchmarks/side_by_side.py                 # root: netns testbed; run on a quiet host
    -> data/fidelity/side_by_side_vit_digits.json (+ the table on stdout)

The digits ViT (data/fidelity/vit_digits.*; N = 65 tokens, depth 4) at P = 2, batch 32,
over links of 200 / 500 / 900 Mbit/s (runtime.netem.Testbed: two network namespaces,
tbf-shaped both ways, one core and one thread per rank): single (one device, no link),
Voltage, Prism CR 4 and 9.9, Prism CR 4 with the fine-tuned weights, tensor_parallel,
galaxy, CoFormer K = depth and K = 2 (calibrated where a calibrated card ships).
Latency: `python -m runtime run` inside the testbed, median of the timed repeats.
Bytes: what rank 0 sent per inference (the runtime's counters). Accuracy: the fidelity
tables' measured row for the setting (costmodel.accuracy; GLOO-measured), named.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys

from fidelity_common import DATA, command, environment, save_table

MODEL = ["--model", "test_vit", "--img-size", "32", "--patch-size", "4", "--depth", "4",
         "--num-classes", "10"]
BASE = os.path.join(DATA, "vit_digits.safetensors")
FT = os.path.join(DATA, "finetuned", "vit_digits_p2_cr4.json")
CO = os.path.join(DATA, "coformer")


def settings() -> list:
    """(label, strategy, flags, checkpoint, accuracy query) of every row."""
    out = [("single", "single", [], BASE, ("exact", {})),
           ("voltage", "voltage", [], BASE, ("voltage", {})),
           ("prism CR 4", "prism", ["--cr", "4"], BASE, ("prism", {"cr": 4})),
           ("prism CR 9.9", "prism", ["--cr", "9.9"], BASE, ("prism", {"cr": 9.9})),
           ("prism CR 4 fine-tuned", "prism", ["--cr", "4"], FT, ("prism", {"cr": 4, "finetuned": True})),
           ("tensor_parallel", "tensor_parallel", [], BASE, ("tensor_parallel", {})),
           ("galaxy", "galaxy", [], BASE, ("galaxy", {}))]
    for k in (4, 2):
        out.append((f"coformer K={k}", "coformer", ["--k", str(k)], BASE, ("coformer", {"k": k})))
        cal = os.path.join(CO, f"vit_digits_p2_k{k}.json")
        if os.path.isfile(cal):
            out.append((f"coformer K={k} calibrated", "coformer", ["--k", str(k), "--weights", cal[:-5] + ".safetensors"],
                        BASE, ("coformer", {"k": k, "finetuned": True})))
    return out


def accuracy(query) -> dict:
    from costmodel.accuracy import default_model

    strategy, kw = query
    am = default_model()
    if strategy == "exact":
        p = am.predict("vit_digits", "voltage", 2)
    else:
        try:
            p = am.predict("vit_digits", strategy, 2, **kw)
        except ValueError as e:
            return {"accuracy_from_table": None, "why": str(e)}
    if kw.get("finetuned") and not p.get("finetuned_used"):
        return {"accuracy_from_table": None, "why": "no fine-tuned row"}
    return {"accuracy_from_table": p["value"], "accuracy_basis": p["basis"], "accuracy_source": p["source"]}


@contextlib.contextmanager
def shaped_link(bw: float, prefix: str):
    """Two emulated devices behind a `bw` Mbit/s link (netns + tbf), its rate measured;
    exits in one line where namespaces are not available (needs root)."""
    from runtime.netem.testbed import Testbed

    with Testbed(2, bw, prefix=prefix) as tb:
        if tb.mode == "loopback":
            raise SystemExit("error: needs root (network namespaces) for the emulated network")
        tb.measure_bw()
        yield tb


def run_one(tb, strategy, flags, checkpoint, batch, repeats, model=MODEL, warmup=3) -> dict:
    """One `runtime run` on the testbed's ranks (single: one process, no link); its
    median latency and the bytes rank 0 sent."""
    argv = [sys.executable, "-m", "runtime", "run", *model,
            *(["--checkpoint", checkpoint] if checkpoint else []),
            "--strategy", strategy, *flags, "--batch", str(batch), "--warmup", str(warmup),
            "--repeats", str(repeats), "--timeout", "600"]
    if strategy == "single":
        out = subprocess.run(argv, capture_output=True, text=True, timeout=1800,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True).stdout
    else:
        out = tb.launch(argv + ["--world-size", "2"], timeout_s=1800)
    res = json.loads(out.strip().splitlines()[-1])
    return {"latency_ms": res["latency_ms"]["median"], "p10_ms": res["latency_ms"]["p10"],
            "p90_ms": res["latency_ms"]["p90"], "comm_bytes": res["ranks"][0]["comm_bytes"] if res.get("ranks") else 0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bws", default="200,500,900")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default="side_by_side_vit_digits.json")
    ap.add_argument("--accuracy-only", action="store_true",
                    help="keep the measured latencies of --out, refresh only the accuracy columns "
                         "from the fidelity tables (after a table was re-measured)")
    a = ap.parse_args(argv)
    if a.accuracy_only:
        path = os.path.join(DATA, a.out)
        with open(path) as f:
            doc = json.load(f)
        queries = {label: q for label, _, _, _, q in settings()}
        rows = [{**{k: v for k, v in r.items() if not k.startswith("accuracy") and k != "why"},
                 **accuracy(queries[r["setting"]])} for r in doc["results"]]
        doc.update(results=rows, accuracy_command=command(__file__, argv))
        save_table(a.out, {k: v for k, v in doc.items() if k not in ("schema_version", "command")},
                   command=doc["command"])
        return _print(rows, path)
    rows, single = [], None
    for bw in [float(b) for b in a.bws.split(",")]:
        with shaped_link(bw, "sbs") as tb:
            for label, strategy, flags, ck, q in settings():
                if strategy == "single" and single is not None:
                    r = single
                else:
                    r = run_one(tb, strategy, flags, ck, a.batch, a.repeats)
                    single = r if strategy == "single" else single
                row = {"bw": bw, "bw_measured": tb.link.get("bw_measured"), "setting": label,
                       "strategy": strategy, "flags": flags, "batch": a.batch, **r,
                       "bytes_per_inference": r["comm_bytes"] / a.batch, **accuracy(q)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    path = save_table(a.out, {"benchmark": "side_by_side", "model": "vit_digits (timm test_vit, N 65, depth 4)",
                              "world_size": 2, "batch": a.batch, "environment": environment(),
                              "note": "accuracy_from_table repeats the fidelity tables' rows (named in "
                                      "accuracy_source); under 'results', not 'rows', so the accuracy "
                                      "model reads those tables, not this one",
                              "results": rows},
                      command=command(__file__, argv))
    _print(rows, path)


def _print(rows, path):
    print(f"{'setting':28s} " + " ".join(f"{'bw ' + format(b, 'g'):>10s}" for b in sorted({r['bw'] for r in rows}))
          + f" {'KB/inf':>8s} {'accuracy':>9s}")
    for label in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == label]
        acc = rs[0].get("accuracy_from_table")
        print(f"{label:28s} " + " ".join(f"{r['latency_ms']:8.1f}ms" for r in rs)
              + f" {rs[0]['bytes_per_inference'] / 1e3:8.1f} {'-' if acc is None else format(100 * acc, '8.2f')}")
    print(path)


if __name__ == "__main__":
    main()
