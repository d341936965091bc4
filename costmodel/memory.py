"""Peak memory per device, from the shared formulas (torch-free).

    peak = weights held + live activations + exchange / staging buffers

    memory_peak(make_plan("pipeline", vit_shape(), world_size=2, batch=8))
        -> [bytes of device 0, bytes of device 1]
    memory_breakdown(plan, 0)       # {"weights", "activations", "buffers", "staging", "peak"}

Weights held (elements; every block has two LayerNorms and biased linears):
  a block: 4 d^2 + 4 d (q, k, v, proj) + 2 d d_ff + d_ff + d (MLP) + 4 d (norms);
  single / voltage / prism (and any row split): every block, the embedding and the head;
  tensor_parallel / galaxy: per block only their heads' q/k/v rows and proj columns
  (A_r = heads_r d/h: 4 d A_r + 3 A_r) and MLP columns (2 d c_r + c_r), the rest
  (proj / fc2 biases, norms) replicated; the embedding on every device, the head on
  device 0;
  pipeline: its `layers` blocks; the embedding and the head on device 0 only.
The embedding / head sizes come from the shape (`embedding_params`, `head_params`):
ViT: patch projection C p^2 d (= embed_flops / (2 patches)) + positions N d + CLS;
GPT-2: the token table V d (V = embed_flops / (2 d N); the LM head is tied to it) + 1024
positions; BERT (no embedding FLOPs): 30522 + 512 + 2 rows of d; the head: its
FLOPs / 2 plus biases and the final norm (none in post-LN BERT). Exact for ViT-S/B,
BERT-base and GPT-2 against their parameter counts (tests/test_memory.py). Give exact counts with
`embed_elems=` / `head_elems=` (the runtime does, from the model).

Live activations (per sample, b bytes per element; the largest block dominates, blocks
run one after the other and inference keeps no autograd state), for L_q query rows over
L_kv key/value rows, A attention columns, c MLP columns of this device:
  attention: x, norm1(x) (2 L_q d) + q and the output (2 L_q A) + k, v (2 L_kv A)
             + the K/V input when peers' rows are appended (L_kv d)
             + the score matrix heads L_q L_kv twice (scores, softmax) under
               attention="math"; fused kernels (torch's SDPA on CPU and CUDA, measured)
               keep none;
  MLP:       x, the residual sum (2 L_q d) + fc1 and its activation (2 L_q c);
  weight splits add the partial sum and its reduction (2 L_q d) to each (tensor_parallel's
  native all-reduce works in place: L_q d, and no exchange buffer);
  a block's peak is the larger, plus, on an embedding device, the (B, N, d) embedding;
  the head stage comes after the blocks (their activations freed): the head's output
  (ViT / BERT: per sample; GPT-2: V per own row) + the last block output and its norm;
  the peak is the larger stage.
Pipeline stages hold one micro-batch's activations (the largest, ceil(B / M) samples);
device 0's head stage holds the head output twice (per micro-batch, then concatenated).

Buffers: what arrives per exchange (Plan.recv_bytes / n_exchanges) twice for a row
split (the receive buffer and the normed peer rows), once for a weight split; the
pipeline posts every micro-batch's receive up front and keeps its sends until the pass
ends: 2 B N d b. `staging=True` (an accelerator whose host copies share its memory, as a
Jetson's unified memory) adds Plan.staged_bytes / n_exchanges of host copies.
"""
from __future__ import annotations

import math

from .formulas import Plan

ATTENTION = ("fused", "math")
BERT_VOCAB, BERT_POSITIONS, GPT2_POSITIONS = 30522, 512, 1024


def block_params(d: int, d_ff: int, attn_dim: int | None = None, cols: int | None = None,
                 *, kv_frac: float = 1.0, mlp_mats: int = 2) -> int:
    """Elements of one block's weights held by a device with `attn_dim` attention
    columns and `cols` MLP columns (None: the whole block); kv_frac: K/V width over the
    query width (grouped-query attention), mlp_mats: d x d_ff matrices (SwiGLU: 3)."""
    a = d if attn_dim is None else attn_dim
    c = d_ff if cols is None else cols
    akv = a * kv_frac
    return int((2 * d * a + a + 2 * d * akv + 2 * akv + d) + (mlp_mats * d * c + (mlp_mats - 1) * c + d)
               + 4 * d)


def embedding_params(shape) -> int:
    """Elements of the input embedding (module docstring)."""
    exact = getattr(shape, "embed_params", 0)
    if exact:
        return int(exact)
    n, d = shape.seq_len, shape.d
    if shape.embed_flops and shape.head_flops:              # ViT: patch projection
        patch = shape.embed_flops / (2.0 * max(n - 1, 1))
        return int(round(patch + d + n * d + d))
    if shape.embed_flops:                                   # GPT-2: token table (tied head)
        vocab = shape.embed_flops / (2.0 * d * n)
        return int(round(vocab * d + GPT2_POSITIONS * d))
    return (BERT_VOCAB + BERT_POSITIONS + 2) * d + 2 * d    # BERT: word, position, type, LN


def head_params(shape) -> int:
    """Elements of the final norm and the head (GPT-2's LM head is the tied embedding)."""
    exact = getattr(shape, "head_params", 0)
    if exact:
        return int(exact)
    final_norm = 0 if (shape.head_flops and not shape.embed_flops) else 2 * shape.d   # BERT: post-LN
    return int(round(shape.head_flops / 2.0 + shape.head_flops / (2.0 * shape.d))) + final_norm


def _head_out(shape, rows: int) -> float:
    """Elements of the head's output per sample on a device running it on `rows` rows."""
    if shape.head_flops:
        return shape.head_flops / (2.0 * shape.d)
    if shape.embed_flops:                                   # per-position LM head
        return rows * shape.embed_flops / (2.0 * shape.d * shape.seq_len)
    return 0.0


def _roles(plan: Plan, rank: int) -> dict:
    """What a device holds and computes: blocks, embedding, head, rows, columns."""
    s, f = plan.shape, plan.formula
    weight_split = bool(plan.heads_split)
    all_rows = bool(getattr(f, "all_rows", False)) or weight_split
    lq = s.seq_len if all_rows else plan.sizes[rank]
    lkv = plan.kv_rows[rank] if plan.kv_rows else s.seq_len
    out = {"blocks": s.n_layers, "embed": True, "head": True, "lq": lq, "lkv": lkv,
           "attn_dim": None, "heads": s.heads, "cols": None, "split": weight_split,
           "batch": plan.batch, "head_rows": lq}
    if weight_split:
        hr = plan.heads_split[rank]
        out.update(attn_dim=hr * (s.d // s.heads), heads=hr, cols=plan.cols_split[rank],
                   head=rank == 0)
    if plan.layers_split:
        out.update(blocks=plan.layers_split[rank], embed=rank == 0, head=rank == 0,
                   batch=math.ceil(plan.batch / max(1, plan.microbatches)))
    if not getattr(f, "distributed", True) or plan.world_size == 1:
        out.update(embed=True, head=True)
    return out


def weights_bytes(plan: Plan, rank: int, *, embed_elems: int | None = None,
                  head_elems: int | None = None) -> int:
    """Bytes of the weights device `rank` holds."""
    s, r = plan.shape, _roles(plan, rank)
    kv = getattr(s, "kv_dim", s.d) / getattr(s, "attn_dim", s.d)
    a = r["attn_dim"] if r["attn_dim"] is not None else getattr(s, "attn_dim", s.d)
    n = r["blocks"] * block_params(s.d, s.d_ff, a, r["cols"], kv_frac=kv,
                                   mlp_mats=getattr(s, "mlp_mats", 2))
    if r["embed"]:
        n += embedding_params(s) if embed_elems is None else embed_elems
    if r["head"]:
        n += head_params(s) if head_elems is None else head_elems
    return int(n * plan.elem_bytes)


def activation_bytes(plan: Plan, rank: int, *, attention: str = "fused") -> int:
    """Peak bytes of live activations on device `rank` (module docstring)."""
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r}; allowed: {list(ATTENTION)}")
    s, r = plan.shape, _roles(plan, rank)
    d, lq, lkv = s.d, r["lq"], r["lkv"]
    a = d if r["attn_dim"] is None else r["attn_dim"]
    c = s.d_ff if r["cols"] is None else r["cols"]
    block = 0.0
    if r["blocks"]:
        attn = 2 * lq * d + 2 * lq * a + 2 * lkv * a + (lkv * d if lkv != lq else 0)
        if attention == "math":
            attn += 2 * r["heads"] * lq * lkv
        mlp = 2 * lq * d + 2 * lq * c
        if r["split"]:        # the partial sum and its reduction (in place: the partial only)
            red = (1 if _in_place_reduce(plan) else 2) * lq * d
            attn, mlp = attn + red, mlp + red
        block = max(attn, mlp)
    total = block * r["batch"]
    if r["embed"]:
        total += s.seq_len * d * plan.batch           # the (B, N, d) embedding
    if r["head"]:                                     # after the blocks: their activations are gone
        rows = r["head_rows"]
        out_elems = _head_out(s, rows)
        if plan.layers_split and plan.world_size > 1:
            out_elems *= 2        # pipeline: per-micro-batch head outputs, then their torch.cat
        head = (out_elems + 2 * rows * d) * plan.batch     # output, last block output, its norm
        total = max(total, head)
    return int(total * plan.elem_bytes)


def _in_place_reduce(plan: Plan) -> bool:
    """tensor_parallel's native collective: dist.all_reduce on the partial sum itself
    (runtime/parallel/tp_layout.py), so neither a reduced copy nor a receive buffer is
    allocated by torch (GLOO's ring chunks are its own, outside torch's allocator)."""
    return getattr(plan.formula, "name", None) == "tensor_parallel" and \
        getattr(plan, "collective", None) == "native"


def buffer_bytes(plan: Plan, rank: int, *, staging: bool = False) -> int:
    """Exchange buffers (and host staging copies when `staging`) alive at once."""
    if plan.world_size == 1 or plan.n_exchanges == 0:
        return 0
    if _in_place_reduce(plan):   # GLOO all-reduces the partial sum in place: no torch buffer
        return int(plan.staged_bytes(rank) / plan.n_exchanges) if staging else 0
    if plan.layers_split:        # a stage without layers forwards what it received: one copy
        out = (2 if plan.layers_split[rank] else 1) * plan.comm_bytes(rank)
    else:
        per = plan.recv_bytes(rank) / plan.n_exchanges
        out = per * (1 if plan.heads_split else 2)
    if staging:
        out += plan.staged_bytes(rank) / plan.n_exchanges
    return int(out)


def memory_breakdown(plan: Plan, rank: int, *, attention: str = "fused", staging: bool = False,
                     embed_elems: int | None = None, head_elems: int | None = None) -> dict:
    """{"weights", "activations", "buffers", "peak"} in bytes for device `rank`."""
    w = weights_bytes(plan, rank, embed_elems=embed_elems, head_elems=head_elems)
    a = activation_bytes(plan, rank, attention=attention)
    b = buffer_bytes(plan, rank, staging=staging)
    return {"weights": w, "activations": a, "buffers": b, "peak": w + a + b}


def memory_peak(plan: Plan, **kw) -> list:
    """Peak bytes per device (by rank)."""
    hook = getattr(plan.formula, "memory", None)          # a Formula may give its own
    if hook is not None:
        return [int(hook(plan, r, **kw)) for r in range(plan.world_size)]
    return [memory_breakdown(plan, r, **kw)["peak"] for r in range(plan.world_size)]


_PEAKS: dict = {}


def peak_for(strategy: str, shape, *, world_size: int, batch: int, cr=None, **kw) -> list:
    """memory_peak of make_plan(strategy, shape, ...) with the strategy's defaults (cr for
    a compressing one), cached: the one-call API's memory_peak_bytes."""
    from .strategies import get_formula, make_plan

    key = (strategy, shape, int(world_size), int(batch), None if cr is None else float(cr),
           tuple(sorted(kw.items())))
    hit = _PEAKS.get(key)
    if hit is None:
        opts = {"cr": float(cr)} if cr is not None and get_formula(strategy).compresses else {}
        plan = make_plan(strategy, shape, world_size=int(world_size), batch=int(batch), **opts)
        hit = memory_peak(plan, **kw)
        if len(_PEAKS) > 10_000:
            _PEAKS.clear()
        _PEAKS[key] = hit
    return list(hit)
