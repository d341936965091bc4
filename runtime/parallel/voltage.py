"""voltage: position-wise partitioning with full-feature exchange (Hu and Li, 2024).

Each device keeps L_p = N/P token rows; per block it exchanges its block input with every
peer and computes K/V for all N tokens, Q for its own rows only. Bytes per device per
block: (P-1) L_p d b B (costmodel.strategies.Voltage).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Strategy, register_strategy


@register_strategy("voltage")
@dataclass(frozen=True)
class Voltage(Strategy):
    """One exchange of the block input per block; exact (parity with the plain model)."""

    emulated = True

    def block_step(self, run, i, x, ex, timer):
        ctx, ad = run.ctx, run.adapter
        if ctx.world_size == 1:
            with timer.phase("compute"):
                return ad.block(i, x, None, run.bias)
        parts = ex.exchange(x, run.plan.sizes)
        with timer.phase("compute"):
            remote = torch.cat([p for q, p in enumerate(parts) if q != ctx.rank], dim=1)
            return ad.block(i, x, ad.kv_input(i, remote), run.bias)
