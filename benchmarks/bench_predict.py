"""Latency of one scalar `costmodel.predict` call and throughput of the vectorised path,
the path as it was (fast=False) and the scalar fast path (fast=True) side by side.

    python benchmarks/bench_predict.py [--n 3000] [--out benchmarks/results/bench_predict.json]

Scalar cases (each call timed on its own with perf_counter_ns; p50 / p90 over --n calls
per path; the two paths alternate in blocks of 50 calls, so both see the same load on
the shared host):
  repeated      predict(16, 500, 9.9) on the default profile, the same arguments each call;
  fresh         every call new arguments: a batch never asked before (distinct per call
                and per path, so the memory model is computed afresh), a new bw drawn
                uniformly from [50, 1000) Mbit/s, the strategy cycling through the
                profile's (prism at cr 9.9);
  fresh-tp      the same on testbed-vit-tp: single, voltage, prism (cr 3.17 / 10.2),
                tensor_parallel, galaxy, both of its models.
A strategy's plan at batch 1 is resolved once per (strategy, model, seq_len, world_size,
cr) by both paths (features.per_sample), so "fresh" is fresh everywhere else.
Vectorised: predict over arrays of --grid configurations (batch x bw), configurations
per second (median of 7 runs, the two alternating); arrays take the vectorised path under either flag, so the
two columns check that it stayed as fast. Out-of-range warnings are ignored (both paths
still issue them). Results: benchmarks/results/bench_predict.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh_queries(profile: str, n: int, rng: random.Random, batches: list) -> list:
    from costmodel import api

    cm = api.load_profile(profile)
    modes = []
    for s in cm.strategies_:
        crs = ([9.9] if profile == api.DEFAULT_PROFILE else [3.1666666666666665, 10.2]) if s == "prism" else [None]
        modes += [(s, c) for c in crs]
    models = [m["name"] for m in cm.models_]
    out = []
    for i in range(n):
        s, c = modes[i % len(modes)]
        out.append(dict(batch=batches[i], bw=None if s == "single" else rng.uniform(50.0, 1000.0), cr=c,
                        strategy=s, profile=profile, model=models[(i // len(modes)) % len(models)]))
    return out


def _time_pair(queries: dict, n: int, block: int = 50) -> dict:
    """{path: per-call us}, old / new alternating in blocks of `block` calls."""
    from costmodel import api

    out = {"old": [], "new": []}
    clock = time.perf_counter_ns
    for a in range(0, n, block):
        for path, fast in (("old", False), ("new", True)):
            for i in range(a, min(a + block, n)):
                kw = queries[path](i)
                t0 = clock()
                api.predict(**kw, fast=fast)
                out[path].append((clock() - t0) / 1e3)
    return out


def _stats(us: list) -> dict:
    a = np.asarray(us)
    return {"p50_us": float(np.percentile(a, 50)), "p90_us": float(np.percentile(a, 90)),
            "mean_us": float(a.mean()), "n": int(a.size)}


def _vectorised(grid: int) -> dict:
    """Configurations per second of one array query, old / new alternating (median of 7)."""
    from costmodel import api

    side = int(round(grid ** 0.5))
    b = np.arange(1, side + 1, dtype=float)[:, None] % 32 + 1
    w = np.linspace(50.0, 1000.0, side)[None, :]
    api.predict(b, w, 9.9)
    runs = {False: [], True: []}
    for _ in range(7):
        for fast in (False, True):
            t0 = time.perf_counter()
            api.predict(b, w, 9.9, fast=fast)
            runs[fast].append(time.perf_counter() - t0)
    return {"configurations": side * side, "old_configs_per_s": float(side * side / np.median(runs[False])),
            "new_configs_per_s": float(side * side / np.median(runs[True]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="timed calls per path per scalar case (>= 2000)")
    ap.add_argument("--grid", type=int, default=100_000, help="configurations of the vectorised query")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_predict.json"))
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from costmodel import api

    n, rng = a.n, random.Random(a.seed)
    for p in (None, "testbed-vit-tp"):          # load once: the first load parses the JSON
        api.predict(8, 500, 9.9, profile=p, fast=True)
        api.predict(8, 500, 9.9, profile=p, fast=False)
    cases = {}
    # repeated
    same = dict(batch=16, bw=500, cr=9.9)
    cases["repeated"] = _time_pair({"old": lambda i: same, "new": lambda i: same}, n)
    # fresh: batches distinct per call and per path (old: odd, new: even, from 1000 up)
    for name, prof in (("fresh", api.DEFAULT_PROFILE), ("fresh-tp", "testbed-vit-tp")):
        base = 1000 if name == "fresh" else 1000 + 2 * n
        q = {"old": _fresh_queries(prof, n, rng, [base + 2 * i + 1 for i in range(n)]),
             "new": _fresh_queries(prof, n, rng, [base + 2 * i + 2 for i in range(n)])}
        cases[name] = _time_pair({"old": lambda i, q=q: q["old"][i], "new": lambda i, q=q: q["new"][i]}, n)
    scalar = {k: {p: _stats(v[p]) for p in ("old", "new")} for k, v in cases.items()}
    vec = _vectorised(a.grid)

    print(f"scalar costmodel.predict, {n} calls per path per case (us per call)")
    print(f"{'case':<10} {'old p50':>9} {'old p90':>9} {'new p50':>9} {'new p90':>9} {'speedup p50':>12}")
    for k, v in scalar.items():
        o, w = v["old"], v["new"]
        print(f"{k:<10} {o['p50_us']:>9.1f} {o['p90_us']:>9.1f} {w['p50_us']:>9.1f} {w['p90_us']:>9.1f}"
              f" {o['p50_us'] / w['p50_us']:>11.1f}x")
    print(f"vectorised, {vec['configurations']} configurations: old {vec['old_configs_per_s']:.3g} /s, "
          f"new {vec['new_configs_per_s']:.3g} /s")
    report = {"schema_version": 1,
              "command": " ".join(["python benchmarks/bench_predict.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__},
              "note": "old = api.predict(..., fast=False), the path as it was: a profile-directory "
                      "listing per call, CostModel.predict over 0-d arrays, memory.peak_for; new = the "
                      "scalar fast path (CostModel.predict_one, one stat, memory from the batch-1 plan). "
                      "Calls alternate old/new in blocks of 50; fresh batches are distinct per call and per path.",
              "scalar": scalar, "vectorised": vec}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(report, fh, indent=1)
        fh.write("\n")
    print(f"wrote {os.path.relpath(a.out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
