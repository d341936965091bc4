"""The analytical half of every strategy, in one registry (torch-free).

    plan = make_plan("prism", vit_shape(), world_size=2, batch=8, cr=9.9)
    plan.comm_bytes(0), plan.flops(0), plan.n_exchanges
    list_strategies()                         # every registered name
    list_strategies(splits_weights=True)      # ['coformer', 'galaxy', 'pipeline', 'tensor_parallel']

A `Formula` says how a strategy partitions a model and what that costs: its options
(beyond partition and exchange), rows sent per block, bytes sent / received / staged,
FLOPs per device, exchanges and latency-bearing message steps per pass, and the flags
the fitted cost model and the decision hook read (`distributed`, `compresses`,
`splits_weights`, `overlaps_comm`, `candidates`). The runtime's strategy of the same name
(runtime/parallel/<name>.py) sends exactly these bytes (tested). Every list of strategies
in the project (features, the fitted model, decision candidates, plots, sweeps, the CLI)
is derived from this registry and the runtime's; adding a strategy is one Formula here
(or registered from the strategy's own module) plus its runtime module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from .formulas import (COLLECTIVES, EXCHANGE_MODES, ModelShape, Plan, block_flops, check_partition,
                       check_prefix, even_partition, prism_row_width, prism_segments, resolve_m,
                       ring_allreduce_bytes, rs_ag_rows, tp_block_flops, units_split)

_FORMULAS: dict = {}


def register_formula(formula: "Formula") -> "Formula":
    """Register a Formula instance under formula.name; a name registered twice raises."""
    if formula.name in _FORMULAS:
        raise ValueError(f"strategy formula {formula.name!r} is already registered")
    _FORMULAS[formula.name] = formula
    return formula


def unregister_formula(name: str) -> None:
    """Remove a formula registered at run time (tests)."""
    _FORMULAS.pop(name, None)


def get_formula(name: str) -> "Formula":
    if name not in _FORMULAS:
        raise ValueError(f"unknown strategy {name!r}; known: {list_strategies()}")
    return _FORMULAS[name]


def find_formula(name) -> "Formula | None":
    """The Formula registered under `name`, or None (hot paths that handle unknown names
    themselves)."""
    return _FORMULAS.get(name)


def list_strategies(**flags) -> list:
    """Registered strategy names, sorted; keyword flags filter (e.g. compresses=True)."""
    return sorted(n for n, f in _FORMULAS.items()
                  if all(getattr(f, k) == v for k, v in flags.items()))


def decision_candidates(*, include_split_weights: bool = False) -> tuple:
    """(strategy, cr) pairs the decision hook compares by default: every registered
    strategy with its `candidates`; weight-splitting strategies only when asked (a
    profile must have been fitted on them)."""
    out = []
    for name in _order(list_strategies()):
        f = _FORMULAS[name]
        if f.splits_weights and not include_split_weights:
            continue
        out += [(name, c) for c in f.candidates]
    return tuple(out)


def mode_label(strategy: str, cr=None) -> str:
    """The one name of a (strategy, cr) mode in tables, JSON and plots: 'prism(cr=9.9)'."""
    return strategy if cr is None else f"{strategy}(cr={float(cr):g})"


def _order(names: list) -> list:
    """Display order: single first, then by registration order."""
    reg = list(_FORMULAS)
    return sorted(names, key=lambda n: (n != "single", reg.index(n)))


def make_plan(strategy: str, shape: ModelShape, *, world_size: int = 2, batch: int = 1,
              partition: Sequence[int] | None = None, exchange: str = "pairwise",
              elem_bytes: int = 4, **options) -> Plan:
    """Resolve a strategy on a shape; validates every argument with a one-line error.
    options: the strategy's own (prism: cr or m; tensor_parallel: heads, cols,
    collective; galaxy: heads, cols, tiles); None means "the default"."""
    f = get_formula(strategy)
    if exchange not in EXCHANGE_MODES:
        raise ValueError(f"unknown exchange {exchange!r}; known: {list(EXCHANGE_MODES)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch} must be an integer >= 1")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size} must be an integer >= 1")
    given = sorted(k for k, v in options.items() if v is not None)
    bad = [k for k in given if k not in f.options]
    if bad:
        owners = sorted({n for n, g in _FORMULAS.items() for k in bad if k in g.options})
        raise ValueError(f"option(s) {bad} do not apply to {strategy!r} (its options: "
                         f"{list(f.options) or 'none'}; {bad[0]} applies to {owners})")
    return f.make_plan(shape, world_size=world_size, batch=batch, partition=partition,
                       exchange=exchange, elem_bytes=elem_bytes,
                       **{k: options.get(k) for k in f.options})


class Formula:
    """Base: position-wise partitioning, each device exchanging its own rows with every
    peer once per block (Voltage's accounting). Subclasses override what differs."""

    name = "?"
    label = "?"                 # display name
    options: tuple = ()         # make_plan options beyond partition / exchange
    distributed = True          # False: one device, no link (single)
    compresses = False          # takes cr / m: its configurations sweep the cr axis
    splits_weights = False      # heads / columns split: fitted with their own phase params
    overlaps_comm = False       # comm overlapped with compute: the fitted overlap layer
    all_rows = False            # every device computes on all N rows
    candidates: tuple = (None,)  # decision candidates: (None,) or cr values

    def make_plan(self, shape, *, world_size, batch, partition, exchange, elem_bytes, **opts) -> Plan:
        n = shape.seq_len
        sizes = check_partition(partition, n) if partition is not None else even_partition(n, world_size)
        if len(sizes) != world_size:
            raise ValueError(f"partition {sizes} has {len(sizes)} parts for world_size={world_size}")
        check_prefix(sizes, shape)
        return Plan(self.name, shape, world_size, batch, tuple(sizes), kv_rows=(n,) * world_size,
                    exchange=exchange, elem_bytes=elem_bytes, formula=self)

    # per pass, per device ------------------------------------------------------------
    def n_exchanges(self, plan: Plan) -> int:
        return 0 if plan.world_size == 1 else plan.shape.n_layers

    def n_messages(self, plan: Plan) -> int:
        """Latency-bearing message steps per pass (costmodel.features docstring)."""
        return plan.n_exchanges

    def rows_sent(self, plan: Plan, rank: int) -> int:
        return plan.sizes[rank]

    def comm_bytes(self, plan: Plan, rank: int) -> int:
        if plan.n_exchanges == 0:
            return 0
        return ((plan.world_size - 1) * plan.rows_per_message(rank) * plan.width * plan.elem_bytes
                * plan.batch * plan.n_exchanges)

    def recv_bytes(self, plan: Plan, rank: int) -> int:
        if plan.n_exchanges == 0:
            return 0
        rows = sum(plan.rows_per_message(q) for q in range(plan.world_size) if q != rank)
        return rows * plan.width * plan.elem_bytes * plan.batch * plan.n_exchanges

    def staged_bytes(self, plan: Plan, rank: int) -> int:
        if plan.n_exchanges == 0:
            return 0
        rows = sum(plan.rows_sent(q) for q in range(plan.world_size))
        return rows * plan.width * plan.elem_bytes * plan.batch * plan.n_exchanges

    def flops(self, plan: Plan, rank: int, *, embed: bool = True, head: bool = True) -> float:
        s = plan.shape
        f = s.n_layers * s.block_flops(plan.sizes[rank], plan.kv_rows[rank])
        if embed:
            f += s.embed_flops * plan.sizes[rank] / s.seq_len
        if head and rank == 0:
            f += s.head_flops
        return f * plan.batch

    def extra_dict(self, plan: Plan) -> dict:
        """Strategy-specific entries of Plan.to_dict()."""
        return {}


class Single(Formula):
    name, label, distributed = "single", "single device", False

    def make_plan(self, shape, *, world_size, batch, partition, exchange, elem_bytes, **opts):
        if world_size != 1:
            raise ValueError(f"strategy 'single' runs on one device; world_size={world_size} must be 1")
        n = shape.seq_len
        return Plan("single", shape, 1, batch, (n,), kv_rows=(n,), exchange=exchange,
                    elem_bytes=elem_bytes, formula=self)

    def n_exchanges(self, plan):
        return 0


class Voltage(Formula):
    """Full-feature exchange: (P-1) L_p d b B bytes per device per block."""

    name, label = "voltage", "Voltage"


class Prism(Formula):
    """Segment means: each device sends m means of its rows (CR = L_p / m, L_p the largest part);
    K/V rows per device = own rows + every peer's means ("kv": means of K and V, 2 kv_dim floats)."""

    name, label, options, compresses = "prism", "Prism", ("cr", "m", "averaged"), True
    candidates = (3.3, 4.95, 9.9)

    def make_plan(self, shape, *, cr=None, m=None, averaged=None, **kw):
        base = super().make_plan(shape, **kw)
        m, cr = resolve_m(max(base.sizes), cr=cr, m=m)
        ms = [len(g) for g in prism_segments(base.sizes, m, shape.prefix_tokens)]
        kv = tuple(base.sizes[p] + sum(ms) - ms[p] for p in range(base.world_size))
        return replace(base, m=m, cr=cr, kv_rows=kv, row_width=prism_row_width(shape, averaged))

    def flops(self, plan, rank, *, embed=True, head=True):     # "kv": peers' means arrive projected
        r = (plan.kv_rows[rank] - plan.sizes[rank]) * plan.batch * plan.shape.n_layers * bool(plan.row_width)
        return super().flops(plan, rank, embed=embed, head=head) - 4 * r * plan.shape.d * plan.shape.kv_dim

    def rows_sent(self, plan, rank):
        return len(prism_segments(plan.sizes, plan.m, plan.shape.prefix_tokens)[rank])


class HeadColumnSplit(Formula):
    """tensor_parallel / galaxy: attention heads and MLP columns split over devices.

    Per block, per device r (N tokens, d, element size b, batch B, P devices):
      tensor_parallel: 2 all-reduces of the (B, N, d) partial sums. A ring all-reduce
        (GLOO's own, collective "native") sends 2 (P-1)/P N d b per all-reduce; "pairwise"
        runs it as a reduce-scatter then an all-gather over the row chunks
        c = even_partition(N, P), sending (N - c_r) + (P-1) c_r rows.
      galaxy: 2 reduce-scatters and 2 all-gathers over the sequence split n: device r
        sends (N - n_r) rows per reduce-scatter and (P-1) n_r rows per all-gather.
      Voltage : tensor_parallel = 1 : 4 for even splits.
    GLOO's own reduce_scatter sends an all-reduce's bytes (measured with /proc/self/io on
    torch 2.14), so galaxy's reduce-scatter is pairwise isend/irecv."""

    splits_weights = True
    collectives_per_block = 2

    def _units(self, shape, world_size, heads, cols):
        """GQA: a device holds whole K/V groups of g query heads (default: K/V heads even)."""
        g = shape.heads // (shape.kv_heads or shape.heads)
        hs = (tuple(g * k for k in units_split(None, shape.kv_heads, world_size, "kv heads"))
              if heads is None and g > 1 else units_split(heads, shape.heads, world_size, "heads"))
        if any(h % g for h in hs):
            raise ValueError(f"heads split {list(hs)}: {shape.name!r} shares each K/V head among {g} "
                             f"query heads (grouped-query attention); heads per device must be multiples of {g}")
        return hs, units_split(cols, shape.d_ff, world_size, "cols")

    def n_exchanges(self, plan):
        return 0 if plan.world_size == 1 else plan.shape.n_layers * self.collectives_per_block

    def rows_sent(self, plan, rank):
        return 0

    def comm_bytes(self, plan, rank):
        if plan.world_size == 1:
            return 0
        s, unit = plan.shape, plan.shape.d * plan.elem_bytes * plan.batch
        if plan.collective == "native":
            per_block = 2 * ring_allreduce_bytes(s.seq_len * s.d * plan.batch, plan.world_size,
                                                 plan.elem_bytes)
        else:
            per_block = 2 * rs_ag_rows(plan.sizes, rank) * unit
        return per_block * s.n_layers

    def recv_bytes(self, plan, rank):
        return self.comm_bytes(plan, rank)      # pairwise RS+AG and the ring: recv == sent

    def staged_bytes(self, plan, rank):
        """Native all-reduce: N rows each way; pairwise reduce-scatter (N - s_r) out,
        (P-1) s_r in; pairwise all-gather s_r out, (N - s_r) in."""
        if plan.world_size == 1:
            return 0
        n, sr, p = plan.shape.seq_len, plan.sizes[rank], plan.world_size
        rows = 2 * n if plan.collective == "native" else (n - sr) + (p - 1) * sr + sr + (n - sr)
        return 2 * rows * plan.shape.d * plan.elem_bytes * plan.batch * plan.shape.n_layers

    embed_all_rows = True

    def flops(self, plan, rank, *, embed=True, head=True):
        """Every device runs its heads and columns over all N rows (the connective ops,
        not matmuls, are duplicated by tensor_parallel and split by galaxy)."""
        s = plan.shape
        a = plan.heads_split[rank] * s.dh
        f = s.n_layers * tp_block_flops(s.seq_len, s.seq_len, s.d, a, plan.cols_split[rank],
                                        kv_dim=a * s.kv_dim // s.attn_dim, mlp_mats=s.mlp_mats)
        if embed:
            f += s.embed_flops * self._embed_share(plan, rank)
        if head and rank == 0:
            f += s.head_flops
        return f * plan.batch

    def _embed_share(self, plan, rank) -> float:
        """All rows everywhere: a ViT's patch projection on every device, a decoder's LM head
        (embed_flops with head_flops 0, as costmodel.memory reads it) on device 0 only."""
        if not self.embed_all_rows:
            return plan.sizes[rank] / plan.shape.seq_len
        return 1.0 if rank == 0 or not (plan.shape.embed_flops and not plan.shape.head_flops) else 0.0

    def extra_dict(self, plan):
        return {"heads": list(plan.heads_split), "cols": list(plan.cols_split),
                "collective": plan.collective, "tiles": plan.tiles}


class TensorParallel(HeadColumnSplit):
    name, label, options = "tensor_parallel", "tensor parallel", ("heads", "cols", "collective", "tiles")
    all_rows = True

    def make_plan(self, shape, *, world_size, batch, partition, exchange, elem_bytes,
                  heads=None, cols=None, collective=None, tiles=None):
        hs, cs = self._units(shape, world_size, heads, cols)
        if tiles not in (None, 1):
            raise ValueError(f"tiles={tiles}: tile overlap applies to galaxy only")
        coll = "native" if collective is None else collective
        if coll not in COLLECTIVES:
            raise ValueError(f"unknown collective {coll!r}; known: {list(COLLECTIVES)}")
        if partition is not None:
            raise ValueError("tensor_parallel keeps every token on every device; partition applies "
                             "to voltage, prism and galaxy")
        n = shape.seq_len
        return Plan(self.name, shape, world_size, batch, tuple(even_partition(n, world_size)),
                    kv_rows=(n,) * world_size, exchange=exchange, elem_bytes=elem_bytes,
                    heads_split=hs, cols_split=cs, collective=coll, tiles=1, formula=self)

    def n_messages(self, plan):
        if plan.collective == "native":     # a ring all-reduce: 2 (P-1) steps
            return plan.n_exchanges * 2 * (plan.world_size - 1)
        return plan.n_exchanges * 2         # pairwise reduce-scatter + all-gather


class Galaxy(HeadColumnSplit):
    name, label, options = "galaxy", "Galaxy", ("heads", "cols", "tiles", "collective")
    overlaps_comm = True
    collectives_per_block = 4
    embed_all_rows = False

    def make_plan(self, shape, *, world_size, batch, partition, exchange, elem_bytes,
                  heads=None, cols=None, tiles=None, collective=None):
        hs, cs = self._units(shape, world_size, heads, cols)
        if collective not in (None, "pairwise"):
            raise ValueError(f"galaxy collective {collective!r}; allowed: ['pairwise'] (GLOO's "
                             "reduce_scatter sends an all-reduce's bytes)")
        base = Formula.make_plan(self, shape, world_size=world_size, batch=batch, partition=partition,
                                 exchange=exchange, elem_bytes=elem_bytes)
        t = 1 if tiles is None else tiles
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"tiles={tiles} must be an integer >= 1")
        return Plan(self.name, shape, world_size, batch, base.sizes, kv_rows=base.kv_rows,
                    exchange=exchange, elem_bytes=elem_bytes, heads_split=hs, cols_split=cs,
                    collective="pairwise", tiles=t, formula=self)

    def n_messages(self, plan):
        return plan.n_exchanges * plan.tiles    # one step per collective per tile


@dataclass(frozen=True)
class CoformerPlan(Plan):
    """A coformer Plan: Plan's fields plus `k`, the blocks between aggregations."""

    k: int = 1


class Coformer(HeadColumnSplit):
    """CoFormer: the heads / columns split of tensor_parallel, run as P independent
    sub-models (one per device, all N rows each) whose residual streams are aggregated
    by one ring all-reduce of the (B, N, d) sum of their residual deltas every `k` blocks
    (runtime/parallel/coformer.py; docs/coformer.md). k = 1 aggregates after every
    attention and every MLP sub-layer, as tensor_parallel does (2 all-reduces per block,
    exact); k >= 2 once after blocks k, 2k, ... and after the last one: ceil(L / k)
    all-reduces per pass, each 2 (P-1)/P N d b B bytes per device (GLOO's ring). k = L
    (the default) is CoFormer's single aggregation at the end.

    Flags: distributed, all_rows, splits_weights (fitted with the head/column splits'
    phase parameters; a decision candidate only when a profile was fitted on it, as
    tensor_parallel), and `approximate`: outputs differ from the plain model's for
    k >= 2 (costmodel.accuracy reads it). `collective` is "native" only (the runtime
    all-reduces through the Exchanger's ring); `tiles` 1 only."""

    name, label, options = "coformer", "CoFormer", ("heads", "cols", "k", "collective", "tiles")
    all_rows = True
    approximate = True

    def make_plan(self, shape, *, world_size, batch, partition, exchange, elem_bytes,
                  heads=None, cols=None, k=None, collective=None, tiles=None):
        hs, cs = self._units(shape, world_size, heads, cols)
        if tiles not in (None, 1):
            raise ValueError(f"tiles={tiles}: tile overlap applies to galaxy only")
        if collective not in (None, "native"):
            raise ValueError(f"coformer collective {collective!r}; allowed: ['native'] (the ring "
                             "all-reduce of the Exchanger)")
        if partition is not None:
            raise ValueError("coformer keeps every token on every device; partition applies "
                             "to voltage, prism and galaxy")
        L = shape.n_layers
        kk = L if k is None else k
        if isinstance(kk, bool) or not isinstance(kk, int) or not 1 <= kk <= L:
            raise ValueError(f"k={k!r} must be an integer from 1 (aggregate after every sub-layer, "
                             f"= tensor_parallel) to depth {L} (one aggregation at the end)")
        n = shape.seq_len
        return CoformerPlan(self.name, shape, world_size, batch, tuple(even_partition(n, world_size)),
                            kv_rows=(n,) * world_size, exchange=exchange, elem_bytes=elem_bytes,
                            heads_split=hs, cols_split=cs, collective="native", tiles=1, k=kk,
                            formula=self)

    def n_exchanges(self, plan):
        """All-reduces per pass: 2 L at k = 1, ceil(L / k) otherwise."""
        if plan.world_size == 1:
            return 0
        L = plan.shape.n_layers
        return 2 * L if plan.k == 1 else math.ceil(L / plan.k)

    def n_messages(self, plan):
        return plan.n_exchanges * 2 * (plan.world_size - 1)     # a ring all-reduce: 2 (P-1) steps

    def comm_bytes(self, plan, rank):
        s = plan.shape
        return plan.n_exchanges * ring_allreduce_bytes(s.seq_len * s.d * plan.batch, plan.world_size,
                                                       plan.elem_bytes)

    def staged_bytes(self, plan, rank):
        """On an accelerator: the (B, N, d) sum to the host and back, per all-reduce."""
        s = plan.shape
        return plan.n_exchanges * 2 * s.seq_len * s.d * plan.elem_bytes * plan.batch

    def extra_dict(self, plan):
        return {**super().extra_dict(plan), "k": plan.k}


class Pipeline(Formula):
    """Layer pipeline (GPipe-style forward): device r holds a contiguous range of
    `layers` blocks (uneven allowed) and all N rows of every sample; rank 0 also embeds
    and, at the end, runs the final norm and head. The batch is cut into `microbatches`
    (default min(batch, 4 P); clamped to the batch); each micro-batch's (b, N, d)
    activations go rank r -> r+1 point-to-point, and the last stage sends its block
    output back to rank 0 (which holds the embedding, and GPT-2's tied LM head). So every
    device sends (and receives) B N d b bytes per pass, whatever the split.

    Flags: distributed; all_rows; splits_weights (by layers), so that the decision hook
    compares it only when a profile was fitted on it and a fitted model without its rows
    refuses it: rank 0's phase times of a pipeline include waiting for the downstream
    stages (the bubble), which the row-split strategies' pooled parameters do not
    describe. Not compresses, not overlaps_comm."""

    name, label, options = "pipeline", "pipeline", ("layers", "microbatches")
    all_rows = True
    splits_weights = True

    def make_plan(self, shape, *, world_size, batch, partition, exchange, elem_bytes,
                  layers=None, microbatches=None):
        if partition is not None:
            raise ValueError("pipeline keeps every token on every stage; partition applies to "
                             "voltage, prism and galaxy (split layers with layers=...)")
        ls = units_split(layers, shape.n_layers, world_size, "layers")
        if microbatches is None:
            mb = min(batch, 4 * world_size)
        elif isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1:
            raise ValueError(f"microbatches={microbatches} must be an integer >= 1")
        else:
            mb = min(microbatches, batch)
        n = shape.seq_len
        return Plan(self.name, shape, world_size, batch, tuple(even_partition(n, world_size)),
                    kv_rows=(n,) * world_size, exchange=exchange, elem_bytes=elem_bytes,
                    layers_split=ls, microbatches=mb, formula=self)

    def n_exchanges(self, plan):
        """Point-to-point hand-offs per device per pass: one per micro-batch."""
        return 0 if plan.world_size == 1 else plan.microbatches

    def n_messages(self, plan):
        """Message steps on the critical path: the first micro-batch crosses all P links
        (the last one back to rank 0), each later one adds one step."""
        return 0 if plan.world_size == 1 else plan.microbatches + plan.world_size - 1

    def rows_sent(self, plan, rank):
        return plan.shape.seq_len

    def comm_bytes(self, plan, rank):
        if plan.world_size == 1:
            return 0
        return plan.shape.seq_len * plan.shape.d * plan.elem_bytes * plan.batch

    def recv_bytes(self, plan, rank):
        return self.comm_bytes(plan, rank)

    def staged_bytes(self, plan, rank):
        """On an accelerator: the sent activations device->host, the received host->device."""
        return 2 * self.comm_bytes(plan, rank)

    def flops(self, plan, rank, *, embed=True, head=True):
        s = plan.shape
        f = plan.layers_split[rank] * s.block_flops(s.seq_len, s.seq_len)
        if embed and rank == 0:
            f += s.embed_flops          # GPT-2: the per-token LM head, on rank 0 for all rows
        if head and rank == 0:
            f += s.head_flops
        return f * plan.batch

    def extra_dict(self, plan):
        return {"layers": list(plan.layers_split), "microbatches": plan.microbatches}


for _f in (Single(), Voltage(), Prism(), TensorParallel(), Galaxy(), Coformer(), Pipeline()):
    register_formula(_f)
