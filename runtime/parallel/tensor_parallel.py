"""tensor_parallel: Megatron tensor parallelism on a plain model's blocks.

Every device holds all N rows; device r owns heads H_r (its q/k/v rows of the fused qkv
weight and the matching proj columns) and MLP columns C_r (fc1 rows, fc2 columns). Two
all-reduces of the (B, N, d) partial sums per block (after proj, after fc2); biases,
LayerScale, residuals and LayerNorms run on every device on all rows (duplicated).
Collective "native" is GLOO's ring all-reduce; "pairwise" is reduce-scatter + all-gather
by isend/irecv over even row chunks (costmodel.strategies.TensorParallel counts both).
"""
from __future__ import annotations

from dataclasses import dataclass

from costmodel.formulas import COLLECTIVES
from .base import opt, register_strategy
from .tp_layout import Comm, HeadColumnSplit


@register_strategy("tensor_parallel")
@dataclass(frozen=True)
class TensorParallel(HeadColumnSplit):
    """Heads and MLP columns split (uneven allowed), two all-reduces per block."""

    all_rows = True
    collective: str = opt("native", "all-reduce: native (GLOO ring) | pairwise", choices=COLLECTIVES)

    def plan_options(self):
        return {**super().plan_options(), "collective": self.collective}

    def _all_reduce(self, run, comm: Comm, t):
        if run.ctx.world_size == 1:
            return t
        if run.plan.collective == "native":
            return comm.all_reduce_native(t)
        return comm.all_reduce_pairwise(t, run.plan.sizes)

    def block_step(self, run, i, x, ex, timer):
        lay, sh, n = run.state.layout, run.state.shards[i], x.shape[1]
        comm = Comm(run.ctx.rank, run.ctx.world_size, run.ctx.device, timer)
        with timer.phase("compute"):
            part = lay.attend(i, sh, lay.qkv(i, sh, lay.ln_attn(i, x)), 0, n, run.bias)
        a = self._all_reduce(run, comm, part)
        with timer.phase("compute"):
            x = lay.after_attn(i, x, a)
            part = lay.mlp(i, sh, lay.ln_mlp(i, x))
        m = self._all_reduce(run, comm, part)
        with timer.phase("compute"):
            return lay.after_mlp(i, x, m)
