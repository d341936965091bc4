"""Measured per-device memory: the peak of live tensor bytes during one forward.

    m = measure_peak(lambda: runner(inputs), device)
    m["peak_bytes"]          # activations + buffers: peak live bytes minus those live before
    m["source"]              # "cuda.max_memory_allocated" | "torch.profiler" | "none"
    m["rss_hwm_bytes"]       # cross-check: process RSS high-water mark above `baseline`

What is measured, and what is not:
  * `peak_bytes` is the peak of live tensor bytes *during* the call minus the bytes live
    just before it: the activations, exchange / receive buffers and staging copies the
    forward allocates (its output included). Compare it with costmodel.memory's
    `memory_breakdown(plan, rank)["activations"] + ["buffers"]`.
  * Weights are *not* in it. The runtime builds the full model on every rank (the
    strategy then uses only its part), so the bytes resident on a rank are always the
    whole model's; what a real deployment would hold is the parameter bytes the strategy
    actually uses on that rank (pipeline: only its layers, embedding / head on rank 0;
    tensor_parallel / galaxy: their heads' and columns' slices). `weights_used_bytes`
    (run.py) reports that from the model's parameters, separately.
  * CUDA: torch.cuda.reset_peak_memory_stats, then max_memory_allocated - the allocated
    bytes before the call (allocator-exact).
  * CPU: torch.profiler with profile_memory=True records every allocation and free as a
    `[memory]` event with signed nbytes; summed in time order (from
    prof.profiler.kineto_results.events(), CPU device only), the running total is the live
    bytes above the start, and its max the peak (torch 2.14: checked against known
    tensor sizes, tests/test_measured_memory.py).
  * The RSS high-water mark (max of getrusage ru_maxrss and /proc/self/status VmHWM) above
    a baseline taken before the model was built (`rss_baseline()`) is a coarse
    cross-check: it includes the whole model, the allocator's caching, Python and
    libraries, and it never falls, so it bounds weights + activations from above only.
"""
from __future__ import annotations

import resource
from typing import Callable, Optional


def rss_hwm_bytes() -> int:
    """The process's resident-set high-water mark in bytes (VmHWM, else ru_maxrss)."""
    best = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # KiB on Linux
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    return int(best)


def rss_baseline() -> int:
    """Take before the model is built: the RSS high-water mark so far."""
    return rss_hwm_bytes()


def _cpu_peak(fn: Callable) -> tuple:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    cpu = [e for e in events if str(e.device_type()).endswith("CPU")] or events
    cur = peak = 0
    for e in sorted(cpu, key=lambda e: e.start_ns()):
        cur += int(e.nbytes())
        peak = max(peak, cur)
    return out, peak, len(cpu)


def _cuda_peak(fn: Callable, device) -> tuple:
    import torch

    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    return out, int(torch.cuda.max_memory_allocated(device) - before), None


def measure_peak(fn: Callable, device=None, *, baseline: Optional[int] = None) -> dict:
    """Run `fn()` once (under no_grad) and return {"peak_bytes", "source", "events",
    "rss_hwm_bytes", "rss_baseline_bytes", "output"}. peak_bytes: live tensor bytes
    during the call above those live before it (module docstring)."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.no_grad():
        if dev.type == "cuda":
            out, peak, n = _cuda_peak(fn, dev)
            source = "cuda.max_memory_allocated"
        else:
            out, peak, n = _cpu_peak(fn)
            source = "torch.profiler"
    hwm = rss_hwm_bytes()
    return {"peak_bytes": int(peak), "source": source, "events": n,
            "rss_hwm_bytes": int(hwm - baseline) if baseline is not None else int(hwm),
            "rss_baseline_bytes": baseline, "output": out}


def used_weight_bytes(adapter, plan, rank: int) -> Optional[int]:
    """Parameter bytes the strategy uses on `rank`, counted from the model: row splits
    (voltage, prism, single) every parameter; pipeline its blocks, plus the embedding /
    head / final norm (everything outside the blocks) on rank 0; weight splits
    (tensor_parallel, galaxy) None (slices of each block: see weights_predicted_bytes)."""
    model = getattr(adapter, "model", None)
    blocks = getattr(adapter, "blocks", None)
    if model is None or blocks is None:
        return None
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)   # noqa: E731
    total = nbytes(model.parameters())
    per_block = [nbytes(b.parameters()) for b in blocks]
    if getattr(plan, "heads_split", None):
        return None
    split = getattr(plan, "layers_split", None)
    if split:
        lo = sum(split[:rank])
        return int(sum(per_block[lo:lo + split[rank]]) + (total - sum(per_block) if rank == 0 else 0))
    return int(total)


def rank_memory(runner, inputs, adapter, plan, rank: int, device, *,
                baseline: Optional[int] = None) -> dict:
    """One extra, un-timed forward under measure_peak, and the cost model's numbers for
    the same plan and rank (every rank must call it: the forward has collectives):
      memory_peak_bytes            measured activations + buffers (peak live tensor bytes
                                   during the forward minus those live before it)
      memory_peak_predicted_bytes  costmodel.memory activations + buffers for this rank
      memory: weights_used_bytes (from the model, the part this rank's strategy uses;
              None for weight splits), weights_predicted_bytes, peak_predicted_bytes
              (weights + activations + buffers), rss_hwm_above_baseline_bytes, source.
    Weights are reported apart because every rank builds the full model (docstring)."""
    from costmodel.memory import memory_breakdown

    m = measure_peak(lambda: runner(inputs), device, baseline=baseline)
    try:
        pred = memory_breakdown(plan, rank)
    except Exception:  # noqa: BLE001 - a plan the memory model does not cover
        pred = None
    return {
        "memory_peak_bytes": m["peak_bytes"],
        "memory_peak_predicted_bytes": None if pred is None else int(pred["activations"] + pred["buffers"]),
        "memory": {"source": m["source"], "weights_used_bytes": used_weight_bytes(adapter, plan, rank),
                   "weights_predicted_bytes": None if pred is None else pred["weights"],
                   "activations_predicted_bytes": None if pred is None else pred["activations"],
                   "buffers_predicted_bytes": None if pred is None else pred["buffers"],
                   "peak_predicted_bytes": None if pred is None else pred["peak"],
                   "rss_hwm_above_baseline_bytes": m["rss_hwm_bytes"] if baseline is not None else None},
    }
