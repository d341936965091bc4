"""Parallel strategies applied to a plain model through its adapter.

    runner = create_strategy("prism", cr=9.9).apply(adapter, ctx)
    result = runner(inputs)          # rank 0: logits; every rank: timings

Registry: `register_strategy`, `create_strategy`, `list_strategies` (timm style).
Each strategy resolves its plan with `costmodel.formulas.make_plan`, so the partition,
segment counts and byte counts are the cost model's own formula.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from costmodel.formulas import Plan, make_plan, offsets, segment_sizes
from .exchange import Exchanger, Timer, gather_rows_to_all
from .masks import full_token_masks, prism_masks, token_info

_REGISTRY: dict = {}


def register_strategy(name: str):
    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def list_strategies() -> list:
    return sorted(_REGISTRY)


def create_strategy(name: str, **options):
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; known: {list_strategies()}")
    return _REGISTRY[name](**options)


@dataclass
class DistContext:
    """Where this process sits: rank, world size, device, exchange mode, partition."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    exchange: str = "pairwise"
    partition: Optional[Sequence[int]] = None
    profile_labels: bool = False


@dataclass
class Result:
    """Output of one forward pass on one rank."""

    logits: Optional[torch.Tensor]        # rank 0 only
    features: Optional[torch.Tensor]      # full (B, N, d) final features when requested
    timing: dict
    plan: Plan


class Runner:
    """A strategy bound to a model and a rank; call it on a batch of inputs."""

    def __init__(self, strategy, adapter, ctx: DistContext, plan: Plan):
        self.strategy, self.adapter, self.ctx, self.plan = strategy, adapter, ctx, plan
        self.start = offsets(plan.sizes)[ctx.rank]
        self.rows = plan.sizes[ctx.rank]

    @torch.inference_mode()
    def __call__(self, inputs=None, *, rows: Optional[torch.Tensor] = None,
                 features: bool = False) -> Result:
        """Forward one batch. `rows`: this rank's block-0 input rows, already embedded
        (the adaptive runner's terminal device embeds and sends them; models without
        padding or causal masks only); otherwise every rank embeds `inputs` itself."""
        ctx, ad = self.ctx, self.adapter
        timer = Timer(ctx.device, label=ctx.profile_labels)
        ex = Exchanger(ctx.rank, ctx.world_size, ctx.device, ctx.exchange, timer)
        with timer.phase("compute"):
            if rows is not None:
                x, self.masks = rows, None
            else:
                x = ad.embed(inputs)[:, self.start:self.start + self.rows]
                # padding / causal biases for this batch (None for adapters without masks)
                self.masks = self.strategy.masks(self, token_info(ad, inputs))
        for i in range(len(ad.blocks)):
            timer.start_block()
            x = self.strategy.block_step(self, i, x, ex, timer)
        timer.end_blocks()
        logits = None
        with timer.phase("compute"):
            xn = ad.final_norm(x)
            if ctx.rank == 0 or getattr(ad, "head_per_position", False):
                logits = ad.head(xn)   # per-position heads (GPT-2): each rank, own rows
        feats = gather_rows_to_all(xn, self.plan.sizes, ctx.rank) if features else None
        return Result(logits, feats, timer.summary(), self.plan)


class Strategy:
    name = "?"

    def plan(self, adapter, ctx: DistContext, batch: int) -> Plan:
        raise NotImplementedError

    def apply(self, adapter, ctx: DistContext, batch: int = 1) -> Runner:
        return Runner(self, adapter, ctx, self.plan(adapter, ctx, batch))

    def options(self) -> dict:
        return {}

    def masks(self, run: "Runner", info):
        """Attention bias over full-token K/V columns (own rows, then every peer's rows
        in rank order); None when the adapter has no padding and no causal mask."""
        if info is None:
            return None
        sizes, r = run.plan.sizes, run.ctx.rank
        order = [r] + [q for q in range(len(sizes)) if q != r]
        starts = offsets(sizes)
        k_pos = torch.cat([torch.arange(starts[q], starts[q] + sizes[q]) for q in order])
        return full_token_masks(info, run.start, run.rows, k_pos.to(run.ctx.device))


@register_strategy("single")
class Single(Strategy):
    """The whole sequence on one device, no exchange (the terminal device alone)."""

    def plan(self, adapter, ctx, batch):
        return make_plan("single", adapter.shape, world_size=ctx.world_size, batch=batch)

    def block_step(self, run: Runner, i, x, ex, timer):
        with timer.phase("compute"):
            return run.adapter.block(i, x, None, _bias(run))


@register_strategy("voltage")
class Voltage(Strategy):
    """Position-wise partitioning with full-feature exchange (Hu and Li, 2024): one
    exchange of the block input per block, K/V computed for all N tokens."""

    def plan(self, adapter, ctx, batch):
        return make_plan("voltage", adapter.shape, world_size=ctx.world_size, batch=batch,
                         partition=ctx.partition, exchange=ctx.exchange)

    def block_step(self, run: Runner, i, x, ex, timer):
        ctx, ad = run.ctx, run.adapter
        if ctx.world_size == 1:
            with timer.phase("compute"):
                return ad.block(i, x, None, _bias(run))
        parts = ex.exchange(x, run.plan.sizes)
        with timer.phase("compute"):
            remote = torch.cat([p for q, p in enumerate(parts) if q != ctx.rank], dim=1)
            return ad.block(i, x, ad.kv_input(i, remote), _bias(run))


def _bias(run: Runner):
    return None if run.masks is None else run.masks.bias


AVERAGED = ("output", "ln1")


def segment_mean_matrix(rows: int, m: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(m, rows) averaging matrix with tensor_split segments: A @ X = segment means."""
    a = torch.zeros(m, rows, dtype=dtype)
    start = 0
    for j, s in enumerate(segment_sizes(rows, m)):
        a[j, start:start + s] = 1.0 / s
        start += s
    return a.to(device)


@register_strategy("prism")
class Prism(Strategy):
    """Segment Means exchange (Qazi et al.): each device sends m per-segment means of
    its rows; attention runs over own rows plus every peer's means, with log(s) added
    to a mean's logit so it weighs as the s tokens it stands for.

    cr or m: compression (CR = L_p / m, L_p = ceil(N/P)).
    log_bias: the count-weighted softmax (switch off to measure its effect).
    averaged: "output" (block input = previous block output; receivers apply norm1 to
              the means) or "ln1" (means of norm1 output; K/V of a mean = mean of K/V).
    """

    def __init__(self, cr: Optional[float] = None, m: Optional[int] = None,
                 log_bias: bool = True, averaged: str = "output"):
        if averaged not in AVERAGED:
            raise ValueError(f"unknown averaged tensor {averaged!r}; known: {list(AVERAGED)}")
        if cr is None and m is None:
            raise ValueError("prism needs cr or m (e.g. --cr 9.9 or --m 10)")
        self.cr, self.m, self.log_bias, self.averaged = cr, m, log_bias, averaged

    def options(self):
        return {"cr": self.cr, "m": self.m, "log_bias": self.log_bias, "averaged": self.averaged}

    def plan(self, adapter, ctx, batch):
        return make_plan("prism", adapter.shape, world_size=ctx.world_size, batch=batch,
                         cr=self.cr, m=self.m, partition=ctx.partition, exchange=ctx.exchange)

    def apply(self, adapter, ctx, batch=1):
        run = super().apply(adapter, ctx, batch)
        plan, dev = run.plan, ctx.device
        ms = [plan.rows_sent(q) for q in range(ctx.world_size)]
        run.means_rows = ms
        run.avg = segment_mean_matrix(run.rows, ms[ctx.rank], device=dev)
        cols = [torch.zeros(run.rows)]
        for q in range(ctx.world_size):
            if q != ctx.rank:
                s = segment_sizes(plan.sizes[q], ms[q])
                cols.append(torch.tensor([math.log(c) if self.log_bias else 0.0 for c in s]))
        bias = torch.cat(cols).to(dev)
        run.bias = None if not bias.any() else bias.view(1, 1, 1, -1)
        return run

    def masks(self, run, info):
        if info is None or run.ctx.world_size == 1:
            return super().masks(run, info)
        plan = run.plan
        segs = [segment_sizes(plan.sizes[q], run.means_rows[q]) for q in range(run.ctx.world_size)]
        return prism_masks(info, run.ctx.rank, plan.sizes, segs, self.log_bias,
                           1 if info.valid is None else info.valid.shape[0],
                           run.ctx.device)

    def block_step(self, run: Runner, i, x, ex, timer):
        ctx, ad = run.ctx, run.adapter
        if ctx.world_size == 1:
            with timer.phase("compute"):
                return ad.block(i, x, None, _bias(run))
        mk = run.masks
        with timer.phase("compute"):
            src = x if self.averaged == "output" else ad.kv_input(i, x)
            if mk is not None and mk.weights is not None:   # means over valid rows only
                means = torch.matmul(mk.weights.to(src.dtype), src)
            else:
                means = torch.matmul(run.avg, src)
        parts = ex.exchange(means, run.means_rows)
        with timer.phase("compute"):
            remote = torch.cat([p for q, p in enumerate(parts) if q != ctx.rank], dim=1)
            if self.averaged == "output":
                remote = ad.kv_input(i, remote)
            return ad.block(i, x, remote, run.bias if mk is None else mk.bias)


# tensor_parallel and galaxy register themselves into the same registry
from . import tensor_parallel  # noqa: E402,F401
