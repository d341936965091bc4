"""The ranks of one profiling group: build the model once per token count, measure every
configuration of the group, print one JSON row per configuration on rank 0's stdout.

`python -m runtime profile-worker --plan PLAN.json` runs this in each rank's process
(in the emulated network's namespaces, or under torchrun via profile-cluster, which
calls run_group directly). A configuration that cannot be planned becomes a row with
its `error`; the group goes on.
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from typing import Optional

from costmodel.perfmap import PHASES as PHASE_KEYS

log = logging.getLogger("runtime.profile")


def _die_with_parent() -> None:
    """A rank dies when the sweep process dies (even by SIGKILL): no orphan keeps
    measuring, and a resumed sweep never races a leftover one."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)            # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)
    except Exception:  # noqa: BLE001 - not Linux: best effort
        pass


def error_row(c: dict, plan_meta: dict, msg: str, seq_len=None) -> dict:
    return {"key": c["key"], "strategy": c["strategy"], "model": plan_meta["model"],
            "seq_len": seq_len, "img_size": c["img_size"],
            "world_size": plan_meta["world_size"], "batch": c["batch"],
            "cr": c.get("cr"), "cr_requested": c.get("cr"), "m": None,
            "exchange": plan_meta["exchange"], "partition": None, "latency_ms": None,
            "per_sample_ms": None, "compute_ms": None, "staging_ms": None, "comm_ms": None,
            "comm_bytes": None, "staged_bytes": None, "energy_j": None, "energy_est_j": None,
            "energy_source": "none", "energy_model": None, "error": msg}


def _energy_tools(plan: dict, rank: int):
    """(meter or None, estimator or None): measure.meters and costmodel.power."""
    from costmodel import power
    from . import meters

    meter = None
    # one host: rank 0's meter already covers every rank; real devices: each its own
    if rank == 0 or plan.get("energy_scope") == "per-device":
        try:
            meter = meters.open_meter(plan.get("meter", "auto"))
        except Exception as e:  # noqa: BLE001 - an explicit meter that is absent: record none
            log.warning("energy meter %r unavailable: %s", plan.get("meter"), e)
    pm = power.POWER_MODELS.get(plan.get("power_model", "cpu-host-assumed"))

    def estimate(phases: dict, ws: int):
        if pm is None:
            return None, None
        return power.estimate_energy_j(phases, ws, model=pm)
    return meter, estimate


def _stop_repeating(lat: list, plan: dict, spent_s: float, rank: int, world_size: int) -> bool:
    """Adaptive repeats (plan max_repeats > repeats): stop once the median is precise
    enough — robust relative standard error 1.2533 * (IQR / 1.349) / sqrt(n) / median
    at most target_rel_se — or the extra-repeat time budget is spent. Rank 0 decides
    on its own wall times (they start together after a barrier) and tells the others."""
    import numpy as np
    import torch

    stop = 0
    if rank == 0:
        q1, med, q3 = np.percentile(lat, [25, 50, 75])
        se = 1.2533 * (q3 - q1) / 1.349 / math.sqrt(len(lat)) / med
        stop = int(se <= plan.get("target_rel_se", 0.02) or spent_s >= plan.get("repeat_budget_s", 20.0))
    if world_size > 1:
        t = torch.tensor([stop], dtype=torch.int64)
        torch.distributed.broadcast(t, src=0)
        stop = int(t.item())
    return bool(stop)


def _cpu_snapshot() -> Optional[tuple]:
    """(host user+nice jiffies from /proc/stat, this process's user jiffies, clock)."""
    try:
        with open("/proc/stat") as f:
            cpu = f.readline().split()
        host_user = int(cpu[1]) + int(cpu[2])
        return host_user, os.times().user * os.sysconf("SC_CLK_TCK"), time.monotonic()
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _cpu_delta(snap) -> Optional[dict]:
    now = _cpu_snapshot()
    if snap is None or now is None:
        return None
    return {"host_user": now[0] - snap[0], "own_user": now[1] - snap[1], "wall_s": now[2] - snap[2]}


def _foreign_cpu(every: list, plan: dict) -> Optional[float]:
    """User CPU that processes other than the ranks used on the host while this
    configuration was measured, in % of the host's cores (a contamination check for
    the one-host testbed; None on real multi-device runs)."""
    if plan.get("energy_scope") == "per-device":
        return None
    cpus = [r.get("cpu") for r in every]
    if any(c is None for c in cpus) or cpus[0]["wall_s"] <= 0:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    foreign = cpus[0]["host_user"] - sum(c["own_user"] for c in cpus)
    return round(max(0.0, foreign / tck / cpus[0]["wall_s"] / (os.cpu_count() or 1) * 100), 2)


def group_plan(spec, model: str, world_size: int, configs: list, *,
               energy_scope: str = "host") -> dict:
    """The JSON plan the ranks of one group run (run_group): the SweepSpec's protocol and the
    group's configurations. energy_scope: "host" (rank 0's meter covers every rank, one
    host) or "per-device" (each rank reads its own; real boards)."""
    return {"model": model, "patch_size": spec.patch_size, "depth": spec.depth, "seed": spec.seed,
            "world_size": world_size, "exchange": spec.exchange, "warmup": spec.warmup,
            "repeats": spec.repeats, "max_repeats": spec.max_repeats,
            "target_rel_se": spec.target_rel_se, "repeat_budget_s": spec.repeat_budget_s,
            "timeout_s": spec.timeout_s, "device": spec.device, "threads": spec.threads,
            "blocks": spec.blocks, "memory": getattr(spec, "memory", False), "meter": spec.meter, "power_model": spec.power_model,
            "energy_scope": energy_scope,
            "configs": [{"key": c.key, "img_size": c.img_size, "strategy": c.strategy,
                         "batch": c.batch, "cr": c.cr} for c in configs]}


def run_group(plan: dict, rank: int, world_size: int, emit) -> None:
    """Measure every configuration of one group on this rank; rank 0 calls emit(row)."""
    import numpy as np
    import torch

    from ..models import ModelSpec, build_adapter
    from ..parallel import DistContext, create_strategy
    from ..parallel import exchange as xch
    from .timing import median_timing, slowest_rank, timed_repeats

    torch.set_num_threads(plan.get("threads", 1))
    device = torch.device(plan.get("device", "cpu"))
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        # one GPU per local rank, as `run` does (without CUDA the model build says so)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    meter, estimate = _energy_tools(plan, rank)
    from .memory import rank_memory, rss_baseline

    rss0 = rss_baseline()
    adapters, inputs = {}, {}
    warmup, repeats = plan["warmup"], plan["repeats"]
    for c in plan["configs"]:
        b, img = c["batch"], c["img_size"]
        if img not in adapters:          # one model per token count, weights from the seed
            adapters.clear()
            inputs.clear()
            adapters[img] = build_adapter(ModelSpec(plan["model"], img_size=img,
                                                    patch_size=plan.get("patch_size"),
                                                    depth=plan.get("depth"), seed=plan["seed"]), device)
        adapter = adapters[img]
        seq_len = adapter.shape.seq_len
        try:    # planning is deterministic: every rank fails the same way, no collective yet
            opts = {"cr": c["cr"]} if c.get("cr") is not None else {}
            ctx = DistContext(rank, world_size, device, plan["exchange"])
            runner = create_strategy(c["strategy"], **opts).apply(adapter, ctx, b)
        except (ValueError, TypeError) as e:
            if rank == 0:
                emit(error_row(c, plan, f"{type(e).__name__}: {e}", seq_len))
            continue
        if b not in inputs:
            inputs[b] = adapter.make_inputs(b, plan["seed"], device)
        x = inputs[b]
        cpu = {}

        def start():
            if meter is not None:
                meter.start()
            cpu["snap"] = _cpu_snapshot()
        lat, timings, res = timed_repeats(
            runner, x, warmup=warmup, repeats=repeats, world_size=world_size,
            max_repeats=plan.get("max_repeats"), on_start=start,
            stop=lambda lat, spent: _stop_repeating(lat, plan, spent, rank, world_size))
        n_rep = len(lat)
        joules = meter.stop() if meter is not None else None
        mine = {"rank": rank, "latency_ms": lat, "timing": median_timing(timings),
                "joules": joules if joules is not None and joules > 0 else None,
                "cpu": _cpu_delta(cpu["snap"])}
        if plan.get("memory"):     # after the timed passes and the meter: timings untouched
            mine.update(rank_memory(runner, x, adapter, res.plan, rank, device, baseline=rss0))
        every = xch.gather_json(mine, rank, world_size)
        if rank != 0:
            continue
        p = res.plan
        e2e = slowest_rank([r["latency_ms"] for r in every])
        med = float(statistics.median(e2e))
        tot = every[0]["timing"]["totals"]
        row = {
            "key": c["key"], "strategy": c["strategy"], "model": plan["model"], "seq_len": seq_len,
            "img_size": img, "world_size": world_size, "batch": b, "cr": p.cr, "cr_requested": c.get("cr"),
            "m": p.m, "exchange": plan["exchange"], "partition": list(p.sizes),
            "latency_ms": {"median": med, "p10": float(np.percentile(e2e, 10)),
                           "p90": float(np.percentile(e2e, 90)), "n": len(e2e),
                           "samples": [round(v, 4) for v in e2e]},
            "per_sample_ms": med / b,
            "compute_ms": tot["compute_ms"], "staging_ms": tot["staging_ms"], "comm_ms": tot["comm_ms"],
            "comm_bytes": int(tot["comm_bytes"]), "staged_bytes": int(tot["staged_bytes"]),
            "comm_bytes_predicted": p.comm_bytes(0),
            "energy_j": None, "energy_est_j": None, "energy_source": "none", "energy_model": None,
            "ranks": [{"rank": r["rank"], **r["timing"]["totals"]} for r in every],
            "error": None,
        }
        if plan.get("energy_scope") == "per-device":
            js = [r.get("joules") for r in every]
            if all(j is not None for j in js):       # every device measured: their sum
                row["energy_j"] = sum(js) / n_rep
                row["energy_source"] = f"{meter.source} (sum over {world_size} devices)"
        elif joules is not None and joules > 0:
            row["energy_j"], row["energy_source"] = joules / n_rep, meter.source
        if estimate is not None:
            phases = {k: [r["timing"]["totals"][k] for r in every] for k in PHASE_KEYS}
            est, label = estimate({**phases, "wall_ms": med}, world_size)
            if est and est > 0:
                row["energy_est_j"], row["energy_model"] = float(est), label
        foreign = _foreign_cpu(every, plan)
        if foreign is not None:
            row["host_foreign_cpu_pct"] = foreign
        if plan.get("memory"):     # measured / predicted activations + buffers (measure/memory.py)
            row["memory_peak_bytes"] = every[0]["memory_peak_bytes"]
            row["memory_peak_predicted_bytes"] = every[0]["memory_peak_predicted_bytes"]
            row["memory_peak_bytes_ranks"] = [r["memory_peak_bytes"] for r in every]
            row["memory_peak_predicted_bytes_ranks"] = [r["memory_peak_predicted_bytes"] for r in every]
        if plan.get("blocks"):
            row["blocks"] = [{k: (int(v) if k.endswith("_bytes") else v) for k, v in blk.items()}
                             for blk in every[0]["timing"]["blocks"]]
        emit(row)


def add_args(p) -> None:
    p.add_argument("--plan", required=True, help="group plan JSON written by `profile`")


def main(a, argv_tail) -> int:
    from ..parallel import exchange as xch

    _die_with_parent()
    with open(a.plan) as f:
        plan = json.load(f)
    rank, ws = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if ws != plan["world_size"]:
        raise RuntimeError(f"WORLD_SIZE={ws} but the plan is for world_size={plan['world_size']}")
    if ws > 1:
        xch.init_process_group(rank, ws, timeout_s=plan["timeout_s"])
    try:
        run_group(plan, rank, ws, lambda row: print(json.dumps(row, allow_nan=False), flush=True))
    finally:
        xch.destroy()
    return 0


