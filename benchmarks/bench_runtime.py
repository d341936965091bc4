"""Runtime benchmark on loopback: single vs Voltage vs Prism, and all_gather vs pairwise.

Each rank is its own process pinned to one core with one torch thread. Prints a table
and writes the full results (per-block breakdowns included) as JSON.

    python benchmarks/bench_runtime.py                     # vit_small, batch 1 8 32
    python benchmarks/bench_runtime.py --model test_vit --batches 1 2 --repeats 2 --quick

Part 2 times the exchange alone: one block-input-sized exchange per mode, stock
`dist.all_gather` vs irecv-before-isend pairwise, for a large (19 MB) and a small tensor.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from costmodel.perfmap import atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args: list, timeout: float = 1800) -> dict:
    env = dict(os.environ, PRISM_EDGE_LOG="WARNING")
    r = subprocess.run([sys.executable, "-m", "runtime", "run", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"run {' '.join(args)} failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout)


def configs(quick: bool):
    yield "single", ["--strategy", "single", "--world-size", "1"]
    yield "voltage", ["--strategy", "voltage", "--world-size", "2"]
    for cr in ((9.9,) if quick else (9.9, 4.95, 3.3)):
        yield f"prism cr={cr}", ["--strategy", "prism", "--world-size", "2", "--cr", str(cr)]


def bench_strategies(a) -> list:
    rows = []
    for batch in a.batches:
        for label, args in configs(a.quick):
            res = run_cli(["--model", a.model, "--batch", str(batch), "--pin", "--threads", "1",
                           "--warmup", str(a.warmup), "--repeats", str(a.repeats), *a.extra, *args])
            r0 = res["ranks"][0]
            rows.append({"label": label, "batch": batch, "latency_ms": res["latency_ms"]["median"],
                         "per_sample_ms": res["per_sample_ms"], "compute_ms": r0["compute_ms"],
                         "staging_ms": r0["staging_ms"], "comm_ms": r0["comm_ms"],
                         "comm_bytes": r0["comm_bytes"], "seq_len": res["seq_len"],
                         "m": res["m"], "cr": res["cr"], "result": res})
            print(f"  {label:<14} batch {batch:>3}: {res['latency_ms']['median']:9.1f} ms",
                  file=sys.stderr, flush=True)
    return rows


def _exchange_worker(rank, world, mode, nbytes, reps):
    """One rank of the exchange-alone timing (one core, one thread): median ms on rank 0."""
    import types

    import torch

    from runtime.measure.timing import timed_repeats
    from runtime.parallel import exchange as xch

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[rank % len(os.sched_getaffinity(0))]})
    d = 384
    rows = max(1, nbytes // (4 * d))
    t = torch.randn(1, rows, d)
    ex = xch.Exchanger(rank, world, torch.device("cpu"), mode)

    def one(x):
        ex.exchange(x, [rows] * world)
        return types.SimpleNamespace(timing=None)

    times, _, _ = timed_repeats(one, t, warmup=1, repeats=reps, world_size=world)
    return statistics.median(times) if rank == 0 else None


def bench_exchange(world: int, nbytes: int, reps: int) -> dict:
    from runtime.launch import spawn_ranks

    return {mode: spawn_ranks(_exchange_worker, world, mode, nbytes, reps, timeout_s=120,
                              deadline_s=600)[0]
            for mode in ("allgather", "pairwise")}


_SHAPED = """
import json, os, statistics, sys, types, torch
from runtime.measure.timing import timed_repeats
from runtime.parallel import exchange as xch
torch.set_num_threads(1)
r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
mode, nbytes, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
xch.init_process_group(r, w, timeout_s=300)
d = 384
rows = max(1, nbytes // (4 * d))
t = torch.randn(1, rows, d)
ex = xch.Exchanger(r, w, torch.device("cpu"), mode)
ex.exchange(torch.randn(1, 8, d), [8] * w)        # connections warm
one = lambda x: (ex.exchange(x, [rows] * w), types.SimpleNamespace(timing=None))[1]
ts, _, _ = timed_repeats(one, t, warmup=0, repeats=reps, world_size=w)
if r == 0:
    print(json.dumps({"ms": statistics.median(ts), "bytes": t.numel() * 4}))
xch.destroy()
"""


def bench_exchange_shaped(bw: float, world: int, nbytes: int, reps: int) -> dict:
    """Both exchange modes over the emulated network (netns + tbf at `bw` Mbit/s);
    also bytes/bw, the time a perfectly used link needs for what one rank receives."""
    from runtime.netem.testbed import Testbed

    out = {}
    with Testbed(world, bw, prefix="bench") as tb:
        if tb.mode == "loopback":
            raise RuntimeError("no namespaces here (needs root): the shaped comparison cannot run")
        tb.measure_bw()
        out["bw_measured"] = tb.link.get("bw_measured")
        for mode in ("allgather", "pairwise"):
            res = json.loads(tb.launch([sys.executable, "-c", _SHAPED, mode, str(nbytes), str(reps)],
                                       timeout_s=900).strip().splitlines()[-1])
            out[mode] = res["ms"]
        out["bytes_over_bw_ms"] = res["bytes"] * (world - 1) * 8 / (bw * 1e6) * 1e3
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only prism CR 9.9")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="more `runtime run` flags, e.g. --extra --img-size 96 --depth 4")
    ap.add_argument("--shaped-bw", type=float, default=300.0,
                    help="also compare the exchange modes over the emulated network at this rate "
                         "(Mbit/s; needs root), 0 to skip")
    ap.add_argument("--skip-strategies", action="store_true", help="only the exchange comparison")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_runtime.json"))
    a = ap.parse_args()

    t0 = time.time()
    rows = [] if a.skip_strategies else bench_strategies(a)
    exch = {f"P={w} {nb / 1e6:.1f} MB": bench_exchange(w, nb, 5)
            for w in (2, 3) for nb in (19_000_000, 300_000)}
    shaped = {}
    if a.shaped_bw:
        for w in (2, 3):
            try:
                shaped[f"P={w} 19.0 MB"] = bench_exchange_shaped(a.shaped_bw, w, 19_000_000, 3)
            except RuntimeError as e:
                print(f"shaped exchange comparison skipped: {e}", file=sys.stderr)
                break

    print(f"\nRuntime on loopback, {a.model}, one core + one thread per rank "
          f"(median of {a.repeats}, {os.cpu_count()} CPUs on this host)")
    hdr = f"{'strategy':<14}{'batch':>6}{'N':>5}{'latency ms':>12}{'per-sample':>11}{'compute':>10}" \
          f"{'staging':>9}{'comm':>9}{'MB sent':>9}{'vs single':>10}"
    print(hdr)
    print("-" * len(hdr))
    single = {r["batch"]: r["latency_ms"] for r in rows if r["label"] == "single"} or {None: 1}
    for r in rows:
        print(f"{r['label']:<14}{r['batch']:>6}{r['seq_len']:>5}{r['latency_ms']:>12.1f}"
              f"{r['per_sample_ms']:>11.1f}{r['compute_ms']:>10.1f}{r['staging_ms']:>9.2f}"
              f"{r['comm_ms']:>9.1f}{r['comm_bytes'] / 1e6:>9.2f}"
              f"{r['latency_ms'] / single[r['batch']]:>9.2f}x")
    print("\nExchange alone (loopback, median of 5): stock all_gather vs pairwise irecv-before-isend")
    for k, v in exch.items():
        print(f"  {k:<16} all_gather {v['allgather']:8.2f} ms   pairwise {v['pairwise']:8.2f} ms   "
              f"ratio {v['allgather'] / v['pairwise']:.2f}")
    if shaped:
        print(f"\nExchange over the emulated network at {a.shaped_bw:g} Mbit/s (median of 3): "
              "time / (received bytes / bw)")
        for k, v in shaped.items():
            ideal = v["bytes_over_bw_ms"]
            print(f"  {k:<16} all_gather {v['allgather']:8.1f} ms ({v['allgather'] / ideal:.2f}x)   "
                  f"pairwise {v['pairwise']:8.1f} ms ({v['pairwise'] / ideal:.2f}x)   "
                  f"bytes/bw {ideal:8.1f} ms   measured link {v['bw_measured']:.1f} Mbit/s")
    atomic_write_text(a.out, json.dumps(
        {"command": " ".join(["python", "benchmarks/bench_runtime.py", *sys.argv[1:]]), "schema_version": 1,
         "model": a.model, "batches": a.batches, "repeats": a.repeats,
         "duration_s": time.time() - t0, "rows": rows, "exchange_ms": exch,
         "exchange_shaped_ms": shaped, "shaped_bw": a.shaped_bw}, indent=1))
    print(f"\nwrote {a.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
