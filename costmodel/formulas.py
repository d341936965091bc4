"""The one set of analytical formulas for partitioning, FLOPs, bytes and exchanges.

Torch-free. The runtime imports these so that "bytes actually handed to the exchange"
and "bytes the cost model predicts" are the same formula (tested in tests/). What each
strategy sends and computes is its Formula in costmodel/strategies.py (make_plan lives
there); this module holds the shapes, partitions and the arithmetic they share.

Notation (docs/method.md): N tokens, hidden size d,
FFN width d_ff, n_layers blocks, P devices, batch B, element size b bytes.
All FLOP counts are 2 per multiply-add and count matmuls only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

COLLECTIVES = ("native", "pairwise")
EXCHANGE_MODES = ("pairwise", "allgather")
PRISM_AVERAGED = ("output", "ln1", "kv")    # Prism's averaged tensor (runtime/parallel/prism.py)


@dataclass(frozen=True)
class ModelShape:
    """Transformer dimensions that the formulas need.

    seq_len: tokens N (ViT: patches + CLS; BERT/GPT-2: sequence length).
    embed_flops: FLOPs of the input embedding for all N tokens (ViT patch projection),
    head_flops: FLOPs of the classifier head per sample (applied once, on device 0).
    """

    name: str
    seq_len: int
    d: int
    heads: int
    d_ff: int
    n_layers: int
    embed_flops: float = 0.0
    head_flops: float = 0.0
    prefix_tokens: int = 0      # ViT CLS / distillation / register rows: on device 0, never averaged
    pool_vectors: int = 0       # head pools over all rows: vectors each device sends device 0 (avg 1, avgmax 2)
    kv_heads: int = 0           # K/V heads (grouped-query attention); 0: as many as heads
    mlp_mats: int = 2           # d x d_ff matrices in the MLP (2: fc1, fc2; SwiGLU 3: gate, up, down)
    head_dim: int = 0           # 0: d / heads

    def __post_init__(self):
        for k in ("seq_len", "d", "heads", "d_ff", "n_layers"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ModelShape.{k}={v!r} must be a positive integer")
        for k in ("prefix_tokens", "pool_vectors", "kv_heads", "mlp_mats", "head_dim"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"ModelShape.{k}={v!r} must be an integer >= 0")
        if not self.head_dim and self.d % self.heads:
            raise ValueError(f"d={self.d} is not divisible by heads={self.heads}")
        if self.kv_heads and self.heads % self.kv_heads:
            raise ValueError(f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}")
        if self.prefix_tokens >= self.seq_len and self.prefix_tokens:
            raise ValueError(f"prefix_tokens={self.prefix_tokens} leaves no patch rows of {self.seq_len}")

    @property
    def dh(self) -> int:
        """Head size."""
        return self.head_dim or self.d // self.heads

    @property
    def attn_dim(self) -> int:
        """Width of Q (and of the attention output): heads x head size (d for most models)."""
        return self.heads * self.dh

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V): kv_heads x head size (attn_dim without GQA)."""
        return (self.kv_heads or self.heads) * self.dh

    def block_flops(self, lq: float, lkv: float) -> float:
        """F(Lq, Lkv) of this shape (GQA's narrower K/V, SwiGLU's third matrix)."""
        return block_flops(lq, lkv, self.d, self.d_ff, attn_dim=self.attn_dim,
                           kv_dim=self.kv_dim, mlp_mats=self.mlp_mats)


def vit_shape(name: str = "vit_base_patch16_224", *, img_size: int = 224, patch_size: int = 16,
              d: int = 768, heads: int = 12, d_ff: int | None = None, n_layers: int = 12,
              in_chans: int = 3, num_classes: int = 1000, cls_token: bool = True,
              prefix_tokens: int | None = None, pool: str = "token", heads_read: int = 1,
              fc_norm: bool = False) -> ModelShape:
    """Shape of a timm-style ViT: N = (img/patch)^2 + prefix tokens (CLS, DeiT's
    distillation token, registers; default: 1 if cls_token). pool "token": the head reads
    device 0's first rows (`heads_read` classifiers: 2 for DeiT distilled); "avg" / "max":
    one pooled vector per device goes to device 0; "avgmax": two."""
    if img_size % patch_size:
        raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; known: {list(POOLS)}")
    n_patches = (img_size // patch_size) ** 2
    d_ff = 4 * d if d_ff is None else d_ff
    k = int(cls_token) if prefix_tokens is None else prefix_tokens
    return ModelShape(
        name=name, seq_len=n_patches + k, d=d, heads=heads, d_ff=d_ff,
        n_layers=n_layers,
        embed_flops=2.0 * n_patches * (in_chans * patch_size * patch_size) * d,
        head_flops=2.0 * d * num_classes * heads_read,
        prefix_tokens=k, pool_vectors=POOLS[pool],
    )


POOLS = {"token": 0, "avg": 1, "max": 1, "avgmax": 2}    # pooled vectors per device


def bert_shape(name: str = "bert-base", *, seq_len: int = 256, d: int = 768, heads: int = 12,
               d_ff: int | None = None, n_layers: int = 12, num_classes: int = 0,
               pooler: bool = True) -> ModelShape:
    """Shape of a BERT encoder: N = seq_len tokens (CLS included). Embeddings are
    lookups (0 FLOPs); the head (pooler d x d, classifier d x num_classes) runs once
    on the CLS row, on device 0."""
    d_ff = 4 * d if d_ff is None else d_ff
    head = (2.0 * d * d if pooler else 0.0) + 2.0 * d * num_classes
    return ModelShape(name=name, seq_len=seq_len, d=d, heads=heads, d_ff=d_ff,
                      n_layers=n_layers, embed_flops=0.0, head_flops=head)


def gpt2_shape(name: str = "gpt2", *, seq_len: int = 256, d: int = 768, heads: int = 12,
               d_ff: int | None = None, n_layers: int = 12, vocab_size: int = 50257,
               lm_head: bool = True) -> ModelShape:
    """Shape of a GPT-2 decoder: N = seq_len tokens. Every device runs the LM head
    (2 d V FLOPs per token) on its own rows; Plan.flops charges `embed_flops` pro rata
    to own rows, so the per-token head is carried there (the lookups themselves are 0)."""
    d_ff = 4 * d if d_ff is None else d_ff
    per_token = 2.0 * d * vocab_size if lm_head else 0.0
    return ModelShape(name=name, seq_len=seq_len, d=d, heads=heads, d_ff=d_ff,
                      n_layers=n_layers, embed_flops=per_token * seq_len, head_flops=0.0)


def llama_shape(name: str = "llama", *, seq_len: int = 256, d: int = 576, heads: int = 9,
                kv_heads: int = 3, head_dim: int | None = None, d_ff: int = 1536, n_layers: int = 30,
                vocab_size: int = 49152, lm_head: bool = True) -> ModelShape:
    """Shape of a Llama-family decoder (RoPE, RMSNorm, grouped-query attention, SwiGLU):
    K and V have kv_heads x head_dim columns, the MLP three d x d_ff matrices; every
    device runs the LM head on its own rows (carried in embed_flops, as for GPT-2).
    Defaults: SmolLM2-135M."""
    hd = d // heads if head_dim is None else head_dim
    per_token = 2.0 * d * vocab_size if lm_head else 0.0
    return ModelShape(name=name, seq_len=seq_len, d=d, heads=heads, d_ff=d_ff, n_layers=n_layers,
                      embed_flops=per_token * seq_len, head_flops=0.0, kv_heads=kv_heads,
                      mlp_mats=3, head_dim=0 if hd * heads == d else hd)


# Known shapes by name (for the torch-free side: cost model, notebooks, decision hook).
KNOWN_SHAPES = {
    "vit_tiny_patch16_224": dict(d=192, heads=3, n_layers=12),
    "vit_small_patch16_224": dict(d=384, heads=6, n_layers=12),
    "vit_base_patch16_224": dict(d=768, heads=12, n_layers=12),
    "deit_tiny_patch16_224": dict(d=192, heads=3, n_layers=12),
    "deit_small_patch16_224": dict(d=384, heads=6, n_layers=12),
    "deit_base_patch16_224": dict(d=768, heads=12, n_layers=12),
}


def shape_for(name: str, *, img_size: int = 224, patch_size: int = 16,
              num_classes: int = 1000) -> ModelShape:
    """ModelShape of a known ViT name at a given img_size / patch_size."""
    if name not in KNOWN_SHAPES:
        raise ValueError(f"unknown model {name!r}; known: {sorted(KNOWN_SHAPES)}")
    return vit_shape(name, img_size=img_size, patch_size=patch_size, num_classes=num_classes,
                     **KNOWN_SHAPES[name])

# Shapes of named models of the other families, as their runtime adapters report them
# (tests/test_family_costs.py checks each against the built adapter).
def _family_shapes() -> dict:
    import dataclasses

    def hf_vit_base():
        return dataclasses.replace(vit_shape("hf-vit-base"), head_flops=2.0 * 768 * 768)   # pooler

    return {
        "deit_tiny_distilled_patch16_224": lambda: vit_shape(
            "deit_tiny_distilled_patch16_224", d=192, heads=3, prefix_tokens=2, heads_read=2),
        "deit_small_distilled_patch16_224": lambda: vit_shape(
            "deit_small_distilled_patch16_224", d=384, heads=6, prefix_tokens=2, heads_read=2),
        "deit_base_distilled_patch16_224": lambda: vit_shape(
            "deit_base_distilled_patch16_224", prefix_tokens=2, heads_read=2),
        "vit_base_patch16_reg4_gap_256": lambda: vit_shape(
            "vit_base_patch16_reg4_gap_256", img_size=256, prefix_tokens=4, pool="avg"),
        "vit_base_patch16_gap_224": lambda: vit_shape("vit_base_patch16_gap_224", heads=16, prefix_tokens=0,
                                                      pool="avg"),
        "hf-vit-base": hf_vit_base,
        "hf-vit-base-cls": lambda: vit_shape("hf-vit-base-cls"),
        "distilbert-base": lambda: bert_shape("distilbert-base", n_layers=6, pooler=False),
        "distilbert-base-cls": lambda: bert_shape("distilbert-base-cls", n_layers=6, num_classes=2),
        "roberta-base": lambda: bert_shape("roberta-base"),
        "roberta-base-cls": lambda: bert_shape("roberta-base-cls", num_classes=2),
        "smollm2-135m": lambda: llama_shape("smollm2-135m"),
        "qwen2.5-0.5b": lambda: llama_shape("qwen2.5-0.5b", d=896, heads=14, kv_heads=2, d_ff=4864,
                                            n_layers=24, vocab_size=151936),   # biases: no matmul FLOPs
    }


FAMILY_SHAPES = _family_shapes()


def named_shape(name: str, seq_len: int | None = None) -> ModelShape:
    """The shape of a named model without building it: the ViTs of KNOWN_SHAPES and the
    FAMILY_SHAPES (DeiT distilled, registers, avg pooling, HF ViT, DistilBERT, RoBERTa,
    SmolLM2-135M, Qwen2.5-0.5B); a text model at `seq_len` tokens when given (per-token FLOPs of its
    embedding / LM head scaled)."""
    import dataclasses

    if name in KNOWN_SHAPES:
        s = shape_for(name)
    elif name in FAMILY_SHAPES:
        s = FAMILY_SHAPES[name]()
    else:
        raise ValueError(f"unknown model {name!r}; known: {sorted(KNOWN_SHAPES) + sorted(FAMILY_SHAPES)}")
    if seq_len is not None and int(seq_len) != s.seq_len:
        if s.embed_flops and s.head_flops:
            raise ValueError(f"{name!r} is a ViT: its token count follows from img_size, not seq_len")
        s = dataclasses.replace(s, seq_len=int(seq_len), embed_flops=s.embed_flops / s.seq_len * int(seq_len))
    return s


SHAPE_EXTRAS = {"prefix_tokens": 0, "pool_vectors": 0, "kv_heads": 0, "mlp_mats": 2, "head_dim": 0}


def shape_extras(shape: ModelShape) -> dict:
    """The ModelShape fields beyond the six every perf map records, where they differ
    from their defaults. An entry without them reads as the defaults: no prefix token,
    which is how every perf map made before these fields was measured (Prism then
    averaged a ViT's CLS row with its patches; the Jetson paper's maps too)."""
    return {k: getattr(shape, k) for k, v in SHAPE_EXTRAS.items() if getattr(shape, k) != v}


def shape_from_entry(m: dict) -> ModelShape:
    """A ModelShape from a perf map / cost model `models[]` entry (extras optional)."""
    return ModelShape(name=m["name"], seq_len=int(m["seq_len"]), d=int(m["d"]), heads=int(m["heads"]),
                      d_ff=int(m["d_ff"]), n_layers=int(m["n_layers"]),
                      embed_flops=float(m.get("embed_flops", 0.0)),
                      head_flops=float(m.get("head_flops", 0.0)),
                      **{k: int(m[k]) for k in SHAPE_EXTRAS if k in m})


# --------------------------------------------------------------------------- partitions

def even_partition(n: int, p: int) -> list[int]:
    """Contiguous sizes for n tokens over p devices; the first n mod p get one more
    (so CLS, on device 0, sits in the larger part): 197 over 2 -> [99, 98]."""
    if p < 1:
        raise ValueError(f"world_size={p} must be >= 1")
    if n < p:
        raise ValueError(f"{n} tokens cannot be split over world_size={p} devices")
    return [n // p + (1 if i < n % p else 0) for i in range(p)]


def check_partition(sizes: Sequence[int], n: int) -> list[int]:
    """Validate explicit (possibly uneven) partition sizes."""
    sizes = [int(s) for s in sizes]
    if any(s < 1 for s in sizes):
        raise ValueError(f"partition sizes {sizes} must all be >= 1")
    if sum(sizes) != n:
        raise ValueError(f"partition sizes {sizes} sum to {sum(sizes)}, not to the {n} tokens")
    return sizes


def check_prefix(sizes: Sequence[int], shape: ModelShape) -> None:
    """A ViT's prefix tokens (CLS, distillation, registers) live on device 0."""
    if shape.prefix_tokens > sizes[0]:
        raise ValueError(f"partition {list(sizes)} gives device 0 {sizes[0]} rows, fewer than "
                         f"{shape.name!r}'s {shape.prefix_tokens} prefix tokens, which live on device 0")


def offsets(sizes: Sequence[int]) -> list[int]:
    """Global position of each device's first token."""
    out, a = [], 0
    for s in sizes:
        out.append(a)
        a += s
    return out


def segment_sizes(rows: int, m: int) -> list[int]:
    """torch.tensor_split semantics: the first rows mod m segments get one extra row.
    99 rows into 10 -> nine 10s and one 9."""
    if not 1 <= m <= rows:
        raise ValueError(f"m={m} segments for {rows} rows; m must be in [1, {rows}]")
    q, r = divmod(rows, m)
    return [q + 1 if j < r else q for j in range(m)]


def resolve_m(lp: int, *, cr: float | None = None, m: int | None = None) -> tuple[int, float]:
    """Segment means per device from either cr or m, for lp = L_p tokens per device (ceil(N/P)
    for an even split): (m, cr) with CR = L_p / m and m = round(L_p / CR), at least 1."""
    if (cr is None) == (m is None):
        raise ValueError("prism needs exactly one of cr or m")
    if cr is not None:
        if not (1.0 <= float(cr) <= lp):
            raise ValueError(f"cr={cr} for {lp} tokens per device; cr must be in [1, {lp}]")
        m = max(1, int(round(lp / float(cr))))
    elif isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= lp:
        raise ValueError(f"m={m} segment means for {lp} tokens per device; m must be in [1, {lp}]")
    return m, lp / m


def prism_row_width(shape: ModelShape, averaged: str | None) -> int:
    """Plan.row_width of a Prism plan: 0 (d, a block input: "output" / "ln1") or 2 kv_dim ("kv")."""
    if averaged not in (None, *PRISM_AVERAGED):
        raise ValueError(f"unknown averaged tensor {averaged!r}; known: {list(PRISM_AVERAGED)}")
    return 2 * shape.kv_dim if averaged == "kv" else 0


def prism_segments(sizes: Sequence[int], m: int, prefix: int = 0) -> list[list[int]]:
    """Each device's Prism segment sizes (rows per mean): device 0's `prefix` tokens (a ViT's
    CLS / distillation / register rows) one segment each, as themselves; every device's other
    rows min(m, rows) tensor_split segments (no prefix: segment_sizes(s, min(m, s)))."""
    if prefix > sizes[0]:
        raise ValueError(f"device 0 holds {sizes[0]} rows, fewer than the model's {prefix} "
                         "prefix tokens (CLS / registers), which live on device 0")
    out = []
    for q, s in enumerate(sizes):
        k = prefix if q == 0 else 0
        rest = s - k
        out.append([1] * k + (segment_sizes(rest, min(m, rest)) if rest else []))
    return out


# --------------------------------------------------------------------------- FLOPs

def block_flops(lq: float, lkv: float, d: int, d_ff: int, *, attn_dim: int | None = None,
                kv_dim: int | None = None, mlp_mats: int = 2) -> float:
    """F(Lq, Lkv): FLOPs of one Transformer block for Lq query rows over Lkv key rows:
    Q and output projections (4 Lq d A), K and V (4 Lkv d A_kv), scores and A.V
    (4 Lq Lkv A), the MLP (2 mlp_mats Lq d d_ff). A = A_kv = d by default (no GQA)."""
    a = d if attn_dim is None else attn_dim
    akv = a if kv_dim is None else kv_dim
    return 4 * lq * d * a + 4 * lkv * d * akv + 4 * lq * lkv * a + 2 * mlp_mats * lq * d * d_ff


@dataclass(frozen=True)
class Plan:
    """A resolved strategy on a model: partition, segment means, per-device quantities.

    All per-device lists are indexed by rank. Bytes are for one batch of `batch`.
    Built by costmodel.strategies.make_plan; `formula` is the strategy's Formula, which
    every per-device quantity below asks."""

    strategy: str
    shape: ModelShape
    world_size: int
    batch: int
    sizes: tuple[int, ...]
    m: int | None = None            # segment means per device (prism)
    cr: float | None = None
    exchange: str = "pairwise"
    elem_bytes: int = 4
    kv_rows: tuple[int, ...] = field(default=())
    heads_split: tuple[int, ...] = field(default=())    # heads per device (head/column splits)
    cols_split: tuple[int, ...] = field(default=())     # MLP hidden columns per device
    collective: str = ""                                # "native" / "pairwise" (head/column splits)
    tiles: int = 1                                      # galaxy: row tiles per message
    layers_split: tuple[int, ...] = field(default=())   # pipeline: blocks per device (stage)
    microbatches: int = 1                               # pipeline: micro-batches per pass
    row_width: int = 0              # floats per exchanged row (0: d; prism averaged="kv": 2 kv_dim)
    formula: Any = field(default=None, compare=False, repr=False)
    width = property(lambda self: self.row_width or self.shape.d)   # floats per exchanged row

    @property
    def n_exchanges(self) -> int:
        """Exchanges per forward pass (one per block when distributed; tensor_parallel:
        2 all-reduces per block; galaxy: 2 reduce-scatters + 2 all-gathers per block)."""
        return self.formula.n_exchanges(self)

    @property
    def n_messages(self) -> int:
        """Latency-bearing message steps per pass (costmodel.features docstring)."""
        return self.formula.n_messages(self)

    def rows_sent(self, rank: int) -> int:
        """Rows one device hands to the exchange per block, per sample (before padding)."""
        return self.formula.rows_sent(self, rank)

    def rows_per_message(self, rank: int) -> int:
        """Rows actually put on the wire per peer: all_gather pads to the largest part."""
        if self.exchange == "allgather":
            return max(self.rows_sent(q) for q in range(self.world_size))
        return self.rows_sent(rank)

    def pool_bytes(self, rank: int) -> int:
        """Bytes device `rank` sends device 0 for a head that pools over all rows (a ViT's
        avg / max pooling: shape.pool_vectors partial pools of d per sample, once per
        pass); 0 when device 0 holds every row or the head reads device 0's rows only."""
        if (rank == 0 or self.world_size == 1 or not self.shape.pool_vectors
                or getattr(self.formula, "all_rows", False)):
            return 0
        return self.shape.pool_vectors * self.shape.d * self.elem_bytes * self.batch

    def comm_bytes(self, rank: int) -> int:
        """Bytes one device sends per forward pass (Voltage: (P-1) * rows * d * b * B per
        block), plus pool_bytes."""
        return self.formula.comm_bytes(self, rank) + self.pool_bytes(rank)

    def recv_bytes(self, rank: int) -> int:
        """Bytes one device receives per forward pass."""
        pool = sum(self.pool_bytes(q) for q in range(self.world_size)) if rank == 0 else 0
        return self.formula.recv_bytes(self, rank) + pool

    def staged_bytes(self, rank: int) -> int:
        """Bytes copied device->host (own rows) plus host->device (every peer's rows) per
        pass when the model sits on an accelerator; padding is never staged."""
        pool = (sum(self.pool_bytes(q) for q in range(self.world_size)) if rank == 0
                else self.pool_bytes(rank))
        return self.formula.staged_bytes(self, rank) + pool

    def flops(self, rank: int, *, embed: bool = True, head: bool = True) -> float:
        """FLOPs of one device for the whole batch (blocks, plus own-token embedding and,
        on device 0, the head)."""
        return self.formula.flops(self, rank, embed=embed, head=head)

    def max_flops(self, **kw) -> float:
        return max(self.flops(r, **kw) for r in range(self.world_size))

    def to_dict(self) -> dict:
        out = {
            "strategy": self.strategy, "model": self.shape.name, "seq_len": self.shape.seq_len,
            "world_size": self.world_size, "batch": self.batch, "partition": list(self.sizes),
            "m": self.m, "cr": self.cr, "exchange": self.exchange,
            "n_exchanges": self.n_exchanges,
            "comm_bytes": [self.comm_bytes(r) for r in range(self.world_size)],
            "staged_bytes": [self.staged_bytes(r) for r in range(self.world_size)],
            "gflops": [self.flops(r) / 1e9 for r in range(self.world_size)],
        }
        out.update(self.formula.extra_dict(self))
        return out


def comm_reduction(plan: Plan) -> float:
    """Fraction of Voltage's traffic that Prism saves on the same partition: 1 - m/L_p
    (times width / d: averaged="kv" sends 2 kv_dim floats per mean, not d)."""
    if not plan.formula.compresses:
        raise ValueError(f"comm_reduction applies to a compressing plan (prism), not {plan.strategy!r}")
    return 1.0 - plan.m * plan.width / (max(plan.sizes) * plan.shape.d)


# --------------------------------------------------------------------------- head / column splits

def split_even(n: int, p: int) -> list[int]:
    """n units (heads, columns) over p devices, the first n mod p get one more; may give
    0 to some devices when n < p."""
    if p < 1:
        raise ValueError(f"world_size={p} must be >= 1")
    return [n // p + (1 if i < n % p else 0) for i in range(p)]


def split_proportional(n: int, weights: Sequence[float], *, minimum: int = 0) -> list[int]:
    """n units over devices in proportion to `weights` (largest remainder), each part at
    least `minimum`."""
    w = [float(x) for x in weights]
    if not w or any(not math.isfinite(x) or x <= 0 for x in w):
        raise ValueError(f"weights {list(weights)} must all be finite and > 0")
    if minimum * len(w) > n:
        raise ValueError(f"{n} units cannot give each of {len(w)} devices at least {minimum}")
    free = n - minimum * len(w)
    raw = [free * x / sum(w) for x in w]
    out = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(w)), key=lambda i: out[i] - raw[i])[: free - sum(out)]:
        out[i] += 1
    return [o + minimum for o in out]


def units_split(split, total: int, p: int, what: str) -> tuple[int, ...]:
    """A heads / columns split: even by default, else checked to have p parts >= 0 summing to total."""
    if split is None:
        return tuple(split_even(total, p))
    vals = [int(v) for v in split]
    if len(vals) != p:
        raise ValueError(f"{what} split {vals} has {len(vals)} parts for world_size={p}")
    if any(v < 0 for v in vals) or sum(vals) != total:
        raise ValueError(f"{what} split {vals} must be >= 0 each and sum to {total}")
    return tuple(vals)


def ring_allreduce_bytes(numel: int, world_size: int, elem_bytes: int = 4) -> int:
    """Bytes one device sends in a ring all-reduce of numel elements: 2 (P-1)/P numel b."""
    return 2 * (world_size - 1) * numel * elem_bytes // world_size


def rs_ag_rows(sizes: Sequence[int], rank: int) -> int:
    """Rows one device sends in a pairwise reduce-scatter plus all-gather over row chunks
    `sizes`: (N - s_r) + (P-1) s_r (also the rows it receives)."""
    n, p = sum(sizes), len(sizes)
    return (n - sizes[rank]) + (p - 1) * sizes[rank]


def tp_block_flops(rows: int, kv_rows: int, d: int, attn_dim: int, cols: int, *,
                   kv_dim: int | None = None, mlp_mats: int = 2) -> float:
    """Matmul FLOPs of one block on one device holding `attn_dim` = heads_r * head_dim
    attention columns (`kv_dim` K/V columns, attn_dim without GQA) and `cols` MLP columns:
    q (2 L d A), k and v (4 Lkv d A_kv), scores and A.V (4 L Lkv A), proj (2 L A d), the
    MLP (2 mlp_mats L d c; SwiGLU 3). With A = d, c = d_ff this is block_flops."""
    akv = attn_dim if kv_dim is None else kv_dim
    return (2 * rows * d * attn_dim + 4 * kv_rows * d * akv + 4 * rows * kv_rows * attn_dim
            + 2 * rows * attn_dim * d + 2 * mlp_mats * rows * d * cols)
