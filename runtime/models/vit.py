"""Model adapters: the small surface a strategy needs from a plain model.

A strategy never edits the model. It asks the adapter for
  - `embed(inputs)`        the (B, N, d) block-0 input with *global* positions,
  - `kv_input(i, x)`       what block i's K/V projections read (pre-LN models: norm1(x)),
  - `block(i, x, remote, bias)` block i on own rows x, with extra K/V-input rows `remote`
                           and an additive attention bias for those columns,
  - `final_norm(x)`, `head(x_norm)`  final norm on a device's rows; the head on device 0's
                           rows (token pooling) or, for a head that pools over every row
                           (`shape.pool_vectors` > 0), `pool_partial(x_norm, start)` on every
                           device and `head_from_partials(parts)` on device 0,
  - `reference(inputs)`    the plain model: (logits, final features).
This module holds the timm ViT adapter; models/hf.py implements the same methods for
BERT and GPT-2, models/registry.py names the families.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from costmodel.formulas import POOLS, ModelShape, vit_shape
from .registry import ModelSpec, load_state_dict, register_family


def attention(attn: nn.Module, q_in: torch.Tensor, kv_in: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
    """timm `Attention` with queries from `q_in` (B, Lq, d) and keys/values from
    `kv_in` (B, Lkv, d); `bias` is added to the scaled logits (broadcast to
    (B, heads, Lq, Lkv)). Same weights and ops as attn.forward when q_in is kv_in."""
    B, Lq, _ = q_in.shape
    Lkv = kv_in.shape[1]
    H, Dh, A = attn.num_heads, attn.head_dim, attn.attn_dim
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(q_in, w[:A], None if b is None else b[:A])
    kv = F.linear(kv_in, w[A:], None if b is None else b[A:])
    q = q.reshape(B, Lq, H, Dh).transpose(1, 2)
    k, v = kv.reshape(B, Lkv, 2, H, Dh).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    out = attn.norm(out.transpose(1, 2).reshape(B, Lq, A))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(q_in).sigmoid()
    return attn.proj_drop(attn.proj(out))


def unsupported_reason(model: nn.Module) -> Optional[str]:
    """Why a timm model cannot be partitioned by rows here (None: it can)."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        return (f"{type(model).__name__} is not a timm VisionTransformer (no adapter for its "
                "blocks / position scheme)")
    if model.attn_pool is not None:
        return "attention pooling (global_pool='map') attends over every row; not supported"
    if model.global_pool not in POOLS:
        return f"global_pool={model.global_pool!r}; supported: {sorted(POOLS)}"
    for blk in model.blocks:
        if type(blk) is not Block:
            return f"blocks of type {type(blk).__name__}; only the pre-LN timm Block is supported"
        if type(blk.attn) is not Attention:
            return f"attention of type {type(blk.attn).__name__}; only timm Attention is supported"
    from timm.layers import PatchEmbed
    pe = model.patch_embed
    if not isinstance(pe, PatchEmbed) or not isinstance(getattr(pe, "proj", None), nn.Conv2d):
        return (f"patch embedding {type(pe).__name__} with a {type(getattr(pe, 'proj', None)).__name__} "
                "projection (a CNN stem); only timm PatchEmbed with a patch convolution is supported")
    if getattr(model.patch_embed, "dynamic_img_pad", False):
        return "dynamic_img_pad changes the token count per image; not supported"
    return None


class TimmViTAdapter:
    """Adapter over a timm `VisionTransformer`: pre-LN blocks, any number of prefix tokens
    (CLS, DeiT's distillation token, registers: on device 0, counted in its L_0), token
    pooling (the head reads device 0's first rows) or avg / max / avgmax pooling over the
    patch rows (each device sends its partial pool to device 0), fc_norm after pooling."""

    family = "vit"

    def __init__(self, model: nn.Module, name: str = "vit"):
        why = unsupported_reason(model)
        if why is not None:
            raise ValueError(f"model {name!r}: {why}")
        self.model = model.eval()
        self.name = name
        self.blocks = list(model.blocks)
        pe = model.patch_embed
        img = pe.img_size[0] if isinstance(pe.img_size, (tuple, list)) else pe.img_size
        patch = pe.patch_size[0] if isinstance(pe.patch_size, (tuple, list)) else pe.patch_size
        if isinstance(pe.img_size, (tuple, list)) and pe.img_size[0] != pe.img_size[1]:
            raise ValueError(f"model {name!r}: non-square images {tuple(pe.img_size)} not supported")
        blk = self.blocks[0]
        self.prefix = int(model.num_prefix_tokens)
        self.pool = model.global_pool
        self.include_prefix = bool(getattr(model, "pool_include_prefix", False))
        self.shape: ModelShape = vit_shape(
            name, img_size=img, patch_size=patch, d=model.embed_dim, heads=blk.attn.num_heads,
            d_ff=blk.mlp.fc1.out_features, n_layers=len(self.blocks),
            in_chans=pe.proj.in_channels, num_classes=max(1, model.num_classes),
            prefix_tokens=self.prefix, pool=self.pool,
            heads_read=2 if hasattr(model, "head_dist") else 1,
        )
        if self.shape.seq_len != pe.num_patches + self.prefix:
            raise ValueError(f"model {name!r}: {pe.num_patches} patches + {self.prefix} prefix "
                             f"tokens != {self.shape.seq_len} tokens")
        self.img_size, self.patch_size = img, patch

    @property
    def seq_len(self) -> int:
        return self.shape.seq_len

    def make_inputs(self, batch: int, seed: int, device="cpu") -> torch.Tensor:
        """Deterministic random images (B, 3, H, W) for a seed."""
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(batch, self.model.patch_embed.proj.in_channels, self.img_size,
                        self.img_size, generator=g)
        return x.to(device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Block-0 input (B, N, d) with global positions. Every device runs the patch
        projection on the whole image (under 1 % of the FLOPs) and keeps its rows."""
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def kv_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].norm1(x)

    def block(self, i: int, x: torch.Tensor, remote: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Block i on own rows x (B, L, d); `remote` (B, R, d) are extra rows already in
        K/V-input space (post-norm1); `bias` (.., L, L+R) is added to the logits."""
        blk = self.blocks[i]
        h = blk.norm1(x)
        kv = h if remote is None else torch.cat([h, remote], dim=1)
        x = x + blk.drop_path1(blk.ls1(attention(blk.attn, h, kv, bias)))
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def head(self, x_norm: torch.Tensor) -> torch.Tensor:
        """The plain head on rows that start at global position 0: token pooling reads
        the CLS (and DeiT's distillation) row; avg / max pooling needs every row (P = 1,
        or head_from_partials)."""
        return self.model.forward_head(x_norm)

    def pool_partial(self, x_norm: torch.Tensor, start: int) -> torch.Tensor:
        """(B, k, d) this device's partial pool over its rows [start, start+L): the sum
        (avg), the max (max), or both (avgmax) of the rows the pool covers."""
        skip = 0 if self.include_prefix else max(0, self.prefix - start)
        x = x_norm[:, skip:]
        parts = []
        if self.pool in ("avg", "avgmax"):
            parts.append(x.sum(dim=1))
        if self.pool in ("max", "avgmax"):
            parts.append(x.amax(dim=1) if x.shape[1] else
                         x_norm.new_full((x_norm.shape[0], x_norm.shape[2]), float("-inf")))
        return torch.stack(parts, dim=1)

    def head_from_partials(self, parts: list) -> torch.Tensor:
        """Merge every device's pool_partial into the plain model's pooled vector, then
        fc_norm, head."""
        p = torch.stack(parts, dim=0)                     # (P, B, k, d)
        n = self.seq_len - (0 if self.include_prefix else self.prefix)
        vecs = []
        if self.pool in ("avg", "avgmax"):
            vecs.append(p[:, :, 0].sum(dim=0) / n)
        if self.pool in ("max", "avgmax"):
            vecs.append(p[:, :, -1].amax(dim=0))
        pooled = vecs[0] if len(vecs) == 1 else 0.5 * (vecs[1] + vecs[0])
        m = self.model
        return m.head(m.head_drop(m.fc_norm(pooled)))

    def reference(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain, unpartitioned model: (logits, final normed features)."""
        feats = self.model.forward_features(images)
        return self.model.forward_head(feats), feats


# --------------------------------------------------------------------------- creation

@register_family("vit", tiny=ModelSpec("test_vit", img_size=64, depth=2))
def build_timm(spec: ModelSpec, device="cpu") -> TimmViTAdapter:
    import timm

    if not timm.is_model(spec.name):
        raise ValueError(f"unknown model {spec.name!r}; examples: vit_tiny_patch16_224, "
                         "vit_small_patch16_224, vit_base_patch16_224, deit_small_patch16_224, "
                         "test_vit (see timm.list_models('vit*'))")
    torch.manual_seed(spec.seed)
    kw = spec.kwargs()
    if "img_size" in kw and kw["img_size"] % kw.get("patch_size", _default_patch(spec.name)):
        raise ValueError(f"img_size={kw['img_size']} is not a multiple of the patch size")
    model = timm.create_model(spec.name, pretrained=False, **kw)
    if spec.checkpoint:
        model.load_state_dict(load_state_dict(spec.checkpoint))
    return TimmViTAdapter(model.to(device).eval(), spec.name)


def _default_patch(name: str) -> int:
    import re
    mt = re.search(r"patch(\d+)", name)
    return int(mt.group(1)) if mt else 16
