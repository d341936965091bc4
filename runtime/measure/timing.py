"""The one timed-repeat loop: warm up, then time forward passes after a barrier each.

    lat_ms, timings, last = timed_repeats(runner, inputs, warmup=1, repeats=5, world_size=2)

Used by `run` (runtime/measure/run.py), the sweep worker (measure/worker.py) and the
benchmarks, so every measured latency in the project means the same thing: wall time of
one batch on this rank, started together with its peers.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional


def timed_repeats(runner, inputs, *, warmup: int, repeats: int, world_size: int,
                  max_repeats: Optional[int] = None,
                  stop: Optional[Callable[[list, float], bool]] = None,
                  features_last: bool = False, barrier: Optional[Callable[[], None]] = None,
                  on_start: Optional[Callable[[], None]] = None):
    """Run `warmup` untimed passes, then at least `repeats` timed ones (up to
    `max_repeats` while `stop(latencies_ms, seconds_spent)` is false). Every timed pass
    starts after a barrier when world_size > 1. `on_start()` runs after the warm-up, just
    before the first timed pass (meters start there). Returns (latencies in ms, each pass's
    Result.timing, the last Result)."""
    if barrier is None and world_size > 1:
        import torch.distributed as dist
        barrier = dist.barrier
    for _ in range(warmup):
        runner(inputs)
    if on_start is not None:
        on_start()
    upper = max(repeats, max_repeats or repeats)
    lat, timings, res = [], [], None
    t_start = time.perf_counter()
    while True:
        if barrier is not None:
            barrier()
        last = features_last and len(lat) == upper - 1
        t0 = time.perf_counter()
        res = runner(inputs, features=last) if last else runner(inputs)
        lat.append((time.perf_counter() - t0) * 1e3)
        timings.append(res.timing)
        if len(lat) >= upper:
            break
        if len(lat) >= repeats and (stop is None or stop(lat, time.perf_counter() - t_start)):
            break
    return lat, timings, res


def median_timing(timings: list) -> dict:
    """Per-phase medians over repeats (per block and totals) for one rank."""
    if len(timings) == 1:
        return timings[0]
    med = lambda xs: float(statistics.median(xs))  # noqa: E731
    tot = {k: med([t["totals"][k] for t in timings]) for k in timings[0]["totals"]}
    blocks = [{k: med([t["blocks"][i][k] for t in timings]) for k in timings[0]["blocks"][i]}
              for i in range(len(timings[0]["blocks"]))]
    ob = {k: med([t["outside_blocks"][k] for t in timings]) for k in timings[0]["outside_blocks"]}
    return {"totals": tot, "blocks": blocks, "outside_blocks": ob}


def slowest_rank(per_rank_ms: list) -> list:
    """End-to-end latency of each repeat: the slowest rank's time (lists per rank)."""
    return [max(r[i] for r in per_rank_ms) for i in range(len(per_rank_ms[0]))]
