"""What tensor_parallel and galaxy share: per-family block layouts (weights split by
heads and MLP columns), the pairwise / ring collectives, and their common base class.

    runner = create_strategy("galaxy", heads=[4, 2], cols=[1024, 512]).apply(adapter, ctx)

tensor_parallel: every device holds all N rows; device r owns heads H_r (its q/k/v rows
  of the fused qkv weight and the matching proj columns) and MLP columns C_r (fc1 rows,
  fc2 columns). Two all-reduces of the (B, N, d) partial sums per block (after proj,
  after fc2); biases, LayerScale, residuals and LayerNorms run on every device on all
  rows (duplicated).
galaxy (Ye et al., INFOCOM 2024): the same head / column split for attention and MLP,
  but the connective ops (bias, LayerScale, dropout, residual, LayerNorm) run
  sequence-parallel on each device's own rows (`partition`, uneven allowed). Per block:
  all-gather of the normed rows before attention, reduce-scatter of the proj partial
  sums, all-gather before the MLP, reduce-scatter of the fc2 partial sums.
  Overlap by tiles: every message is cut into `tiles` row tiles; a device computes q/k/v
  on the tiles it already holds while the rest arrive, and sends each partial-sum tile
  as soon as it is computed while it computes the next (isend/irecv run on GLOO's I/O
  threads). `overlap=False` runs the same collectives blocking, for comparison.

Collectives: GLOO on CPU implements reduce_scatter, but as an all-reduce on the wire
(measured with /proc/self/io: it sends 2 (P-1)/P N d b per device, as dist.all_reduce),
and its all_gather needs equal sizes. So galaxy's reduce-scatter and all-gather are
pairwise isend/irecv (uneven chunks; (N - n_r) and (P-1) n_r rows sent). tensor_parallel
uses GLOO's ring all-reduce (collective "native") or the same pairwise reduce-scatter +
all-gather over even row chunks ("pairwise"). Bytes counted are those handed to isend
(pairwise) or the ring's 2 (P-1)/P share of the all-reduced tensor (native): the
formulas in costmodel.formulas (tp_comm_bytes), tested equal.

Timing follows the Exchanger's phases: compute, staging (device<->host copies on an
accelerator), comm. Under overlap, comm_ms is the time a device waits on communication
that computation did not hide.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from costmodel.formulas import offsets, ring_allreduce_bytes, segment_sizes
from ..models.masks import full_token_masks
from .base import Strategy, opt
from .exchange import Timer

TAG_AG, TAG_RS = 1 << 10, 2 << 10       # message tags: kind + tile index


# --------------------------------------------------------------------------- layouts

class _Shard:
    """One block's weights on one device: heads [h0, h1) and MLP columns [c0, c1)."""

    def __init__(self, wqkv, bqkv, wproj, wfc1, bfc1, wfc2, heads: int, head_dim: int):
        self.wqkv, self.bqkv, self.wproj = wqkv, bqkv, wproj
        self.wfc1, self.bfc1, self.wfc2 = wfc1, bfc1, wfc2
        self.heads, self.head_dim = heads, head_dim
        self.attn_dim = heads * head_dim


def _rows(w: Optional[torch.Tensor], ranges) -> Optional[torch.Tensor]:
    if w is None:
        return None
    return torch.cat([w[a:b] for a, b in ranges], dim=0).contiguous()


class _Layout:
    """What tensor_parallel and galaxy need from a block, per model family."""

    heads: int
    head_dim: int

    def shard(self, i: int, h0: int, h1: int, c0: int, c1: int) -> _Shard:
        wq, bq, wk, bk, wv, bv, wo, w1, b1, w2 = self._weights(i)
        Dh = self.head_dim
        r = [(h0 * Dh, h1 * Dh)]
        wqkv = torch.cat([_rows(wq, r), _rows(wk, r), _rows(wv, r)], dim=0)
        bqkv = None if bq is None else torch.cat([_rows(bq, r), _rows(bk, r), _rows(bv, r)])
        return _Shard(wqkv, bqkv, wo[:, h0 * Dh:h1 * Dh].contiguous(), w1[c0:c1].contiguous(),
                      None if b1 is None else b1[c0:c1].contiguous(), w2[:, c0:c1].contiguous(),
                      h1 - h0, Dh)

    def qkv(self, i: int, sh: _Shard, h: torch.Tensor) -> torch.Tensor:
        """(B, L, 3 A_r) projected rows (q | k | v for this device's heads)."""
        return F.linear(h, sh.wqkv, sh.bqkv)

    def keys_values(self, i: int, sh: _Shard, qkv_all: torch.Tensor):
        """(k, v), each (B, heads_r, N, Dh), k normed; computed once per block."""
        B, N, _ = qkv_all.shape
        A, H, Dh = sh.attn_dim, sh.heads, sh.head_dim
        k = qkv_all[:, :, A:2 * A].reshape(B, N, H, Dh).transpose(1, 2)
        v = qkv_all[:, :, 2 * A:].reshape(B, N, H, Dh).transpose(1, 2)
        return self.qk_norm(i, None, k)[1], v

    def attend(self, i: int, sh: _Shard, qkv_all: torch.Tensor, a: int, L: int,
               bias: Optional[torch.Tensor], kv=None) -> torch.Tensor:
        """proj partial sum (B, L, d), no bias, for query rows [a, a+L) over all N rows
        (kv: keys_values(...) when several row ranges share them)."""
        B, N, _ = qkv_all.shape
        A, H, Dh = sh.attn_dim, sh.heads, sh.head_dim
        if A == 0:
            return qkv_all.new_zeros(B, L, sh.wproj.shape[0])
        k, v = self.keys_values(i, sh, qkv_all) if kv is None else kv
        q = qkv_all[:, a:a + L, :A].reshape(B, L, H, Dh).transpose(1, 2)
        q = self.qk_norm(i, q, None)[0]
        b = None if bias is None else bias[:, :, a:a + L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=b, scale=self.scale(i))
        return F.linear(out.transpose(1, 2).reshape(B, L, A), sh.wproj)

    def mlp(self, i: int, sh: _Shard, h: torch.Tensor) -> torch.Tensor:
        """fc2 partial sum (B, L, d), no bias."""
        if sh.wfc1.shape[0] == 0:
            return h.new_zeros(h.shape[0], h.shape[1], sh.wfc2.shape[0])
        return F.linear(self.act(i, F.linear(h, sh.wfc1, sh.bfc1)), sh.wfc2)


class ViTLayout(_Layout):
    """timm Block (pre-LN): x + ls1(proj(attn(norm1 x))); x + ls2(fc2(act(fc1(norm2 x))))."""

    def __init__(self, adapter):
        from timm.layers import Mlp

        self.blocks = adapter.blocks
        at = self.blocks[0].attn
        self.heads, self.head_dim = at.num_heads, at.head_dim
        for k, blk in enumerate(self.blocks):
            a = blk.attn
            if not isinstance(a.norm, nn.Identity) or getattr(a, "gate", None) is not None:
                raise ValueError(f"block {k}: attention with scale_norm or a gate cannot be split by "
                                 "heads; tensor_parallel/galaxy support plain timm Attention")
            if type(blk.mlp) is not Mlp or not isinstance(blk.mlp.norm, nn.Identity):
                raise ValueError(f"block {k}: MLP {type(blk.mlp).__name__} is not a plain timm Mlp; "
                                 "tensor_parallel/galaxy support fc1 -> act -> fc2")
            if a.attn_dim != self.blocks[0].norm1.normalized_shape[0]:
                raise ValueError(f"block {k}: attn_dim {a.attn_dim} != d; not supported")

    def _weights(self, i):
        blk = self.blocks[i]
        A = blk.attn.attn_dim
        w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
        bs = (None, None, None) if b is None else (b[:A], b[A:2 * A], b[2 * A:])
        return (w[:A], bs[0], w[A:2 * A], bs[1], w[2 * A:], bs[2], blk.attn.proj.weight,
                blk.mlp.fc1.weight, blk.mlp.fc1.bias, blk.mlp.fc2.weight)

    def ln_attn(self, i, x):
        return self.blocks[i].norm1(x)

    def qk_norm(self, i, q, k):
        a = self.blocks[i].attn
        return (None if q is None else a.q_norm(q)), (None if k is None else a.k_norm(k))

    def scale(self, i):
        return self.blocks[i].attn.scale

    def after_attn(self, i, x, a):
        blk = self.blocks[i]
        pb = blk.attn.proj.bias
        a = a if pb is None else a + pb
        return x + blk.drop_path1(blk.ls1(blk.attn.proj_drop(a)))

    def ln_mlp(self, i, x):
        return self.blocks[i].norm2(x)

    def act(self, i, u):
        m = self.blocks[i].mlp
        return m.drop1(m.act(u))

    def after_mlp(self, i, x, m):
        blk = self.blocks[i]
        b = blk.mlp.fc2.bias
        m = m if b is None else m + b
        return x + blk.drop_path2(blk.ls2(blk.mlp.drop2(m)))


class BertLayout(_Layout):
    """HF BertLayer (post-LN): a = LN(dense(attn(x)) + x); LN(out(act(inter(a))) + a)."""

    def __init__(self, adapter):
        self.blocks = adapter.blocks
        sa = self.blocks[0].attention.self
        self.heads, self.head_dim = sa.num_attention_heads, sa.attention_head_size

    def _weights(self, i):
        ly = self.blocks[i]
        sa = ly.attention.self
        return (sa.query.weight, sa.query.bias, sa.key.weight, sa.key.bias, sa.value.weight,
                sa.value.bias, ly.attention.output.dense.weight, ly.intermediate.dense.weight,
                ly.intermediate.dense.bias, ly.output.dense.weight)

    def ln_attn(self, i, x):
        return x

    def qk_norm(self, i, q, k):
        return q, k

    def scale(self, i):
        sa = self.blocks[i].attention.self
        return getattr(sa, "scaling", self.head_dim ** -0.5)

    def after_attn(self, i, x, a):
        o = self.blocks[i].attention.output
        return o.LayerNorm(o.dropout(a + o.dense.bias) + x)

    def ln_mlp(self, i, x):
        return x

    def act(self, i, u):
        return self.blocks[i].intermediate.intermediate_act_fn(u)

    def after_mlp(self, i, x, m):
        o = self.blocks[i].output
        return o.LayerNorm(o.dropout(m + o.dense.bias) + x)


LAYOUTS = {"vit": ViTLayout, "bert": BertLayout, "roberta": BertLayout}
Layout = _Layout        # public base for layouts registered from other modules


def register_layout(family: str, cls) -> None:
    """Register the head / column layout of a model family (parallel/tp_layout_hf.py)."""
    LAYOUTS[family] = cls


def layout_for(adapter) -> _Layout:
    fam = getattr(adapter, "family", "?")
    if fam not in LAYOUTS:
        raise ValueError(f"tensor_parallel/galaxy support model families {sorted(LAYOUTS)}, "
                         f"not {fam!r} ({getattr(adapter, 'name', '?')})")
    return LAYOUTS[fam](adapter)


# --------------------------------------------------------------------------- collectives

def row_tiles(rows: int, tiles: int) -> list:
    """(start, length) of the row tiles of one message (tensor_split semantics)."""
    out, a = [], 0
    for s in segment_sizes(rows, min(tiles, rows)):
        out.append((a, s))
        a += s
    return out


class _Req:
    """A GLOO Work waited at most once: a second wait() on GLOO's point-to-point work
    blocks for a *further* message, so every wait goes through here."""

    __slots__ = ("work", "done")

    def __init__(self, work):
        self.work, self.done = work, False

    def wait(self) -> None:
        if not self.done:
            self.work.wait()
            self.done = True


class Comm:
    """Pairwise all-gather / reduce-scatter and the native all-reduce of one forward
    pass, timed into `timer` (phases comm / staging) with bytes sent by this rank."""

    def __init__(self, rank: int, world: int, device: torch.device, timer: Timer, tiles: int = 1):
        self.rank, self.world, self.device, self.timer, self.tiles = rank, world, device, timer, tiles
        self.on_accel = device.type != "cpu"
        self.peers = [(rank + k) % world for k in range(1, world)]   # r+1, r+2, ...

    def _host(self, t: torch.Tensor) -> torch.Tensor:
        if not self.on_accel:
            return t.contiguous()
        with self.timer.phase("staging") as rec:
            h = t.contiguous().to("cpu")
            rec.staged_bytes += h.numel() * h.element_size()
        return h

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        if not self.on_accel:
            return t
        with self.timer.phase("staging") as rec:
            rec.staged_bytes += t.numel() * t.element_size()
            return t.to(self.device)

    def _isend(self, t: torch.Tensor, dst: int, tag: int):
        with self.timer.phase("comm") as rec:
            rec.comm_bytes += t.numel() * t.element_size()
            return _Req(dist.isend(t, dst=dst, tag=tag))

    # ---- all-gather: own rows to every peer; chunk(q, k) waits for tile k of peer q
    def all_gather(self, own: torch.Tensor, sizes: Sequence[int]) -> "_Gather":
        return _Gather(self, own, sizes)

    # ---- reduce-scatter: send(q, k, part) ships tile k of peer q's partial sum
    def reduce_scatter(self, like: torch.Tensor, sizes: Sequence[int]) -> "_Scatter":
        return _Scatter(self, like, sizes)

    def all_reduce_native(self, t: torch.Tensor) -> torch.Tensor:
        """GLOO's ring all-reduce; bytes: the ring's 2 (P-1)/P share of t."""
        h = self._host(t)
        with self.timer.phase("comm") as rec:
            dist.all_reduce(h)
            rec.comm_bytes += ring_allreduce_bytes(h.numel(), self.world, h.element_size())
        return self._dev(h)

    def all_reduce_pairwise(self, t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Reduce-scatter then all-gather over row chunks `sizes` (B, N, d)."""
        offs = offsets(sizes)
        r = self.rank
        rs = self.reduce_scatter(t[:, :sizes[r]], sizes)
        for q in self.peers:
            for k, (a, s) in enumerate(row_tiles(sizes[q], self.tiles)):
                rs.send(q, k, t[:, offs[q] + a:offs[q] + a + s])
        own = rs.reduce(t[:, offs[r]:offs[r] + sizes[r]])
        ag = self.all_gather(own, sizes)
        out = torch.cat([own if q == r else ag.full(q) for q in range(self.world)], dim=1)
        ag.finish()
        return out


class _Gather:
    def __init__(self, c: Comm, own: torch.Tensor, sizes):
        self.c, self.sizes = c, sizes
        B, _, d = own.shape
        self.bufs, self.reqs, self.sends = {}, {}, []
        with c.timer.phase("comm"):
            for q in c.peers:
                for k, (a, s) in enumerate(row_tiles(sizes[q], c.tiles)):
                    buf = torch.empty(B, s, d, dtype=own.dtype)
                    self.bufs[q, k] = buf
                    self.reqs[q, k] = _Req(dist.irecv(buf, src=q, tag=TAG_AG + k))
        host = c._host(own)
        self.host = host
        for q in c.peers:
            for k, (a, s) in enumerate(row_tiles(sizes[c.rank], c.tiles)):
                self.sends.append(c._isend(host[:, a:a + s].contiguous(), q, TAG_AG + k))

    def tiles_of(self, q: int) -> list:
        return row_tiles(self.sizes[q], self.c.tiles)

    def chunk(self, q: int, k: int) -> torch.Tensor:
        with self.c.timer.phase("comm"):
            self.reqs[q, k].wait()
        return self.c._dev(self.bufs[q, k])

    def full(self, q: int) -> torch.Tensor:
        return torch.cat([self.chunk(q, k) for k in range(len(self.tiles_of(q)))], dim=1)

    def wait_all(self) -> None:
        with self.c.timer.phase("comm"):
            for r in list(self.reqs.values()) + self.sends:
                r.wait()

    def finish(self) -> None:
        with self.c.timer.phase("comm"):
            for r in self.sends:
                r.wait()


class _Scatter:
    def __init__(self, c: Comm, like: torch.Tensor, sizes):
        self.c, self.sizes = c, sizes
        B, _, d = like.shape
        self.dtype = like.dtype
        self.bufs, self.reqs, self.sends = [], [], []
        with c.timer.phase("comm"):
            for q in c.peers:
                for k, (a, s) in enumerate(row_tiles(sizes[c.rank], c.tiles)):
                    buf = torch.empty(B, s, d, dtype=like.dtype)
                    self.bufs.append((a, s, buf))
                    self.reqs.append(_Req(dist.irecv(buf, src=q, tag=TAG_RS + k)))

    def send(self, q: int, k: int, part: torch.Tensor) -> None:
        self.sends.append(self.c._isend(self.c._host(part), q, TAG_RS + k))

    def reduce(self, own_part: torch.Tensor) -> torch.Tensor:
        """own partial + every peer's partial of this rank's rows; waits for all sends."""
        with self.c.timer.phase("comm"):
            for r in self.reqs + self.sends:
                r.wait()
        out = own_part.clone()
        for a, s, buf in self.bufs:
            b = self.c._dev(buf)
            with self.c.timer.phase("compute"):
                out[:, a:a + s] += b
        return out




# --------------------------------------------------------------------------- the shared base

@dataclass(frozen=True)
class TPState:
    """One rank's layout and weight shards (its heads and MLP columns, every block)."""

    layout: "_Layout"
    shards: list


def _split(v):
    return None if v is None else tuple(int(x) for x in v)


@dataclass(frozen=True)
class HeadColumnSplit(Strategy):
    """Base of tensor_parallel and galaxy: attention heads and MLP columns split over
    the devices (uneven `heads` / `cols` allowed for heterogeneous boards)."""

    heads: Optional[tuple] = opt(None, "heads per device, e.g. 4,2", type=_split)
    cols: Optional[tuple] = opt(None, "MLP hidden columns per device, e.g. 1024,512", type=_split)

    def __post_init__(self):
        object.__setattr__(self, "heads", _split(self.heads))
        object.__setattr__(self, "cols", _split(self.cols))

    def plan_options(self) -> dict:
        return {"heads": self.heads, "cols": self.cols}

    def prepare(self, adapter, ctx, plan) -> TPState:
        lay = layout_for(adapter)
        hs, cs = offsets(plan.heads_split), offsets(plan.cols_split)
        r = ctx.rank
        h0, c0 = hs[r], cs[r]
        h1, c1 = h0 + plan.heads_split[r], c0 + plan.cols_split[r]
        with torch.no_grad():
            return TPState(lay, [lay.shard(i, h0, h1, c0, c1) for i in range(len(adapter.blocks))])

    def masks(self, run, info):
        """Bias over all N key rows for all N query rows (both strategies attend every
        row on their heads); None without padding or causal masks."""
        if info is None:
            return None
        n = run.adapter.seq_len
        return full_token_masks(info, 0, n, torch.arange(n, device=run.ctx.device))


def lay_qkv(lay, i, sh, h, timer):
    with timer.phase("compute"):
        return lay.qkv(i, sh, h)
