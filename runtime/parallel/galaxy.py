"""galaxy: Galaxy's hybrid parallelism (Ye et al., INFOCOM 2024).

The same head / column split as tensor_parallel for attention and MLP, but the
connective ops (bias, LayerScale, dropout, residual, LayerNorm) run sequence-parallel
on each device's own rows (`partition`, uneven allowed). Per block: all-gather of the
normed rows before attention, reduce-scatter of the proj partial sums, all-gather
before the MLP, reduce-scatter of the fc2 partial sums, all pairwise isend/irecv (GLOO's
reduce_scatter is an all-reduce on the wire and its all_gather needs equal sizes).
Overlap by tiles: every message is cut into `tiles` row tiles; a device computes q/k/v
on the tiles it already holds while the rest arrive, and sends each partial-sum tile as
soon as it is computed (isend/irecv run on GLOO's I/O threads). Under overlap, comm_ms
is the time a device waits on communication that computation did not hide.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from costmodel.formulas import offsets
from .base import opt, register_strategy
from .tp_layout import Comm, HeadColumnSplit, row_tiles, lay_qkv


@register_strategy("galaxy")
@dataclass(frozen=True)
class Galaxy(HeadColumnSplit):
    """Tensor-parallel attention and MLP, sequence-parallel connective ops over
    ctx.partition, with tile overlap (`overlap=False`: blocking collectives)."""

    tiles: int = opt(1, "row tiles per message (comm/compute overlap)")
    overlap: bool = opt(True, "overlap communication with computation")

    def plan_options(self):
        return {**super().plan_options(), "tiles": self.tiles}

    def block_step(self, run, i, x, ex, timer):
        ctx, lay, sh = run.ctx, run.state.layout, run.state.shards[i]
        sizes, offs, r = run.plan.sizes, offsets(run.plan.sizes), ctx.rank
        comm = Comm(r, ctx.world_size, ctx.device, timer, run.plan.tiles)
        bias = run.bias

        # attention: all-gather normed rows, q/k/v on each tile as it arrives
        with timer.phase("compute"):
            h = lay.ln_attn(i, x)
        ag = comm.all_gather(h, sizes)
        if not self.overlap:
            ag.wait_all()
        qkv = {r: [lay_qkv(lay, i, sh, h, timer)]}
        for q in comm.peers:
            qkv[q] = [lay_qkv(lay, i, sh, ag.chunk(q, k), timer) for k in range(len(ag.tiles_of(q)))]
        ag.finish()
        with timer.phase("compute"):
            qkv_all = torch.cat([t for q in range(ctx.world_size) for t in qkv[q]], dim=1)
            kv = lay.keys_values(i, sh, qkv_all) if sh.attn_dim else None
        # proj partial sums per destination tile, peers first, each sent as computed
        rs = comm.reduce_scatter(h, sizes)
        pending = []
        for q in comm.peers:
            for k, (a, s) in enumerate(row_tiles(sizes[q], comm.tiles)):
                with timer.phase("compute"):
                    part = lay.attend(i, sh, qkv_all, offs[q] + a, s, bias, kv)
                pending.append((q, k, part))
                if self.overlap:
                    rs.send(*pending.pop())
        with timer.phase("compute"):
            own = lay.attend(i, sh, qkv_all, offs[r], sizes[r], bias, kv)
        for p in pending:
            rs.send(*p)
        a_sum = rs.reduce(own)
        with timer.phase("compute"):
            x = lay.after_attn(i, x, a_sum)
            h2 = lay.ln_mlp(i, x)

        # MLP: all-gather normed rows; own rows first (hides the gather), then each
        # arriving tile's partial sum is sent back to its owner while the next computes
        ag = comm.all_gather(h2, sizes)
        rs = comm.reduce_scatter(h2, sizes)
        if not self.overlap:
            ag.wait_all()
        with timer.phase("compute"):
            own = lay.mlp(i, sh, h2)
        pending = []
        for q in comm.peers:
            for k in range(len(ag.tiles_of(q))):
                hk = ag.chunk(q, k)
                with timer.phase("compute"):
                    part = lay.mlp(i, sh, hk)
                pending.append((q, k, part))
                if self.overlap:
                    rs.send(*pending.pop())
        for p in pending:
            rs.send(*p)
        ag.finish()
        m_sum = rs.reduce(own)
        with timer.phase("compute"):
            return lay.after_mlp(i, x, m_sum)


