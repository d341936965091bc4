"""Policies: (batch, bw) -> Decision for the adaptive runner.

TablePolicy reads a torch-free costmodel.decision.DecisionTable; FixedPolicy always picks
one mode (the static baselines). Any callable with the same result works.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from costmodel.formulas import resolve_m
from costmodel.strategies import get_formula
from .adaptive import Decision


def segment_means(seq_len: int, world_size: int, cr: Optional[float]) -> Optional[int]:
    """m for a CR on an even split of seq_len tokens (None without a CR): the cost
    model's own rule (costmodel.formulas.resolve_m)."""
    return None if cr is None else resolve_m(math.ceil(seq_len / world_size), cr=cr)[0]


@dataclass
class FixedPolicy:
    """A static mode: always the same strategy (and CR)."""

    strategy: str
    cr: Optional[float] = None
    m: Optional[int] = None

    def __call__(self, batch, bw):
        return Decision(self.strategy, cr=self.cr, m=self.m, predicted_ms=None, source="static")


class TablePolicy:
    """Adapts a torch-free `costmodel.decision.DecisionTable` to the runner's policy
    interface: (batch, bw) -> Decision, with m resolved for this model's token count."""

    def __init__(self, table, seq_len: int, world_size: int, default_bw: float = 500.0,
                 scatter_bytes_per_sample: float = 0.0):
        self.table, self.default_bw = table, default_bw
        self.seq_len, self.world_size = seq_len, world_size
        self.scatter = scatter_bytes_per_sample

    def _bw(self, bw):
        return self.default_bw if bw is None else bw

    def __call__(self, batch: int, bw: Optional[float]) -> Decision:
        """The table's choice, re-ranked with the cost a profile does not contain: sending
        the workers their input rows (`scatter_bytes_per_sample` x batch at `bw`), which
        every distributed candidate pays before its first block."""
        bw = self._bw(bw)
        d = self.table.choose(batch, bw)
        extra = self.scatter * batch * 8 / (bw * 1e6) * 1e3
        by_label = dict(zip(self.table.labels, self.table.candidates))
        cost = {k: v["latency_ms"] + (extra if get_formula(by_label[k][0]).distributed else 0.0)
                for k, v in d["predicted"].items()}
        mode = min(cost, key=cost.get)
        s, cr = by_label[mode]
        m = segment_means(self.seq_len, self.world_size, cr)
        rest = sorted(cost.values())
        margin = (rest[1] - rest[0]) / rest[1] if len(rest) > 1 and rest[1] > 0 else 0.0
        return Decision(s, cr=cr, m=m, predicted_ms=cost[mode],
                        source=d["predicted"][mode]["source"], margin=margin)

    def predict(self, batch: int, bw: Optional[float], dec: Decision) -> Optional[float]:
        """Predicted latency (ms) of an earlier decision now, scatter included."""
        bw = self._bw(bw)
        ms = self.table.predicted(batch, bw, dec.strategy, dec.cr)
        if ms is not None and get_formula(dec.strategy).distributed:
            ms += self.scatter * batch * 8 / (bw * 1e6) * 1e3
        return ms
