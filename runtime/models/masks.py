"""Attention biases for masked inputs (padding, causal) under position-wise partitioning.

An adapter may expose two optional things; without them nothing here runs and the
strategies behave exactly as before (ViT):
  - `causal = True`                      the partition-aware causal mask (GPT-2),
  - `token_mask(inputs) -> (B, N) bool`  valid (non-padding) tokens (BERT attention_mask).

The strategies stay model-agnostic: they describe their K/V columns (global positions of
full-token columns, per-device segment means) and these functions turn that into one
additive bias per forward pass (0 visible, log(s) for a mean of s valid tokens, -inf
masked), following docs/method.md:
  - full token at global position t: visible iff valid[t] and (not causal or t <= i),
  - mean of device q's segment with s valid tokens: visible iff s > 0 and (not causal
    or q < p), bias log(s) when the count-weighted softmax is on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

NEG_INF = float("-inf")


@dataclass
class TokenInfo:
    """What a batch says about its tokens: validity (None = all valid) and causality."""

    valid: Optional[torch.Tensor]   # (B, N) bool
    causal: bool


@dataclass
class Masks:
    """Per-forward-pass attention inputs of one rank.

    bias: (B or 1, 1, L_own, K) added to the scaled logits;
    weights: (B, m, L_own) segment-mean weights over valid rows (prism only).
    """

    bias: Optional[torch.Tensor]
    weights: Optional[torch.Tensor] = None


def token_info(adapter, inputs) -> Optional[TokenInfo]:
    """None when the adapter has neither padding nor a causal mask (the ViT path)."""
    causal = bool(getattr(adapter, "causal", False))
    fn = getattr(adapter, "token_mask", None)
    valid = fn(inputs) if fn is not None else None
    if valid is None and not causal:
        return None
    return TokenInfo(None if valid is None else valid.bool(), causal)


def token_visibility(info: TokenInfo, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """(B or 1, L, K) bool: may a query at global position q_pos see the full token at
    global position k_pos."""
    ok = torch.ones(1, len(q_pos), len(k_pos), dtype=torch.bool, device=q_pos.device)
    if info.valid is not None:
        ok = ok & info.valid[:, k_pos].unsqueeze(1).to(q_pos.device)
    if info.causal:
        ok = ok & (k_pos.view(1, 1, -1) <= q_pos.view(1, -1, 1))
    return ok


def to_bias(ok: torch.Tensor, extra: Optional[torch.Tensor] = None, dtype=torch.float32) -> torch.Tensor:
    """0 / extra where visible, -inf elsewhere; adds the heads axis: (B, 1, L, K)."""
    base = torch.zeros(ok.shape, dtype=dtype, device=ok.device)
    if extra is not None:
        base = base + extra.to(dtype)
    return base.masked_fill(~ok, NEG_INF).unsqueeze(1)


def full_token_masks(info: Optional[TokenInfo], start: int, rows: int,
                     k_pos: torch.Tensor) -> Optional[Masks]:
    """Single / Voltage: own rows [start, start+rows) over full-token columns at k_pos."""
    if info is None:
        return None
    q_pos = torch.arange(start, start + rows, device=k_pos.device)
    return Masks(to_bias(token_visibility(info, q_pos, k_pos)))


def segment_counts(valid_rows: Optional[torch.Tensor], sizes: Sequence[int],
                   batch: int) -> torch.Tensor:
    """(B, m) valid tokens per contiguous segment of the given sizes."""
    if valid_rows is None:
        return torch.tensor(list(sizes), dtype=torch.float32).expand(batch, -1)
    parts = torch.split(valid_rows.float(), list(sizes), dim=1)
    return torch.stack([p.sum(dim=1) for p in parts], dim=1)


def mean_weights(valid_rows: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """(B, m, rows): A[b] @ X[b] = per-segment means over valid rows only (an empty
    segment gives a zero row, masked out by its -inf bias at the receiver)."""
    B, rows = valid_rows.shape
    ind = torch.zeros(len(sizes), rows, dtype=torch.float32, device=valid_rows.device)
    a = 0
    for j, s in enumerate(sizes):
        ind[j, a:a + s] = 1.0
        a += s
    w = ind.unsqueeze(0) * valid_rows.float().unsqueeze(1)
    return w / w.sum(dim=2, keepdim=True).clamp_min(1.0)


def prism_masks(info: Optional[TokenInfo], rank: int, sizes: Sequence[int],
                seg_sizes: Sequence[Sequence[int]], log_bias: bool, batch: int,
                device) -> Optional[Masks]:
    """Prism on `rank`: own rows over [own tokens ; means of every peer q != rank in
    rank order]; seg_sizes[q] are device q's segment sizes (tensor_split)."""
    if info is None:
        return None
    starts = [sum(sizes[:q]) for q in range(len(sizes))]
    a, L = starts[rank], sizes[rank]
    q_pos = torch.arange(a, a + L, device=device)
    own = token_visibility(info, q_pos, q_pos)
    cols_ok, cols_extra = [own], [torch.zeros(own.shape, device=device)]
    for q in range(len(sizes)):
        if q == rank:
            continue
        vq = None if info.valid is None else info.valid[:, starts[q]:starts[q] + sizes[q]]
        s = segment_counts(vq, seg_sizes[q], batch).to(device)           # (B, m_q)
        ok = (s > 0) & (not info.causal or q < rank)
        extra = torch.log(s.clamp_min(1.0)) if log_bias else torch.zeros_like(s)
        cols_ok.append(ok.unsqueeze(1).expand(-1, L, -1))
        cols_extra.append(extra.unsqueeze(1).expand(-1, L, -1))
    B = max(c.shape[0] for c in cols_ok)
    ok = torch.cat([c.expand(B, L, -1) for c in cols_ok], dim=2)
    extra = torch.cat([c.expand(B, L, -1) for c in cols_extra], dim=2)
    weights = None
    if info.valid is not None:
        weights = mean_weights(info.valid[:, a:a + L].to(device), seg_sizes[rank])
    return Masks(to_bias(ok, extra), weights)
