"""single: the whole sequence on one device, no exchange (the terminal device alone)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Strategy, register_strategy


@register_strategy("single")
@dataclass(frozen=True)
class Single(Strategy):
    """The plain model on one device, through the same adapter and timer as the others."""

    emulated = True

    def block_step(self, run, i, x, ex, timer):
        with timer.phase("compute"):
            return run.adapter.block(i, x, None, run.bias)
