"""`python -m runtime serve`: the per-rank entry of one request stream. Rank 0 runs the
AdaptiveRunner (one JSON line per request on stdout); the other ranks serve.

    python -m runtime serve --policy adaptive --costmodel fitted.json --stream 1,8,16 ...
"""
from __future__ import annotations

import json
import os
import time

from costmodel import checks

from ..errors import UsageError


def add_args(p) -> None:
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--img-size", type=checks.arg_count())
    p.add_argument("--depth", type=checks.arg_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world-size", type=checks.arg_count(), default=2)
    p.add_argument("--policy", default="adaptive",
                   help="adaptive, or a static strategy (runtime.list_strategies(); with --cr when it compresses)")
    p.add_argument("--cr", type=checks.arg_positive(), default=9.9, help="static prism CR")
    p.add_argument("--costmodel", help="fitted CostModel JSON (adaptive)")
    p.add_argument("--perfmap", help="perf map whose exact entries override the model (adaptive)")
    p.add_argument("--objective", default="latency", help="latency | energy")
    p.add_argument("--stream", required=True, help="batch sizes of the requests, e.g. 1,8,16")
    p.add_argument("--switch-at", type=checks.arg_count(-1), default=-1,
                   help="request index before which the orchestrator changes the bandwidth")
    p.add_argument("--sync-dir", help="folder for the bandwidth-switch handshake")
    p.add_argument("--initial-bw", type=checks.arg_positive("Mbit/s"), help="bandwidth estimate before any observation, Mbit/s")
    p.add_argument("--timeout", type=checks.arg_positive("s"), default=10.0,
                   help="timeout of every exchange with a peer, s: a dead or hung peer makes that "
                        "request re-run locally after at most this long")
    p.add_argument("--max-memory-mb", help="memory budget per device in MB (one number, or one per "
                   "device comma separated): adaptive drops candidates whose predicted peak exceeds it; "
                   "a static mode that does not fit is refused")
    p.add_argument("--probe-every", type=checks.arg_count(0), default=4,
                   help="active bandwidth probe every N requests (0: never)")


def _check_rank0(a):
    """Rank 0's inputs, checked before anything is built: the policy, the objective, the
    cost model and perf map files (missing, truncated or invalid: one line). Returns
    (CostModel, PerfMap or None) for the adaptive policy, else (None, None)."""
    from costmodel.decision import parse_objective

    from ..parallel import list_strategies

    if a.policy != "adaptive":
        if a.policy not in list_strategies():
            raise UsageError(f"unknown policy {a.policy!r}; allowed: adaptive, {', '.join(list_strategies())}")
        return None, None
    try:
        parse_objective(a.objective)
    except ValueError as e:
        raise UsageError(f"--objective: {e}") from None
    if not a.costmodel:
        raise UsageError("--policy adaptive needs --costmodel PATH")
    from costmodel.model import CostModel
    from costmodel.perfmap import load_perfmap

    cm = CostModel.load(a.costmodel)
    pm = load_perfmap(a.perfmap) if a.perfmap else None
    return cm, pm


def _memory_budget(v, ws: int):
    """--max-memory-mb: None, one number, or one per device."""
    if v is None:
        return None
    try:
        vals = [float(x) for x in str(v).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--max-memory-mb {v!r} must be a number or one per device, comma separated")
    if len(vals) not in (1, ws) or min(vals) <= 0:
        raise UsageError(f"--max-memory-mb {v!r}: one positive number or {ws} (one per device)")
    return vals[0] if len(vals) == 1 else vals


def main(a, argv) -> int:
    import torch

    from ..models import ModelSpec, build_adapter
    from .adaptive import AdaptiveRunner, serve_worker
    from .policy import FixedPolicy, TablePolicy, segment_means

    rank, ws = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", a.world_size))
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29400"))
    torch.set_num_threads(1)
    core = os.environ.get("PRISM_EDGE_CORE")
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(core)})
    try:
        stream = [int(s) for s in a.stream.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--stream {a.stream!r} must be comma-separated batch sizes")
    if not stream or min(stream) < 1:
        raise UsageError(f"--stream {a.stream!r} must hold batch sizes >= 1")
    checks.count("WORLD_SIZE", ws)
    if rank == 0:
        cm, pm = _check_rank0(a)        # every file and option before the model is built
    ad = build_adapter(ModelSpec(a.model, img_size=a.img_size, depth=a.depth, seed=a.seed))
    if rank != 0:
        serve_worker(ad, rank, ws, host, port, timeout_s=a.timeout)
        return 0
    budget = _memory_budget(getattr(a, "max_memory_mb", None), ws)
    if a.policy == "adaptive":
        from costmodel.decision import DecisionTable
        from costmodel.strategies import decision_candidates, list_strategies

        crs = sorted({r.get("cr_requested") or r["cr"] for r in pm.usable() if r.get("cr")}) \
            if pm else [9.9]
        cands = [(s, c) for s, c in decision_candidates() if c is None]
        cands += [(s, c) for s in list_strategies(compresses=True) for c in crs]
        try:
            table = DecisionTable(cm, pm, candidates=cands, objective=a.objective,
                                  seq_len=ad.seq_len, world_size=ws, model_name=a.model,
                                  batches=range(1, max(stream) + 1), max_memory_mb=budget)
        except ValueError as e:
            raise UsageError(f"decision table: {e}") from None
        import math
        # ViT workers receive their embedded rows: (N - L_0) x d float32 per sample
        scatter = (ad.seq_len - math.ceil(ad.seq_len / ws)) * ad.shape.d * 4
        policy = TablePolicy(table, ad.seq_len, ws, default_bw=a.initial_bw or 500.0,
                             scatter_bytes_per_sample=scatter)
    else:
        from costmodel.strategies import get_formula

        cr = a.cr if get_formula(a.policy).compresses else None
        try:
            policy = FixedPolicy(a.policy, cr=cr, m=segment_means(ad.seq_len, ws, cr))
        except ValueError as e:
            raise UsageError(str(e))
    runner = AdaptiveRunner(ad, policy, world_size=ws, host=host, port=port, timeout_s=a.timeout,
                            probe_every=a.probe_every, initial_bw=a.initial_bw,
                            max_memory_mb=budget, max_batch=max(stream))
    try:
        runner.start(block=True)
    except ValueError as e:               # a static mode over the memory budget: one line
        raise UsageError(str(e)) from None
    try:
        for i, b in enumerate(stream):
            if i == a.switch_at and a.sync_dir:
                print(json.dumps({"event": "switch", "request": i}), flush=True)
                flag = os.path.join(a.sync_dir, "switched")
                t0 = time.time()
                while not os.path.exists(flag) and time.time() - t0 < 60:
                    time.sleep(0.05)
            x = ad.make_inputs(b, seed=a.seed + 1000 + i)
            r = runner.submit(x)
            d = r.decision
            print(json.dumps({"event": "request", "i": i, "batch": b, "mode": d.mode,
                              "executed": r.executed, "latency_ms": r.latency_ms,
                              "per_sample_ms": r.latency_ms / b, "bw_estimate": r.bw_estimate,
                              "source": d.source, "predicted_ms": d.predicted_ms,
                              "margin": d.margin, "fault": r.fault}), flush=True)
        print(json.dumps({"event": "done", "counts": runner.counts, "events": runner.events}), flush=True)
    finally:
        runner.close()
    return 0
