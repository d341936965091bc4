"""prism: Segment Means exchange (Qazi et al.), on Voltage's partition.

Each device sends m per-segment means of its L_p rows (torch.tensor_split segments)
instead of the rows; attention runs over own rows plus every peer's means, with log(s)
added to a mean's logit so that it weighs as the s tokens it stands for. CR = L_p / m.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from costmodel.strategies import make_plan
from costmodel.formulas import PRISM_AVERAGED, prism_segments, segment_sizes
from ..models.masks import prism_masks
from .base import Strategy, opt, register_strategy

AVERAGED = PRISM_AVERAGED      # ("output", "ln1", "kv"); the cost model's bytes follow it


def segment_mean_matrix(rows, m: Optional[int] = None, dtype=torch.float32,
                        device="cpu") -> torch.Tensor:
    """(m, rows) averaging matrix with tensor_split segments: A @ X = segment means.
    `rows` may instead be the list of segment sizes (prism_segments), m then None."""
    sizes = segment_sizes(rows, m) if m is not None else list(rows)
    a = torch.zeros(len(sizes), sum(sizes), dtype=dtype)
    start = 0
    for j, s in enumerate(sizes):
        a[j, start:start + s] = 1.0 / s
        start += s
    return a.to(device)


def _segments(plan) -> list:
    """Every rank's segment sizes (device 0's prefix tokens, if any, one segment each)."""
    return prism_segments(plan.sizes, plan.m, plan.shape.prefix_tokens)


@dataclass(frozen=True)
class PrismState:
    """What one rank prepares once: every rank's mean count, this rank's averaging
    matrix, and the log-count bias over [own rows | peers' means] (None if all zero)."""

    means_rows: list
    avg: torch.Tensor
    bias: Optional[torch.Tensor]


@register_strategy("prism")
@dataclass(frozen=True)
class Prism(Strategy):
    """cr or m: compression (CR = L_p / m, L_p = ceil(N/P)).
    log_bias: the count-weighted softmax (switch off to measure its effect).
    averaged: "output" (block input = previous block output; receivers apply norm1 to
              the means), "ln1" (means of norm1 output; K/V of a mean = mean of K/V) or
              "kv" (means of each row's key, rotated at its own position, and value: 2 kv_dim
              floats per mean, used by receivers as K/V columns as they are; adapters with
              `kv_rows` only, i.e. Llama / Qwen2. Without rotary positions K/V are linear in
              the norm1 output, so "kv" would equal "ln1"; docs/method.md)."""

    emulated = True

    cr: Optional[float] = opt(None, "compression rate L_p/m, in [1, L_p]")
    m: Optional[int] = opt(None, "segment means per device, in [1, L_p] (under torchrun write "
                                 "--segment-means: torchrun takes --m as its own --module)",
                           aliases=("--segment-means",), exclusive="cr")
    log_bias: bool = opt(True, "count-weighted softmax (--no-log-bias: plain softmax over means)")
    averaged: str = opt("output", "averaged tensor", choices=AVERAGED)
    sink_rows: int = opt(0, "device 0's first rows sent as themselves, never averaged (the "
                            "attention sink of decoders; at least the model's prefix tokens)")

    def __post_init__(self):
        if isinstance(self.sink_rows, bool) or not isinstance(self.sink_rows, int) or self.sink_rows < 0:
            raise ValueError(f"sink_rows={self.sink_rows!r} must be an integer >= 0")
        if self.averaged not in AVERAGED:
            raise ValueError(f"unknown averaged tensor {self.averaged!r}; known: {list(AVERAGED)}")
        if (self.cr is None) == (self.m is None):
            raise ValueError("prism needs exactly one of cr or m (e.g. --cr 9.9 or --m 10)")

    def plan_options(self):
        return {"cr": self.cr, "m": self.m, "averaged": self.averaged}

    def plan(self, adapter, ctx, batch):
        """The plan over a shape whose prefix rows include the sink rows: device 0 sends
        them as themselves (costmodel.formulas.prism_segments), so bytes stay the formula's."""
        if self.sink_rows <= adapter.shape.prefix_tokens:
            return super().plan(adapter, ctx, batch)
        shape = dataclasses.replace(adapter.shape, prefix_tokens=self.sink_rows)
        return make_plan(self.name, shape, world_size=ctx.world_size, batch=batch,
                         partition=ctx.partition, exchange=ctx.exchange, **self.plan_options())

    @classmethod
    def exact_options(cls, seq_len, world_size):
        """m = L_p: one mean per row, i.e. the rows themselves (Voltage's exchange)."""
        return {"m": -(-seq_len // world_size)}

    def prepare(self, adapter, ctx, plan):
        if self.averaged == "kv" and not hasattr(adapter, "kv_rows"):
            raise ValueError(f"prism averaged='kv' needs an adapter with kv_rows (Llama / Qwen2); "
                             f"{getattr(adapter, 'name', type(adapter).__name__)!r} has none (its K/V "
                             "are linear in norm1's output: use averaged='ln1', the same means)")
        ms = [plan.rows_sent(q) for q in range(ctx.world_size)]
        segs = _segments(plan)
        rows = plan.sizes[ctx.rank]
        cols = [torch.zeros(rows)]
        for q in range(ctx.world_size):
            if q != ctx.rank:
                s = segs[q]
                cols.append(torch.tensor([math.log(c) if self.log_bias else 0.0 for c in s]))
        bias = torch.cat(cols).to(ctx.device)
        return PrismState(ms, segment_mean_matrix(segs[ctx.rank], device=ctx.device),
                          None if not bias.any() else bias.view(1, 1, 1, -1))

    def masks(self, run, info):
        if info is None or run.ctx.world_size == 1:
            return super().masks(run, info)
        plan = run.plan
        segs = _segments(plan)
        return prism_masks(info, run.ctx.rank, plan.sizes, segs, self.log_bias,
                           1 if info.valid is None else info.valid.shape[0], run.ctx.device)

    def remote_positions(self, run):
        """A mean's position is its segment's centroid (first + (s - 1) / 2): the position
        a rotary model rotates the mean's key at (exact when s = 1; docs/method.md). None
        for "kv": those means arrive rotated."""
        if self.averaged == "kv":
            return None
        segs, r = _segments(run.plan), run.ctx.rank
        out, a = [], 0
        for q, sizes in enumerate(segs):
            for s in sizes:
                if q != r:
                    out.append(a + (s - 1) / 2)
                a += s
        return torch.tensor(out, dtype=torch.float32)

    def block_step(self, run, i, x, ex, timer):
        ctx, ad, st = run.ctx, run.adapter, run.state
        if ctx.world_size == 1:
            with timer.phase("compute"):
                return ad.block(i, x, None, run.bias)
        mk = run.masks
        kv = self.averaged == "kv"
        with timer.phase("compute"):
            own_kv = ad.kv_rows(i, x) if kv else None
            src = own_kv if kv else x if self.averaged == "output" else ad.kv_input(i, x)
            if mk is not None and mk.weights is not None:   # means over valid rows only
                means = torch.matmul(mk.weights.to(src.dtype), src)
            else:
                means = torch.matmul(st.avg, src)
        parts = ex.exchange(means, st.means_rows)
        with timer.phase("compute"):
            remote = torch.cat([p for q, p in enumerate(parts) if q != ctx.rank], dim=1)
            bias = st.bias if mk is None else mk.bias
            if kv:
                return ad.block(i, x, None, bias, remote_kv=remote, own_kv=own_kv)
            if self.averaged == "output":
                remote = ad.kv_input(i, remote)
            return ad.block(i, x, remote, bias)
