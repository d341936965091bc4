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

Live activations and buffers: what the runtime's code keeps referenced at each candidate
peak point of one forward (read from the adapters and strategies, checked against
torch.profiler's live allocations per point), the peak being the largest point
(`live_points(plan, rank)` lists them). Inference keeps no autograd state, but Python
names keep tensors alive until a function returns, so:
  * block 0's input is the whole (B, N, d) embedding on every rank that embeds (a row
    split's own rows are a view of it);
  * inside a block, what block() binds stays alive through the MLP: ViT h = norm1(x) and
    the K/V input (own + peers' rows, concatenated); GPT-2 also q, k, v and the SDPA
    output; BERT (post-LN) the K/V cat, ctx and a. The MLP point adds x', norm2 (pre-LN),
    fc1 and its activation (GELU 2 L c; GPT-2's gelu_new, written in Python, 4 L c;
    SwiGLU 3 L c); the attention point q, k, v, the SDPA output and proj (+ the score
    matrix, 2 heads L_q L_kv, only under attention="math": torch's fused SDPA keeps none);
  * the strategy's own tensors across the block: voltage the peers' rows as received
    (buffers), their cat and, pre-LN, its norm1; prism its means, the received means and
    their cat (rebound to its norm1); tensor_parallel the attention partial (all-reduced
    in place by the native collective; pairwise: plus the reduced copy and its receive
    buffers); galaxy every tile's q/k/v and their cat, the partials sent to peers (held
    until the sends are waited), the own partial and its sum, and the all-gather / reduce-
    scatter receive buffers (the previous sub-layer's until the new ones are built);
    coformer its streams x, x0 and u (and the caller's previous x, u within a window);
  * the embedding point (ViT conv + CLS cat + positions; BERT word, type, sum, LN; GPT-2
    tokens + positions) and the head point (the last block output, its final norm, the
    head output: GPT-2's L V logits per own row);
  * pipeline: rank 0 keeps the batch's embedding; every rank posts all micro-batches'
    receives up front (B N d, buffers) and keeps each micro-batch's sent output until the
    pass ends; rank 0's head stage holds the returned outputs, the sends, the per-micro-
    batch final norms, the logits per micro-batch and their cat, then the norms' cat;
    a stage without layers forwards its receive buffers;
  * decoders build one causal bias (L_q x L_kv) per pass.
activation_bytes / buffer_bytes are the two parts of the peak point; `staging=True` (an
accelerator whose host copies share its memory, as a Jetson's unified memory) adds
Plan.staged_bytes / n_exchanges of host copies.
"""
from __future__ import annotations

import math

from .formulas import Plan, segment_sizes

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


# ---------------------------------------------------------------------------- live sets
#
# What the runtime holds at each candidate peak point of a forward pass, in elements
# (module docstring). `_block_points` gives one block's live set per sample, besides its
# input and what the strategy holds across it; the strategy functions add those and the
# embedding / head stages, and _live takes the largest point.

def family(shape) -> str:
    """The block code a shape runs (the memory model follows each adapter's live tensors):
    "vit" (timm pre-LN: embed and head FLOPs), "gpt2" / "llama" (per-token LM head carried
    in embed FLOPs; SwiGLU for llama), "bert" (post-LN encoders: no embedding FLOPs)."""
    if shape.embed_flops and shape.head_flops:
        return "vit"
    if shape.embed_flops:
        return "llama" if getattr(shape, "mlp_mats", 2) == 3 else "gpt2"
    return "bert"


def _block_points(fam: str, lq: float, lkv: float, d: int, a: float, akv: float, c: float,
                  cat_rows: float, heads: float, math_attn: bool) -> tuple:
    """(attention point, MLP point) of one block per sample, without its input and the
    strategy's own tensors. cat_rows: rows of the concatenated K/V input (0: no remote
    rows, the normed own rows are used as they are)."""
    scores = 2 * heads * lq * lkv if math_attn else 0.0
    kvcat = cat_rows * d
    if fam == "bert":            # post-LN: K/V read x itself; ctx and a stay bound in block()
        held = kvcat + lq * a                                        # cat, ctx
        attn = max(kvcat + 2 * lq * a + 2 * lkv * akv + scores,      # q, k, v, SDPA output
                   held + 3 * lq * d)                                # dense, add, LayerNorm
        mlp = max(held + lq * d + 2 * lq * c,                        # a, fc1, GELU
                  held + lq * d + lq * c + 3 * lq * d)               # a, GELU, fc2, add, LN
        return attn, mlp
    if fam == "vit":             # h = norm1(x) and the K/V input stay bound in block()
        held = lq * d + kvcat
        attn = held + 2 * lq * a + 2 * lkv * akv + lq * d + scores   # q, kv, out, proj
        mlp = held + 2 * lq * d + 2 * lq * c                         # x', norm2, fc1, GELU
        return attn, mlp
    # decoders: h, the K/V input, q, k, v and the SDPA output stay bound in block()
    held = lq * d + kvcat + 2 * lq * a + 2 * lkv * akv
    attn = held + lq * d + scores                                    # c_proj / o_proj
    act = 4 if fam == "gpt2" else 3       # gelu_new in Python: fc1, 0.5 x, x^3, 0.044715 x^3
    return attn, held + 2 * lq * d + act * lq * c                   # SwiGLU: act(gate), up, product


def _head_out(shape, rows: int) -> float:
    """Elements of the head's output per sample on a device running it on `rows` rows."""
    if shape.head_flops:
        return shape.head_flops / (2.0 * shape.d)
    if shape.embed_flops:                                   # per-position LM head
        return rows * shape.embed_flops / (2.0 * shape.d * shape.seq_len)
    return 0.0


def _embed_point(fam: str, n: int, d: int, batch: int) -> float:
    """Embedding all N rows of the batch: ViT the patch convolution, the CLS cat and the
    position add; BERT word, token-type, their sum and the LayerNorm (+ one N d of
    positions); decoders the token rows and their sum with the positions (+ N d)."""
    if fam == "vit":
        return (3 * n - 1) * d * batch
    if fam == "bert":
        return 4 * n * d * batch + n * d
    return 2 * n * d * batch + n * d


def _widths(plan: Plan, rank: int) -> tuple:
    """(A, A_kv, c, heads) of this device: its heads' columns and MLP columns under a
    head / column split, the whole block otherwise."""
    s = plan.shape
    if plan.heads_split:
        hr = plan.heads_split[rank]
        kv = getattr(s, "kv_dim", s.d) / getattr(s, "attn_dim", s.d)
        return hr * s.dh, hr * s.dh * kv, plan.cols_split[rank], hr
    return getattr(s, "attn_dim", s.d), getattr(s, "kv_dim", s.d), s.d_ff, s.heads


def _mask(fam: str, lq: float, lkv: float) -> float:
    """The decoders' causal bias, built once per pass (Lq x Lkv, broadcast over the batch)."""
    return lq * lkv if fam in ("gpt2", "llama") else 0.0


def _row_split(plan: Plan, rank: int, math_attn: bool) -> list:
    """single / voltage / prism (Runner.forward): every rank embeds all N rows and keeps
    its slice (a view: block 0's input is the whole (B, N, d) embedding); per block the
    strategy holds the peers' rows as received, their concatenation and (voltage,
    pre-LN) its norm1; prism its own means, the received means and their cat (rebound to
    its norm1 on pre-LN models)."""
    s, fam, B = plan.shape, family(plan.shape), plan.batch
    n, d, w = s.seq_len, s.d, plan.width
    a, akv, c, heads = _widths(plan, rank)
    P = plan.world_size if getattr(plan.formula, "distributed", True) else 1
    lq = n if P == 1 else plan.sizes[rank]
    if P == 1:
        recv = held = cat = 0.0
    else:
        recv = sum(plan.rows_per_message(q) for q in range(P) if q != rank)
        cat = sum(plan.rows_sent(q) for q in range(P) if q != rank)
        own_means = plan.rows_sent(rank) if plan.m is not None else 0
        # voltage keeps the cat and its norm1 (pre-LN); prism rebinds the cat to its norm1
        normed = cat if fam != "bert" and plan.m is None and not plan.row_width else 0
        held = (own_means + cat + normed) * w
    lkv = lq + cat
    attn, mlp = _block_points(fam, lq, lkv, d, a, akv, c, lq + cat if cat else 0, heads, math_attn)
    x_in = n * d
    mask = _mask(fam, lq, lkv)
    head = (2 if fam != "bert" else 1) * lq * d + _head_out(s, lq)
    return [("embed", _embed_point(fam, n, d, B) + mask, 0.0),
            ("block", (x_in + held + max(attn, mlp)) * B + mask, recv * w * B),
            ("head", head * B + mask, 0.0)]


def _tensor_parallel(plan: Plan, rank: int, math_attn: bool, red=None) -> list:
    """tensor_parallel (all N rows, its heads and columns): the attention partial sum,
    all-reduced in place (native collective) stays bound in block_step through the MLP;
    the pairwise collective adds the reduced copy and its receive buffers."""
    s, fam, B = plan.shape, family(plan.shape), plan.batch
    n, d = s.seq_len, s.d
    a, akv, c, heads = _widths(plan, rank)
    native = plan.collective == "native"
    if red is None:
        red = n * d if native else 2 * n * d
    scores = 2 * heads * n * n if math_attn else 0.0
    ln = 0 if fam == "bert" else n * d
    attn = (2 * n * a + 2 * n * akv) + n * a + n * d + scores       # qkv, SDPA out, partial
    act = {"gpt2": 4, "llama": 3}.get(fam, 2)
    mlp = red + n * d + ln + act * n * c                            # a, x', ln_mlp, fc1, act
    buf = 0.0 if native or plan.world_size == 1 else plan.recv_bytes(rank) / plan.n_exchanges / plan.elem_bytes / B
    mask = _mask(fam, n, n)
    head = (1 if fam == "bert" else 2) * n * d + (_head_out(s, n) if rank == 0 else 0.0)
    return [("embed", _embed_point(fam, n, d, B) + mask, 0.0),
            ("block", (n * d + max(attn, mlp)) * B + mask, buf * B),
            ("head", head * B + mask, 0.0)]


def _galaxy(plan: Plan, rank: int, math_attn: bool) -> list:
    """galaxy (runtime/parallel/galaxy.py): own rows L sequence-parallel, all N rows on its
    heads / columns. Held through the block: h (pre-LN), every tile's q/k/v and their
    concatenation, the own partial, its reduced sum, x' and h2 (pre-LN); the all-gather's
    (R = N - L rows) and the reduce-scatter's ((P-1) L rows) receive buffers of the
    current sub-layer (the previous ones until the new ones are built); partial sums sent
    to peers stay referenced until the sends are waited. tiles = 1 (more tiles: smaller
    transients, so this bounds them)."""
    s, fam, B = plan.shape, family(plan.shape), plan.batch
    n, d, P = s.seq_len, s.d, plan.world_size
    a, akv, c, heads = _widths(plan, rank)
    L = plan.sizes[rank]
    peers = [(rank + k) % P for k in range(1, P)]
    R, rs = (n - L) * d, (P - 1) * L * d              # all-gather / reduce-scatter buffers
    pre = 0 if fam == "bert" else L * d               # h (and h2): LayerNorm outputs of pre-LN blocks
    act = {"gpt2": 4, "llama": 3}.get(fam, 2)
    base = n * d + pre + 2 * n * (a + 2 * akv)        # block 0's input (the embedding), h, q/k/v tiles + cat
    mid = 2 * L * d + L * d + pre                     # a partial (own), its sum, x', h2
    last = plan.sizes[peers[-1]] * d
    scores = 2 * heads * L * n if math_attn else 0.0
    pts = [("attn", base + R + L * a + L * d + scores, R + rs),          # peers' partials, own SDPA + proj
           ("gather", base + mid + R, max(R + rs + R, rs + R + rs)),    # old buffers + the MLP's new ones
           ("mlp", base + mid + last + act * L * c, R + rs)]
    sent = 0
    for j, q in enumerate(peers):                     # a peer's MLP rows (own partial replaced, same size)
        pts.append(("mlp_peer", base + mid + (last if j == 0 else sent) + act * plan.sizes[q] * c, R + rs))
        sent += plan.sizes[q] * d
    pts.append(("after_mlp", base + mid - L * d + L * d + R + L * d + 2 * L * d, R + rs))
    mask = _mask(fam, L, n)
    head = (1 if fam == "bert" else 2) * L * d + _head_out(s, L)
    return ([("embed", _embed_point(fam, n, d, B) + mask, 0.0)]
            + [(k, v * B + mask, b * B) for k, v, b in pts] + [("head", head * B + mask, 0.0)])


def _coformer(plan: Plan, rank: int, math_attn: bool) -> list:
    """coformer (runtime/parallel/coformer.py): tensor_parallel's weights, no per-block
    all-reduce between aggregation points. A pre-LN sub-model carries its stream x, the
    stream x0 at the last aggregation and u, its residual deltas since; block_step's
    caller keeps the previous block's (x, u) (none at a window's first block). Per
    sub-layer: h / q, k, v, the partial sum, its scaled copy, the zeros the connective op
    adds to, y, the new x and u. Post-LN (k = 1): tensor_parallel's live set, the
    partial all-reduced through a copy (Exchanger.all_reduce clones it)."""
    s, fam, B = plan.shape, family(plan.shape), plan.batch
    n, d = s.seq_len, s.d
    if fam == "bert":
        return _tensor_parallel(plan, rank, math_attn, red=2 * n * d)
    a, akv, c, heads = _widths(plan, rank)
    k = getattr(plan, "k", 1)
    caller = 2 * n * d if k >= 2 and s.n_layers >= 2 else 0.0
    act = {"gpt2": 4, "llama": 3}.get(fam, 2)
    scores = 2 * heads * n * n if math_attn else 0.0
    x0 = n * d
    attn = x0 + caller + n * d + n * (a + 2 * akv) + n * a + n * d + scores   # h, q/k/v, SDPA, partial
    mlp = x0 + caller + 2 * n * d + max(n * d + act * n * c, 5 * n * d)       # (x, u); ln + act | end
    mask = _mask(fam, n, n)
    head = 2 * n * d + (_head_out(s, n) if rank == 0 else 0.0)
    return [("embed", _embed_point(fam, n, d, B) + mask, 0.0),
            ("block", max(attn, mlp) * B + mask, 0.0), ("head", head * B + mask, 0.0)]


def _pipeline(plan: Plan, rank: int, math_attn: bool) -> list:
    """pipeline (runtime/parallel/pipeline.py): rank 0 keeps the batch's embedding; every
    rank posts all micro-batches' receives up front (B N d) and keeps each micro-batch's
    sent output until the pass ends; a stage's first block reads a view / the receive
    buffer, later blocks the previous output. Rank 0's head stage: the returned outputs,
    the sends, the final norms per micro-batch, the logits per micro-batch and their cat,
    then the cat of the norms."""
    s, fam, B = plan.shape, family(plan.shape), plan.batch
    n, d, P = s.seq_len, s.d, plan.world_size
    a, akv, c, heads = _widths(plan, rank)
    blocks = plan.layers_split[rank] if plan.layers_split else s.n_layers
    mbs = [B] if P == 1 else segment_sizes(B, plan.microbatches)
    emb = B * n * d if rank == 0 else 0.0
    recv = 0.0 if P == 1 else B * n * d
    mask = _mask(fam, n, n)
    pts = []
    if rank == 0:
        pts.append(("embed", _embed_point(fam, n, d, B) + mask, 0.0))
    if blocks:
        attn, mlp = _block_points(fam, n, n, d, a, akv, c, 0, heads, math_attn)
        per = max(attn, mlp) + (n * d if blocks > 1 else 0)
        done = 0
        for mb in mbs:
            pts.append(("block", emb + done * n * d + per * mb + mask, recv))
            done += mb
    else:
        pts.append(("forward", mask, recv))           # forwards what it receives (masks still built)
    if rank == 0:
        out = _head_out(s, n) * B
        norms = 0 if fam == "bert" else B * n * d
        sends = B * n * d if P > 1 else 0.0
        outs = 0.0 if P > 1 else B * n * d            # P = 1: the stage outputs (else: the receives)
        pts.append(("head", emb + sends + outs + norms + max(2 * out, out + B * n * d) + mask, recv))
    return pts


_LIVE = {"tensor_parallel": _tensor_parallel, "galaxy": _galaxy, "coformer": _coformer}


def live_points(plan: Plan, rank: int, *, attention: str = "fused") -> list:
    """[(point, activation bytes, buffer bytes)] at each candidate peak of device `rank`'s
    forward (module docstring); the peak is the largest sum."""
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r}; allowed: {list(ATTENTION)}")
    name = getattr(plan.formula, "name", plan.strategy)
    if plan.layers_split:
        fn = _pipeline
    elif plan.heads_split and plan.world_size > 1:
        fn = _LIVE.get(name, _tensor_parallel)
    else:
        fn = _row_split
    b = plan.elem_bytes
    return [(k, int(v * b), int(u * b)) for k, v, u in fn(plan, rank, attention == "math")]


def _peak_point(plan: Plan, rank: int, attention: str) -> tuple:
    key = (plan, rank, attention)
    hit = _POINTS.get(key)
    if hit is None:
        hit = max(live_points(plan, rank, attention=attention), key=lambda p: p[1] + p[2])
        if len(_POINTS) > 10_000:
            _POINTS.clear()
        _POINTS[key] = hit
    return hit


_POINTS: dict = {}


def activation_bytes(plan: Plan, rank: int, *, attention: str = "fused") -> int:
    """Activation bytes live at device `rank`'s peak point (module docstring)."""
    return _peak_point(plan, rank, attention)[1]


def buffer_bytes(plan: Plan, rank: int, *, staging: bool = False, attention: str = "fused") -> int:
    """Exchange receive buffers live at the peak point (and, when `staging`, the host
    staging copies of one exchange: an accelerator whose host memory is its own)."""
    out = _peak_point(plan, rank, attention)[2]
    if staging and plan.world_size > 1 and plan.n_exchanges:
        out += int(plan.staged_bytes(rank) / plan.n_exchanges)
    return int(out)


def memory_breakdown(plan: Plan, rank: int, *, attention: str = "fused", staging: bool = False,
                     embed_elems: int | None = None, head_elems: int | None = None) -> dict:
    """{"weights", "activations", "buffers", "peak"} in bytes for device `rank`."""
    w = weights_bytes(plan, rank, embed_elems=embed_elems, head_elems=head_elems)
    a = activation_bytes(plan, rank, attention=attention)
    b = buffer_bytes(plan, rank, staging=staging, attention=attention)
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
