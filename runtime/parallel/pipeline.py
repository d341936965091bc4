"""pipeline: layer pipeline parallelism (GPipe-style forward schedule).

Device r holds a contiguous range of blocks (`layers`, uneven allowed for unequal
boards, e.g. 8,4) and all N rows of every sample. Rank 0 is the first stage: it embeds
the batch, runs its blocks and, at the end, the final norm and head, so Result.logits is
on rank 0 as for every other strategy. The batch is cut into `microbatches`
(torch.tensor_split sizes; default min(batch, 4 P)); each micro-batch's (b, N, d)
activations go point-to-point (GLOO isend / irecv) from rank r to r+1, and the last
stage sends its block output back to rank 0 (never the logits: GPT-2's (b, N, V) logits
are V/d times larger, and rank 0 already holds GPT-2's tied LM head with the
embedding). Every receive is posted up front, so a stage starts micro-batch k+1 while
k travels on: the fill-and-drain forward schedule of GPipe. Bytes per device per pass:
B N d b sent and received (costmodel.strategies.Pipeline).

Timing: the wait for an upstream activation is the block's comm phase (the first block
of the stage; rank 0's wait for the returning output is outside the blocks), device <->
host copies on an accelerator are staging, the blocks themselves compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from costmodel.formulas import offsets, segment_sizes
from ..models.masks import full_token_masks, token_info
from .base import Result, Runner, Strategy, opt, register_strategy
from .exchange import Timer

TAG = 7 << 10        # message tag base: + micro-batch index


def _ints(v):
    return None if v is None else tuple(int(x) for x in v)


class _Link:
    """Point-to-point sends / receives of one pass, timed as staging and comm."""

    def __init__(self, device: torch.device, timer: Timer):
        self.device, self.timer, self.accel = device, timer, device.type != "cpu"

    def isend(self, t: torch.Tensor, dst: int, tag: int):
        nbytes = t.numel() * t.element_size()
        with self.timer.phase("staging") as rec:
            if self.accel:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=torch.cuda.is_available())
                host.copy_(t, non_blocking=True)       # the phase syncs the device on exit
                rec.staged_bytes += nbytes
            else:
                host = t.contiguous()
        with self.timer.phase("comm") as rec:
            req = dist.isend(host, dst=dst, tag=tag)
            rec.comm_bytes += nbytes
        return req, host                                 # host stays alive until waited

    @staticmethod
    def irecv(shape, dtype, src: int, tag: int):
        buf = torch.empty(shape, dtype=dtype)
        return dist.irecv(buf, src=src, tag=tag), buf

    def wait(self, pending) -> torch.Tensor:
        req, buf = pending
        with self.timer.phase("comm"):
            req.wait()
        if not self.accel:
            return buf
        with self.timer.phase("staging") as rec:
            rec.staged_bytes += buf.numel() * buf.element_size()
            return buf.to(self.device, non_blocking=True)


class PipelineRunner(Runner):
    """The pipeline's forward pass (it does not run every block on every rank, so it
    replaces Runner.__call__; Result as for every strategy)."""

    @torch.inference_mode()
    def __call__(self, inputs=None, *, rows: Optional[torch.Tensor] = None,
                 features: bool = False) -> Result:
        ctx, ad, plan = self.ctx, self.adapter, self.plan
        r, P, n, d = ctx.rank, ctx.world_size, ad.seq_len, ad.shape.d
        timer = Timer(ctx.device, label=ctx.profile_labels)
        timer.enter_block(len(ad.blocks) - 1)            # every rank reports every block
        timer.end_blocks()
        lo = offsets(plan.layers_split)[r]
        mine = range(lo, lo + plan.layers_split[r])
        with timer.phase("compute"):
            x = None
            if r == 0:
                x = rows if rows is not None else ad.embed(inputs)
                if x.shape[0] != plan.batch:
                    raise ValueError(f"pipeline planned for batch {plan.batch}, called on {x.shape[0]}")
            self.masks = None if inputs is None else self.strategy.masks(self, token_info(ad, inputs))
        if P == 1:
            mbs = [plan.batch]
        else:
            mbs = segment_sizes(plan.batch, plan.microbatches)
        starts = offsets(mbs)

        def bias(k):
            b = self.bias
            if b is None or b.shape[0] == 1 or len(mbs) == 1:
                return b
            return b[starts[k]:starts[k] + mbs[k]]

        def stage(k, h):
            for i in mine:
                timer.enter_block(i)
                h = self.strategy.block_step(self, i, h, bias(k), timer)
            return h

        outs = []
        if P == 1:
            outs = [stage(0, x)]
        else:
            link = _Link(ctx.device, timer)
            dtype = next(ad.blocks[0].parameters()).dtype
            recvs = [link.irecv((mbs[k], n, d), dtype, (r - 1) % P, TAG + k) for k in range(len(mbs))]
            sends = []
            for k in range(len(mbs)):
                if r == 0:
                    h = x[starts[k]:starts[k] + mbs[k]]
                else:
                    if len(mine):
                        timer.enter_block(mine[0])
                    h = link.wait(recvs[k])
                h = stage(k, h)
                if not len(mine):
                    timer.end_blocks()
                sends.append(link.isend(h, (r + 1) % P, TAG + k))
            timer.end_blocks()
            if r == 0:
                outs = [link.wait(recvs[k]) for k in range(len(mbs))]
            with timer.phase("comm"):
                for req, _ in sends:
                    req.wait()
        timer.end_blocks()
        logits, xn = None, None
        if r == 0:
            with timer.phase("compute"):
                xns = [ad.final_norm(o) for o in outs]
                logits = torch.cat([ad.head(t) for t in xns], dim=0)
                xn = torch.cat(xns, dim=0)
        feats = self._features(xn) if features else None
        return Result(logits, feats, timer.summary(), plan)

    def _features(self, xn):
        """Rank 0's final normed features on every rank (parity checks; not timed)."""
        if self.ctx.world_size == 1 or not dist.is_initialized():
            return xn
        ad = self.adapter
        if self.ctx.rank == 0:
            buf = xn.contiguous().cpu()
        else:
            buf = torch.empty(self.plan.batch, ad.seq_len, ad.shape.d,
                              dtype=next(ad.blocks[0].parameters()).dtype)
        dist.broadcast(buf, src=0)
        return buf.to(self.ctx.device)


@register_strategy("pipeline")
@dataclass(frozen=True)
class Pipeline(Strategy):
    """Contiguous block ranges per device (`layers`, default even), all rows on each,
    `microbatches` micro-batches in flight; exact (parity with the plain model)."""

    all_rows = True
    layers: Optional[tuple] = opt(None, "blocks per device, e.g. 8,4 (default even)", type=_ints)
    microbatches: Optional[int] = opt(None, "micro-batches per pass (default min(batch, 4 P), "
                                            "at most the batch)")

    def __post_init__(self):
        object.__setattr__(self, "layers", _ints(self.layers))

    def plan_options(self):
        return {"layers": self.layers, "microbatches": self.microbatches}

    def apply(self, adapter, ctx, batch: int = 1) -> Runner:
        plan = self.plan(adapter, ctx, batch)
        return PipelineRunner(self, adapter, ctx, plan, None)

    def masks(self, run, info):
        """Bias over all N key rows for all N query rows; None without masks."""
        if info is None:
            return None
        n = run.adapter.seq_len
        return full_token_masks(info, 0, n, torch.arange(n, device=run.ctx.device))

    def block_step(self, run, i, x, bias, timer):
        """Block i on a micro-batch's rows (the 4th argument is its attention bias:
        the pipeline has no per-block exchange)."""
        with timer.phase("compute"):
            return run.adapter.block(i, x, None, bias)
