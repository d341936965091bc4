"""coformer: a plain model decomposed into P sub-models, one per device (CoFormer, Xu et
al.), whose residual streams are aggregated every `k` blocks.

    runner = create_strategy("coformer", k=4).apply(adapter, ctx)        # one aggregation at the end
    runner = create_strategy("coformer", k=1).apply(adapter, ctx)        # == tensor_parallel
    runner = create_strategy("coformer", weights="data/fidelity/coformer/vit_digits_p2_k4.safetensors")

Decomposition: tensor_parallel's. Device r holds heads H_r (their q/k/v rows and proj
columns) and MLP columns C_r of every block (uneven `heads` / `cols` for unequal boards)
and all N rows; the embedding, norms, biases and head are every device's (the parent's).
Which heads and columns go where is `assign`: "contiguous" is tensor_parallel's ranges;
"importance" (the default) gives every device a share of the block's importance equal
to its share of the units (`assign_units`, docs/coformer.md):
    head importance    = ||W_v[h]||_F * ||W_proj[:, h]||_F   (its value rows, its output columns)
    channel importance = ||W_fc1[c]||_2 * ||W_fc2[:, c]||_2
units sorted by importance, each to the device needing the most importance per free slot.

Sub-models and the aggregation rule (residual families: timm ViT, HF ViT). Device r
keeps its own stream x_r and, since the last aggregation point, the sum u_r of its
*unscaled* residual deltas. With beta_r = its share of the sub-layer's units (h_r / H
for attention, c_r / d_ff for the MLP), f_r its partial sum (no bias) and g the
sub-layer's connective op (bias b, LayerScale, dropout: linear), one sub-layer is
    y_r = g(f_r / beta_r + b)       x_r += y_r       u_r += beta_r y_r
so a sub-model alone is the parent with its missing units' share made up by scaling,
and adds the full bias to its own stream. At an aggregation point every device gets
    x = x0 + sum_r u_r        (one all-reduce of u_r; x0 = the stream at the last point)
and restarts x_r = x. Since sum_r beta_r g(f_r / beta_r + b) = g(sum_r f_r + b) (the bias
counted once), aggregating after every sub-layer is tensor_parallel exactly: k = 1 puts
the points after every attention and every MLP sub-layer. k >= 2 puts one after blocks
k-1, 2k-1, ... (0-based) and after the last. Post-LN families (BERT, RoBERTa,
DistilBERT) have no additive residual stream: k = 1 only (the partial sums all-reduced,
then the block's own add & norm), larger k is refused.

Calibrated sub-models (runtime/parallel/coformer_calib.py) replace each device's shard
tensors and add a learned per-device bias correction e_r to f_r (zero before
calibration); `weights=path` loads them, its JSON card fixes heads, cols and k.
All messages go through the Exchanger (`emulated`): runtime/train/emulate.py runs this
code in one process, differentiably.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Optional

import torch

from costmodel.formulas import offsets
from .base import opt, register_strategy
from .tp_layout import HeadColumnSplit, layout_for

ASSIGN = ("importance", "contiguous")
RESIDUAL_FAMILIES = ("vit", "hf_vit")     # pre-LN: a sub-layer adds g(.) to the stream
SUBLAYERS = ("attn", "mlp")
SHARD_TENSORS = ("wqkv", "bqkv", "wproj", "wfc1", "bfc1", "wfc2", "battn", "bmlp")
CARD_KIND = "coformer_submodels"


# --------------------------------------------------------------------------- sub-model weights

class SubShard:
    """One device's slice of one block: the heads / columns it holds (tensor_parallel's
    shard attributes, so tp_layout's attend / mlp run on it) plus its bias corrections
    battn, bmlp (d each, added to its partial sums; zero for an uncalibrated split)."""

    def __init__(self, tensors: dict, heads: int, head_dim: int, heads_idx=(), cols_idx=()):
        for k in SHARD_TENSORS:
            setattr(self, k, tensors.get(k))
        self.heads, self.head_dim = heads, head_dim
        self.attn_dim = heads * head_dim
        self.heads_idx, self.cols_idx = tuple(heads_idx), tuple(cols_idx)

    def tensors(self) -> dict:
        return {k: getattr(self, k) for k in SHARD_TENSORS if getattr(self, k) is not None}

    def parameters(self) -> list:
        return list(self.tensors().values())


def head_importance(full) -> list:
    """Per head: ||W_v[h]||_F * ||W_proj[:, h]||_F, from a full-width shard."""
    A, Dh = full.attn_dim, full.head_dim
    wv, wo = full.wqkv[2 * A:].detach(), full.wproj.detach()
    return [float(wv[h * Dh:(h + 1) * Dh].norm() * wo[:, h * Dh:(h + 1) * Dh].norm())
            for h in range(full.heads)]


def col_importance(full) -> list:
    """Per MLP channel: ||W_fc1[c]||_2 * ||W_fc2[:, c]||_2."""
    return (full.wfc1.detach().norm(dim=1) * full.wfc2.detach().norm(dim=0)).tolist()


def balanced_split(importance, widths) -> list:
    """Units (indices of `importance`) to devices, len(result[r]) == widths[r]: sorted by
    importance (largest first), each to the device that still needs the most importance
    per free slot, (target_r - got_r) / free_r with target_r = sum(importance) * widths[r]
    / sum(widths) (ties: lower rank). Equal widths give the snake order 0, 1, 1, 0, ...;
    uneven widths end within a unit's importance of their share."""
    n, widths = len(importance), [int(w) for w in widths]
    if sum(widths) != n or any(w < 0 for w in widths):
        raise ValueError(f"widths {widths} must be >= 0 and sum to {n} units")
    total = float(sum(importance))
    target = [total * w / max(n, 1) for w in widths]
    got, sets = [0.0] * len(widths), [[] for _ in widths]
    for u in sorted(range(n), key=lambda u: (-importance[u], u)):
        r = max((q for q in range(len(widths)) if len(sets[q]) < widths[q]),
                key=lambda q: ((target[q] - got[q]) / (widths[q] - len(sets[q])), -q))
        sets[r].append(u)
        got[r] += importance[u]
    return [sorted(s) for s in sets]


def assign_units(lay, n_layers: int, heads_split, cols_split, mode: str = "importance") -> list:
    """Per block, per device: (head indices, column indices). "contiguous": tensor_parallel's
    ranges; "importance": balanced_split of head_importance / col_importance."""
    if mode not in ASSIGN:
        raise ValueError(f"assign={mode!r}; allowed: {list(ASSIGN)}")
    hs, cs = offsets(heads_split), offsets(cols_split)
    out = []
    with torch.no_grad():
        for i in range(n_layers):
            out.append(_assign_block(lay, i, heads_split, cols_split, hs, cs, mode))
    return out


def _assign_block(lay, i, heads_split, cols_split, hs, cs, mode) -> list:
    if mode == "contiguous":
        return [(list(range(hs[r], hs[r] + h)), list(range(cs[r], cs[r] + c)))
                for r, (h, c) in enumerate(zip(heads_split, cols_split))]
    full = lay.shard(i, 0, lay.heads, 0, sum(cols_split))
    hsets = balanced_split(head_importance(full), heads_split)
    csets = balanced_split(col_importance(full), cols_split)
    return list(zip(hsets, csets))


def slice_shard(lay, i: int, heads_idx, cols_idx, d_ff: int) -> SubShard:
    """The parent's block i restricted to the given heads and MLP columns (copies)."""
    full = lay.shard(i, 0, lay.heads, 0, d_ff)
    A, Dh = full.attn_dim, full.head_dim
    rows = torch.tensor([h * Dh + j for h in heads_idx for j in range(Dh)], dtype=torch.long)
    qkv = torch.cat([rows, rows + A, rows + 2 * A])
    c = torch.tensor(list(cols_idx), dtype=torch.long)
    d = full.wproj.shape[0]
    t = {"wqkv": full.wqkv[qkv], "bqkv": None if full.bqkv is None else full.bqkv[qkv],
         "wproj": full.wproj[:, rows], "wfc1": full.wfc1[c],
         "bfc1": None if full.bfc1 is None else full.bfc1[c], "wfc2": full.wfc2[:, c],
         "battn": full.wproj.new_zeros(d), "bmlp": full.wproj.new_zeros(d)}
    return SubShard({k: None if v is None else v.detach().clone().contiguous() for k, v in t.items()},
                    len(heads_idx), Dh, heads_idx, cols_idx)


@functools.lru_cache(maxsize=32)
def _card_cached(path: str, mtime: float) -> dict:
    with open(path) as f:
        return json.load(f)


def card_path(weights: str) -> str:
    return os.path.splitext(weights)[0] + ".json"


def load_card(weights: str) -> dict:
    """The JSON card next to a calibrated-weights file (ValueError if missing or not one)."""
    if not str(weights).endswith(".safetensors"):
        raise ValueError(f"weights={weights!r} must be a .safetensors file written by "
                         "runtime.parallel.coformer_calib")
    cp = card_path(weights)
    for p in (weights, cp):
        if not os.path.isfile(p):
            raise ValueError(f"coformer weights: {p!r} does not exist")
    card = _card_cached(cp, os.path.getmtime(cp))
    if card.get("schema_version") != 1 or card.get("kind") != CARD_KIND:
        raise ValueError(f"{cp!r} is not a coformer sub-model card (schema_version 1, kind {CARD_KIND!r})")
    return card


def load_shards(weights: str, rank: int, head_dim: int) -> list:
    """Device `rank`'s SubShards, every block, from a calibrated-weights file."""
    from safetensors import safe_open

    card = load_card(weights)
    out = []
    with safe_open(weights, framework="pt") as f:
        keys = set(f.keys())
        for i in range(card["n_layers"]):
            t = {k: f.get_tensor(f"block{i}.rank{rank}.{k}") for k in SHARD_TENSORS
                 if f"block{i}.rank{rank}.{k}" in keys}
            hi, ci = card["assignment"][i][rank]
            out.append(SubShard(t, len(hi), head_dim, hi, ci))
    return out


# --------------------------------------------------------------------------- the sub-layers

@dataclass
class Streams:
    """One device's state between aggregation points: its own stream x, the stream x0 at
    the last point, and u, the sum of its unscaled residual deltas since (None: zero)."""

    x: torch.Tensor
    x0: torch.Tensor
    u: Optional[torch.Tensor] = None


@dataclass
class CoState:
    """One rank's sub-model: layout, SubShards per block, unit shares, aggregation points."""

    layout: object
    shards: list
    beta: dict              # {"attn": h_r / H, "mlp": c_r / d_ff}
    points: frozenset       # {(block, sublayer)} after which the streams are aggregated
    residual: bool          # additive residual stream (pre-LN) or post-LN (k = 1 only)
    n_layers: int


def aggregation_points(n_layers: int, k: int) -> frozenset:
    """k = 1: after every sub-layer; k >= 2: after the MLP of blocks k-1, 2k-1, ... and the last."""
    if k == 1:
        return frozenset((i, s) for i in range(n_layers) for s in SUBLAYERS)
    return frozenset((i, "mlp") for i in range(n_layers) if (i + 1) % k == 0 or i == n_layers - 1)


def sublayer(st: CoState, i: int, sub: str, s: Streams, bias) -> Streams:
    """One sub-layer of this device's sub-model on its own stream (module docstring)."""
    lay, sh = st.layout, st.shards[i]
    if sub == "attn":
        h = lay.ln_attn(i, s.x)
        part = lay.attend(i, sh, lay.qkv(i, sh, h), 0, h.shape[1], bias)
        corr, after = sh.battn, lay.after_attn
    else:
        part = lay.mlp(i, sh, lay.ln_mlp(i, s.x))
        corr, after = sh.bmlp, lay.after_mlp
    if corr is not None:
        part = part + corr
    if not st.residual:                 # post-LN (k = 1): the partial sum waits for the others
        return Streams(s.x, s.x0, part)
    beta = st.beta[sub]
    if beta == 0:
        return s
    y = after(i, torch.zeros_like(s.x), part / beta)
    return Streams(s.x + y, s.x0, beta * y if s.u is None else s.u + beta * y)


def aggregate(st: CoState, i: int, sub: str, s: Streams, total: torch.Tensor) -> Streams:
    """The stream after an aggregation point, from `total` = the sum of every device's u."""
    if st.residual:
        x = s.x0 + total
    else:
        x = (st.layout.after_attn if sub == "attn" else st.layout.after_mlp)(i, s.x0, total)
    return Streams(x, x, None)


def own_u(s: Streams) -> torch.Tensor:
    return torch.zeros_like(s.x0) if s.u is None else s.u


def emulate_block(states: list, i: int, streams: list, bias=None) -> list:
    """Block i of every device's sub-model in one process (the sum over devices stands for
    the all-reduce): the same sublayer / aggregate code block_step runs on each rank."""
    for sub in SUBLAYERS:
        streams = [sublayer(st, i, sub, s, bias) for st, s in zip(states, streams)]
        if (i, sub) in states[0].points:
            total = sum(own_u(s) for s in streams)
            streams = [aggregate(st, i, sub, s, total) for st, s in zip(states, streams)]
    return streams


def virtual_aggregate(streams: list) -> torch.Tensor:
    """x0 + sum_r u_r: what an aggregation here would give (calibration's target point)."""
    return streams[0].x0 + sum(own_u(s) for s in streams)


# --------------------------------------------------------------------------- the strategy

def _k(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"k={v!r} must be an integer >= 1")
    k = int(v)
    if k < 1:
        raise ValueError(f"k={v!r} must be an integer >= 1 (1: tensor_parallel; depth: one aggregation)")
    return k


@register_strategy("coformer")
@dataclass(frozen=True)
class CoFormer(HeadColumnSplit):
    """P independent sub-models (heads / MLP columns split), streams aggregated every k blocks."""

    all_rows = True
    emulated = True
    k: Optional[int] = opt(None, "aggregate the sub-models' streams every k blocks (default: depth, "
                                 "one aggregation at the end; 1: tensor_parallel exactly)")
    assign: str = opt("importance", "heads / MLP columns to devices", choices=ASSIGN)
    weights: Optional[str] = opt(None, "calibrated sub-models (.safetensors + .json card, "
                                       "runtime.parallel.coformer_calib)")

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "k", _k(self.k))
        if self.assign not in ASSIGN:
            raise ValueError(f"assign={self.assign!r}; allowed: {list(ASSIGN)}")
        if self.weights is not None:
            card = load_card(self.weights)
            for name in ("heads", "cols", "k"):
                mine = getattr(self, name)
                theirs = card[name] if name == "k" else tuple(card[name])
                if mine is not None and mine != theirs:
                    raise ValueError(f"{name}={mine} differs from the calibrated sub-models' "
                                     f"{theirs} ({card_path(self.weights)})")

    @classmethod
    def exact_options(cls, seq_len: int, world_size: int) -> dict:
        return {"k": 1}

    def plan_options(self) -> dict:
        if self.weights is None:
            return {"heads": self.heads, "cols": self.cols, "k": self.k}
        card = load_card(self.weights)
        return {"heads": tuple(card["heads"]), "cols": tuple(card["cols"]), "k": card["k"]}

    def plan(self, adapter, ctx, batch):
        if self.weights is not None:        # the card's model and P first: its options follow
            card, s = load_card(self.weights), adapter.shape
            want = {"d": s.d, "heads": s.heads, "d_ff": s.d_ff, "n_layers": s.n_layers}
            got = {k: card["shape"][k] for k in want}
            if got != want or card["world_size"] != ctx.world_size:
                raise ValueError(f"calibrated sub-models {self.weights!r} are for shape {got}, "
                                 f"P={card['world_size']}; this model is {want}, P={ctx.world_size}")
        plan = super().plan(adapter, ctx, batch)
        fam = getattr(adapter, "family", None)      # known before any weights (run's validation)
        if fam is not None and plan.k > 1 and fam not in RESIDUAL_FAMILIES and ctx.world_size > 1:
            raise ValueError(f"coformer k={plan.k} needs an additive residual stream (families "
                             f"{list(RESIDUAL_FAMILIES)}), not {fam!r}: k=1 only (--k 1, tensor_parallel's exact split)")
        return plan

    def prepare(self, adapter, ctx, plan) -> CoState:
        lay = layout_for(adapter)
        residual = getattr(adapter, "family", "?") in RESIDUAL_FAMILIES
        if plan.k > 1 and not residual and ctx.world_size > 1:
            raise ValueError(f"coformer k={plan.k} needs an additive residual stream (families "
                             f"{list(RESIDUAL_FAMILIES)}); {adapter.family!r} is post-LN: k=1 only")
        s, r = adapter.shape, ctx.rank
        beta = {"attn": plan.heads_split[r] / s.heads, "mlp": plan.cols_split[r] / s.d_ff}
        if self.weights is not None:          # plan() checked the card against the model
            shards = load_shards(self.weights, r, lay.head_dim)
        else:
            units = assign_units(lay, s.n_layers, plan.heads_split, plan.cols_split, self.assign)
            with torch.no_grad():
                shards = [slice_shard(lay, i, *units[i][r], s.d_ff) for i in range(s.n_layers)]
        # post-LN: every sub-layer (k = 1, or P = 1 where every k is exact)
        points = aggregation_points(s.n_layers, plan.k if residual else 1)
        return CoState(lay, shards, beta, points, residual, s.n_layers)

    def block_step(self, run, i, x, ex, timer):
        st = run.state
        s = x if isinstance(x, Streams) else Streams(x, x, None)
        for sub in SUBLAYERS:
            with timer.phase("compute"):
                s = sublayer(st, i, sub, s, run.bias)
            if (i, sub) in st.points:
                total = own_u(s) if run.ctx.world_size == 1 else ex.all_reduce(own_u(s))
                with timer.phase("compute"):
                    s = aggregate(st, i, sub, s, total)
        return s.x if i == st.n_layers - 1 else s
