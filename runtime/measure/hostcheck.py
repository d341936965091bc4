"""Host check: do the cores that stand in for devices slow each other down?

An emulated testbed runs every "device" as a process pinned to its own core of one
host. That only behaves like separate boards when the cores do not share execution
units: vCPUs of a VM can sit on SMT siblings or time-shared host cores, and then one
rank's compute speed depends on what the other rank does at the same instant. Every
distributed timing carries that noise (a rank waits in each exchange for the slower
peer), and no cost model can predict it below that floor.

The check runs the same fixed torch workload (1 thread; 256 x 256 matrix products, like
a small transformer block) pinned to each core, first alone, then on all the cores at
once, and reports per core the median time per iteration, its spread (p90 / median - 1)
and the slowdown of running concurrently (concurrent median / solo median - 1), with the
SMT siblings the kernel reports.

    python -m runtime host-check [--cores 0,1] [--iters 100] [--rounds 3] [--out hostcheck.json]

The result is JSON (kind prism-edge.hostcheck, schema_version 1); `python -m runtime
profile --host-check` stores it in the perf map (cluster.host_check).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

from ..errors import UsageError

SCHEMA_VERSION = 1
KIND = "prism-edge.hostcheck"
WORKLOAD = "12 x (256x256 @ 256x256, tanh) per iteration, torch, 1 thread"
# The worker: pin itself, warm up, say "ready", wait for "go" on stdin (so that the
# concurrent workers start together), time `iters` iterations, print them as JSON.
_WORKER = r"""
import json, os, sys, time
core, iters = int(sys.argv[1]), int(sys.argv[2])
os.sched_setaffinity(0, {core})
import torch
torch.set_num_threads(1)
torch.manual_seed(core)
a = torch.randn(256, 256)
def step(a):
    for _ in range(12):
        a = torch.tanh(a @ a * 0.01)
    return a
for _ in range(10):
    a = step(a)
print("ready", flush=True)
sys.stdin.readline()
ts = []
for _ in range(iters):
    t0 = time.perf_counter()
    a = step(a)
    ts.append((time.perf_counter() - t0) * 1e3)
print(json.dumps(ts), flush=True)
"""


class HostCheckError(ValueError):
    pass


def usable_cores() -> list:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def smt_siblings(core: int) -> Optional[list]:
    """The logical CPUs sharing `core`'s physical core, as the kernel reports them (a VM
    may hide the host's sharing: the measured slowdown is what counts)."""
    path = f"/sys/devices/system/cpu/cpu{core}/topology/thread_siblings_list"
    try:
        with open(path) as f:
            txt = f.read().strip()
    except OSError:
        return None
    out = []
    for part in txt.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _quantile(v: Sequence[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def _stats(ts: Sequence[float]) -> dict:
    med = _quantile(ts, 0.5)
    return {"median_ms": round(med, 4), "p10_ms": round(_quantile(ts, 0.1), 4),
            "p90_ms": round(_quantile(ts, 0.9), 4), "n": len(ts),
            "spread_pct": round((_quantile(ts, 0.9) / med - 1) * 100, 2)}


def _run_together(cores: Sequence[int], iters: int, timeout_s: float) -> list:
    """Per-iteration times (ms) of one worker per core, all started at once."""
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(c), str(iters)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cores]
    try:
        for p in procs:
            line = p.stdout.readline().strip()
            if line != "ready":
                raise HostCheckError(f"host-check worker failed: {p.stderr.read().strip()[-300:]}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        deadline = time.monotonic() + timeout_s
        out = []
        for p in procs:
            try:
                so, se = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise HostCheckError(f"host-check workers did not finish within {timeout_s:.0f} s")
            if p.returncode != 0:
                raise HostCheckError(f"host-check worker exited with {p.returncode}: {se.strip()[-300:]}")
            out.append(json.loads(so.strip().splitlines()[-1]))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def host_check(cores: Optional[Sequence[int]] = None, iters: int = 100, rounds: int = 3,
               timeout_s: float = 300.0) -> dict:
    """Solo and concurrent timings of the workload on `cores` (default: the first two
    usable cores, where a P=2 sweep pins its ranks). `rounds` alternate solo and
    concurrent runs, so that a drift of the host in the meantime hits both alike."""
    avail = usable_cores()
    cores = list(avail[:2] if cores is None else cores)
    if not cores:
        raise HostCheckError("no cores to check")
    bad = [c for c in cores if c not in avail]
    if bad:
        raise HostCheckError(f"cores {bad} are not usable here; allowed: {avail}")
    if len(set(cores)) != len(cores):
        raise HostCheckError(f"cores {cores} repeat a core; give each core once")
    if not isinstance(iters, int) or iters < 10:
        raise HostCheckError(f"iters={iters!r} must be an integer >= 10")
    if not isinstance(rounds, int) or rounds < 1:
        raise HostCheckError(f"rounds={rounds!r} must be an integer >= 1")
    solo = [[] for _ in cores]
    together = [[] for _ in cores]
    for _ in range(rounds):
        for i, c in enumerate(cores):
            solo[i] += _run_together([c], iters, timeout_s)[0]
        if len(cores) > 1:
            for i, ts in enumerate(_run_together(cores, iters, timeout_s)):
                together[i] += ts
    if len(cores) == 1:
        together = solo
    per_core = []
    for c, s, t in zip(cores, solo, together):
        ss, st = _stats(s), _stats(t)
        per_core.append({"core": c, "smt_siblings": smt_siblings(c), "solo": ss, "concurrent": st,
                         "slowdown_pct": round((st["median_ms"] / ss["median_ms"] - 1) * 100, 2)})
    import platform
    return {
        "kind": KIND, "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(), "usable_cores": len(avail), "workload": WORKLOAD, "iters": iters,
        "rounds": rounds,
        "cores": per_core,
        "summary": {"max_slowdown_pct": max(p["slowdown_pct"] for p in per_core),
                    "max_concurrent_spread_pct": max(p["concurrent"]["spread_pct"] for p in per_core),
                    "max_solo_spread_pct": max(p["solo"]["spread_pct"] for p in per_core)},
        "meaning": "slowdown: concurrent / solo median - 1 (cores slowing each other down); spread: "
                   "p90 / median - 1 of one core's iterations. Distributed timings on these cores carry "
                   "the concurrent spread: each exchange waits for the slower rank.",
    }


def table(res: dict) -> str:
    rows = [f"{'core':>4} {'siblings':>9} {'solo ms':>8} {'spread':>7} {'together ms':>12} {'spread':>7}"
            f" {'slowdown':>9}"]
    for p in res["cores"]:
        sib = ",".join(map(str, p["smt_siblings"])) if p["smt_siblings"] else "?"
        rows.append(f"{p['core']:>4} {sib:>9} {p['solo']['median_ms']:>8.2f} {p['solo']['spread_pct']:>6.1f}%"
                    f" {p['concurrent']['median_ms']:>12.2f} {p['concurrent']['spread_pct']:>6.1f}%"
                    f" {p['slowdown_pct']:>8.1f}%")
    return "\n".join(rows)


# --------------------------------------------------------------------------- CLI

def add_args(p) -> None:
    p.add_argument("--cores", help="comma-separated cores (default: the first two usable)")
    p.add_argument("--iters", type=int, default=100, help="timed iterations per worker and round (>= 10)")
    p.add_argument("--rounds", type=int, default=3, help="alternating solo / concurrent rounds (>= 1)")
    p.add_argument("--out", help="also write the JSON here (atomically)")


def main(a, argv_tail) -> int:
    from costmodel import safeio

    if a.out:
        safeio.check_writable(a.out)          # before timing anything
    try:
        cores = None
        if a.cores:
            try:
                cores = [int(s) for s in a.cores.split(",") if s.strip()]
            except ValueError:
                raise HostCheckError(f"--cores {a.cores!r} must be comma-separated integers")
        res = host_check(cores, a.iters, a.rounds)
    except HostCheckError as e:
        raise UsageError(str(e))
    print(table(res), file=sys.stderr)
    txt = json.dumps(res, indent=1)
    if a.out:
        safeio.write_text(a.out, txt)
    print(txt)
    return 0
