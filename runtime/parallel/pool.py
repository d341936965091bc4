"""Heads that pool over every row (a ViT's avg / max pooling) under a row split.

Each device pools its own rows into `pool_vectors` partial vectors (B, k, d) (a sum and
/ or a max over its patch rows: adapter.pool_partial), sends them to device 0 once per
pass, and device 0 merges them (adapter.head_from_partials) into the plain model's pooled
vector: k d b B bytes per device instead of its L_p d b B rows (Plan.pool_bytes).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def gather_partials(part: torch.Tensor, rank: int, world: int, device: torch.device,
                    timer):
    """Every rank's (B, k, d) partial on rank 0 (list by rank), None elsewhere; timed
    into `timer` (an exchange.Timer) as staging and comm, bytes handed to isend counted on
    the sender. Reached through Exchanger.gather_to_root."""
    on_accel = device.type != "cpu"
    with timer.phase("staging") as rec:
        host = part.contiguous().to("cpu") if on_accel else part.contiguous()
        if on_accel and rank != 0:
            rec.staged_bytes += host.numel() * host.element_size()
    if rank != 0:
        with timer.phase("comm") as rec:
            dist.isend(host, dst=0).wait()
            rec.comm_bytes += host.numel() * host.element_size()
        return None
    bufs = [torch.empty_like(host) for _ in range(world)]
    with timer.phase("comm"):
        reqs = [dist.irecv(bufs[q], src=q) for q in range(1, world)]
        for r in reqs:
            r.wait()
    out = [part]
    with timer.phase("staging") as rec:
        for q in range(1, world):
            if on_accel:
                rec.staged_bytes += bufs[q].numel() * bufs[q].element_size()
            out.append(bufs[q].to(device) if on_accel else bufs[q])
    return out
