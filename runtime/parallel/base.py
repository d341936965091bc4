"""What every parallel strategy shares: the registry, the rank context, the runner.

    runner = create_strategy("prism", cr=9.9).apply(adapter, ctx)
    result = runner(inputs)          # rank 0: logits; every rank: timings

A strategy is a frozen dataclass whose fields are its options (their `metadata` gives
the CLI help and flag), registered under its name with `register_strategy`. It is
*applied* to a plain model through the model's adapter; it never edits the model.
Its analytical half (partition, FLOPs, bytes) is `costmodel.strategies`' entry of the
same name, so the bytes a runner sends and the bytes the cost model predicts are one
formula (tested). Everything that lists strategies (CLI flags, sweeps, the adaptive
runner, the planner, cost-model features and decision candidates) reads the registries.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from costmodel.formulas import Plan, offsets
from costmodel.strategies import get_formula, make_plan
from ..models.masks import full_token_masks, token_info
from .exchange import Exchanger, Timer

_REGISTRY: dict = {}


def register_strategy(name: str):
    """Class decorator: register a Strategy dataclass under `name` (the same name as its
    costmodel.strategies formula). Registering a name twice raises."""
    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered")
        get_formula(name)             # the analytical half must exist (one-line error if not)
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def unregister_strategy(name: str) -> None:
    """Remove a strategy registered at run time (tests)."""
    _REGISTRY.pop(name, None)


def list_strategies() -> list:
    return sorted(_REGISTRY)


def strategy_class(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; known: {list_strategies()}")
    return _REGISTRY[name]


def option_fields(name: str) -> list:
    """The dataclass fields that are `name`'s options (CLI flags are built from them)."""
    return list(dataclasses.fields(strategy_class(name)))


def create_strategy(name: str, **options):
    """The strategy `name` with `options`; an option it does not take raises ValueError
    naming the options it does take."""
    cls = strategy_class(name)
    known = [f.name for f in dataclasses.fields(cls)]
    bad = sorted(set(options) - set(known))
    if bad:
        raise ValueError(f"option(s) {bad} do not apply to {name!r}; its options: {known or 'none'}")
    return cls(**options)


def opt(default: Any = None, help: str = "", flag: Optional[str] = None, **meta):
    """A strategy option: a dataclass field with its CLI help (and flag name when it is
    not --<name-with-dashes>; booleans that default to True get --no-<name>)."""
    return field(default=default, metadata={"help": help, "flag": flag, **meta})


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

    logits: Optional[torch.Tensor]        # rank 0 only (per-position heads: every rank)
    features: Optional[torch.Tensor]      # full (B, N, d) final features when requested
    timing: dict
    plan: Plan


class Runner:
    """A strategy bound to a model and a rank; call it on a batch of inputs.

    `state` is whatever the strategy prepared for this rank (segment-mean matrices,
    weight shards); `masks` are the current batch's padding / causal biases."""

    def __init__(self, strategy: "Strategy", adapter, ctx: DistContext, plan: Plan, state=None):
        self.strategy, self.adapter, self.ctx, self.plan, self.state = strategy, adapter, ctx, plan, state
        if strategy.all_rows:
            self.start, self.rows = 0, adapter.seq_len
        else:
            self.start, self.rows = offsets(plan.sizes)[ctx.rank], plan.sizes[ctx.rank]
        self.masks = None

    @property
    def bias(self):
        """The current batch's attention bias (None without padding or causal masks)."""
        return None if self.masks is None else self.masks.bias

    @torch.inference_mode()
    def __call__(self, inputs=None, *, rows: Optional[torch.Tensor] = None,
                 features: bool = False) -> Result:
        """Forward one batch. `rows`: this rank's block-0 input rows, already embedded
        (the adaptive runner's terminal device embeds and sends them; models without
        padding or causal masks only); otherwise every rank embeds `inputs` itself."""
        return self.forward(inputs, rows=rows, features=features)

    def forward(self, inputs=None, *, rows: Optional[torch.Tensor] = None,
                features: bool = False, exchanger=None) -> Result:
        """`__call__` without inference mode, over any exchanger with Exchanger's methods
        (the in-process one of runtime.train.emulate builds a differentiable graph)."""
        ctx, ad = self.ctx, self.adapter
        timer = Timer(ctx.device, label=ctx.profile_labels)
        ex = (Exchanger(ctx.rank, ctx.world_size, ctx.device, ctx.exchange, timer)
              if exchanger is None else exchanger(timer))
        with timer.phase("compute"):
            if rows is not None:
                x, self.masks = rows, None
            else:
                x = ad.embed(inputs)[:, self.start:self.start + self.rows]
                self.masks = self.strategy.masks(self, token_info(ad, inputs))
        bind = getattr(ad, "bind_positions", None)     # RoPE models: positions of own / remote rows
        if bind is not None:
            remote = (None if self.strategy.all_rows or ctx.world_size == 1
                      else self.strategy.remote_positions(self))
            bind(torch.arange(self.start, self.start + self.rows), remote)
        for i in range(len(ad.blocks)):
            timer.start_block()
            x = self.strategy.block_step(self, i, x, ex, timer)
        timer.end_blocks()
        if bind is not None:
            bind(None, None)
        logits = None
        pooled = (getattr(ad.shape, "pool_vectors", 0) and ctx.world_size > 1
                  and not self.strategy.all_rows)
        with timer.phase("compute"):
            xn = ad.final_norm(x)
            # per-position heads (GPT-2) run on every rank's own rows
            if pooled:
                part = ad.pool_partial(xn, self.start)
            elif ctx.rank == 0 or (getattr(ad, "head_per_position", False) and not self.strategy.all_rows):
                logits = ad.head(xn)
        if pooled:      # the head pools over every row: partial pools to rank 0 (parallel/pool.py)
            parts = ex.gather_to_root(part)
            if parts is not None:
                with timer.phase("compute"):
                    logits = ad.head_from_partials(parts)
        feats = None
        if features:
            local = self.strategy.all_rows or ctx.world_size == 1
            feats = xn if local else ex.gather_rows(xn, self.plan.sizes)
        return Result(logits, feats, timer.summary(), self.plan)


class Strategy:
    """Base of every strategy. Subclasses are dataclasses (fields = options) and define
    `block_step(run, i, x, ex, timer) -> x`; they may override `prepare` (per-rank state
    built once), `masks` and `plan_options` (extra make_plan arguments)."""

    name = "?"
    all_rows = False            # True: every device holds all N rows (tensor parallel)
    # True: every message goes through the Exchanger handed to block_step (exchange,
    # all_reduce, gather_to_root, gather_rows), so runtime.train.emulate can run the
    # strategy's own code in one process, differentiably (training, calibration)
    emulated = False

    def options(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def exact_options(cls, seq_len: int, world_size: int) -> dict:
        """Options under which this strategy must reproduce the plain model exactly
        (the registry-wide parity test uses them); {} for the exact strategies."""
        return {}

    def plan_options(self) -> dict:
        """Arguments this strategy's options give costmodel.formulas.make_plan."""
        return {}

    def plan(self, adapter, ctx: DistContext, batch: int) -> Plan:
        return make_plan(self.name, adapter.shape, world_size=ctx.world_size, batch=batch,
                         partition=ctx.partition, exchange=ctx.exchange, **self.plan_options())

    def prepare(self, adapter, ctx: DistContext, plan: Plan):
        """Per-rank state for the runner (None by default)."""
        return None

    def apply(self, adapter, ctx: DistContext, batch: int = 1) -> Runner:
        plan = self.plan(adapter, ctx, batch)
        return Runner(self, adapter, ctx, plan, self.prepare(adapter, ctx, plan))

    def masks(self, run: Runner, info):
        """Attention bias over full-token K/V columns (own rows, then every peer's rows
        in rank order); None when the adapter has no padding and no causal mask."""
        if info is None:
            return None
        sizes, r = run.plan.sizes, run.ctx.rank
        order = [r] + [q for q in range(len(sizes)) if q != r]
        starts = offsets(sizes)
        k_pos = torch.cat([torch.arange(starts[q], starts[q] + sizes[q]) for q in order])
        return full_token_masks(info, run.start, run.rows, k_pos.to(run.ctx.device))

    def remote_positions(self, run: Runner) -> torch.Tensor:
        """Global positions of the remote K/V columns block_step hands adapter.block (every
        peer's rows in rank order); models with rotary positions rotate keys at them."""
        sizes, r = run.plan.sizes, run.ctx.rank
        starts = offsets(sizes)
        return torch.cat([torch.arange(starts[q], starts[q] + sizes[q], dtype=torch.float32)
                          for q in range(len(sizes)) if q != r])

    def block_step(self, run: Runner, i: int, x, ex, timer):
        raise NotImplementedError
