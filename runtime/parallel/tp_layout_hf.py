"""Head / column layouts (tensor_parallel, galaxy) of HF ViT, DistilBERT and the Llama
family (Llama, Qwen2: RMSNorm, RoPE, grouped-query attention, SwiGLU), registered with
tp_layout.register_layout (RoBERTa's layers are BERT's: BertLayout)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .tp_layout import Layout, register_layout


class HFViTLayout(Layout):
    """HF ViTLayer (pre-LN): x + o_proj(attn(ln_before x)); x + fc2(act(fc1(ln_after x)))."""

    def __init__(self, adapter):
        self.blocks = adapter.blocks
        at = self.blocks[0].attention
        self.heads, self.head_dim = at.num_attention_heads, at.head_dim

    def _weights(self, i):
        ly = self.blocks[i]
        a, m = ly.attention, ly.mlp
        return (a.q_proj.weight, a.q_proj.bias, a.k_proj.weight, a.k_proj.bias, a.v_proj.weight,
                a.v_proj.bias, a.o_proj.weight, m.fc1.weight, m.fc1.bias, m.fc2.weight)

    def ln_attn(self, i, x):
        return self.blocks[i].layernorm_before(x)

    def qk_norm(self, i, q, k):
        return q, k

    def scale(self, i):
        return self.blocks[i].attention.scaling

    def after_attn(self, i, x, a):
        ly = self.blocks[i]
        return x + ly.dropout(a + ly.attention.o_proj.bias)

    def ln_mlp(self, i, x):
        return self.blocks[i].layernorm_after(x)

    def act(self, i, u):
        return self.blocks[i].mlp.activation_fn(u)

    def after_mlp(self, i, x, m):
        ly = self.blocks[i]
        return x + ly.dropout(m + ly.mlp.fc2.bias)


class DistilBertLayout(Layout):
    """DistilBERT TransformerBlock (post-LN): a = LN(out_lin(attn(x)) + x); LN(lin2(act(lin1 a)) + a)."""

    def __init__(self, adapter):
        self.blocks = adapter.blocks
        sa = self.blocks[0].attention
        self.heads, self.head_dim = sa.n_heads, sa.attention_head_size

    def _weights(self, i):
        ly = self.blocks[i]
        sa, f = ly.attention, ly.ffn
        return (sa.q_lin.weight, sa.q_lin.bias, sa.k_lin.weight, sa.k_lin.bias, sa.v_lin.weight,
                sa.v_lin.bias, sa.out_lin.weight, f.lin1.weight, f.lin1.bias, f.lin2.weight)

    def ln_attn(self, i, x):
        return x

    def qk_norm(self, i, q, k):
        return q, k

    def scale(self, i):
        return self.blocks[i].attention.scaling

    def after_attn(self, i, x, a):
        ly = self.blocks[i]
        return ly.sa_layer_norm(a + ly.attention.out_lin.bias + x)

    def ln_mlp(self, i, x):
        return x

    def act(self, i, u):
        return self.blocks[i].ffn.activation(u)

    def after_mlp(self, i, x, m):
        ly = self.blocks[i]
        return ly.output_layer_norm(ly.ffn.dropout(m + ly.ffn.lin2.bias) + x)


register_layout("hf_vit", HFViTLayout)
register_layout("distilbert", DistilBertLayout)


class _GQAShard:
    """One Llama / Qwen2 block's weights on one device: query heads [h0, h1), their K/V
    heads [h0 / g, h1 / g) (g query heads share one K/V head), gate / up rows and down
    columns [c0, c1). tensor_parallel and galaxy read attn_dim only; everything else goes
    through LlamaLayout. The plain layout's fused names (wqkv = q | k | v of equal widths,
    wfc1 = fc1) do not describe it, so a strategy that slices them refuses in one line."""

    def __init__(self, w_qkv, b_qkv, w_o, w_gate_up, b_gate_up, w_down, heads, kv_heads, head_dim, cols):
        self.w_qkv, self.b_qkv, self.w_o = w_qkv, b_qkv, w_o
        self.w_gate_up, self.b_gate_up, self.w_down = w_gate_up, b_gate_up, w_down
        self.heads, self.kv_heads, self.head_dim, self.cols = heads, kv_heads, head_dim, cols
        self.attn_dim, self.kv_dim = heads * head_dim, kv_heads * head_dim

    def __getattr__(self, name):
        if name in ("wqkv", "bqkv", "wproj", "wfc1", "bfc1", "wfc2"):
            raise ValueError(f"the Llama-family head / column layout (grouped-query K/V, SwiGLU gate | up) "
                             f"has no plain {name!r} weight; only tensor_parallel and galaxy split this family")
        raise AttributeError(name)


def _cat(*ts):
    return None if ts[0] is None else torch.cat(ts, dim=0).contiguous()


class LlamaLayout(Layout):
    """HF LlamaDecoderLayer / Qwen2DecoderLayer (pre-RMSNorm):
    x + o_proj(attn(rope(q), rope(k), v)); x + down(act(gate h) * up h), h = RMSNorm(x).

    RoPE: q and k are rotated per head at their rows' global positions; both strategies
    hand the layout every row in global order (tensor_parallel: all N rows; galaxy: the
    all-gathered rows of every device in rank order), so query rows [a, a + L) sit at
    positions a .. a + L - 1 and the keys at 0 .. N - 1. GQA: a device holds whole K/V
    groups (costmodel.strategies refuses a heads split that cuts one). SwiGLU: gate and up
    rows, down columns of the device's MLP columns; q / k / v biases (Qwen2) split with
    their rows, o_proj / down biases (Llama's attention_bias / mlp_bias) added once."""

    def __init__(self, adapter):
        self.adapter, self.blocks = adapter, adapter.blocks
        self.heads, self.kv_heads, self.head_dim = adapter.heads, adapter.kv_heads, adapter.head_dim
        self.group = self.heads // self.kv_heads

    def shard(self, i, h0, h1, c0, c1) -> _GQAShard:
        g, Dh = self.group, self.head_dim
        if h0 % g or h1 % g:
            raise ValueError(f"heads [{h0}, {h1}) on one device cut a K/V group of {g} query heads "
                             "(grouped-query attention); heads per device must be multiples of it")
        ly = self.blocks[i]
        at, m = ly.self_attn, ly.mlp
        q, kv = slice(h0 * Dh, h1 * Dh), slice(h0 // g * Dh, h1 // g * Dh)
        wqkv = _cat(at.q_proj.weight[q], at.k_proj.weight[kv], at.v_proj.weight[kv])
        bqkv = (None if at.q_proj.bias is None
                else _cat(at.q_proj.bias[q], at.k_proj.bias[kv], at.v_proj.bias[kv]))
        wfc1 = _cat(m.gate_proj.weight[c0:c1], m.up_proj.weight[c0:c1])
        bfc1 = None if m.gate_proj.bias is None else _cat(m.gate_proj.bias[c0:c1], m.up_proj.bias[c0:c1])
        return _GQAShard(wqkv, bqkv, at.o_proj.weight[:, q].contiguous(), wfc1, bfc1,
                         m.down_proj.weight[:, c0:c1].contiguous(), h1 - h0, (h1 - h0) // g, Dh, c1 - c0)

    def ln_attn(self, i, x):
        return self.blocks[i].input_layernorm(x)

    def qkv(self, i, sh, h):
        """(B, L, A_r + 2 A_kv,r): q | k | v of this device's heads and their K/V heads."""
        return F.linear(h, sh.w_qkv, sh.b_qkv)

    def qk_norm(self, i, q, k):
        return q, k

    def scale(self, i):
        return self.blocks[i].self_attn.scaling

    def keys_values(self, i, sh, qkv_all):
        """(k, v), each (B, kv_heads_r, N, Dh), k rotated at positions 0 .. N - 1."""
        B, N, _ = qkv_all.shape
        A, Akv, Dh = sh.attn_dim, sh.kv_dim, sh.head_dim
        k = qkv_all[:, :, A:A + Akv].reshape(B, N, sh.kv_heads, Dh).transpose(1, 2)
        v = qkv_all[:, :, A + Akv:].reshape(B, N, sh.kv_heads, Dh).transpose(1, 2)
        return self.adapter.rotate(k, torch.arange(N)), v

    def attend(self, i, sh, qkv_all, a, L, bias, kv=None):
        """o_proj partial sum (B, L, d) for query rows [a, a + L) (global positions) over
        all N rows, K/V heads repeated over their query groups."""
        B = qkv_all.shape[0]
        if sh.attn_dim == 0:
            return qkv_all.new_zeros(B, L, sh.w_o.shape[0])
        k, v = self.keys_values(i, sh, qkv_all) if kv is None else kv
        q = qkv_all[:, a:a + L, :sh.attn_dim].reshape(B, L, sh.heads, sh.head_dim).transpose(1, 2)
        q = self.adapter.rotate(q, torch.arange(a, a + L))
        if self.group > 1:
            k, v = k.repeat_interleave(self.group, dim=1), v.repeat_interleave(self.group, dim=1)
        b = None if bias is None else bias[:, :, a:a + L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=b, scale=self.scale(i))
        return F.linear(out.transpose(1, 2).reshape(B, L, sh.attn_dim), sh.w_o)

    def after_attn(self, i, x, a):
        b = self.blocks[i].self_attn.o_proj.bias
        return x + (a if b is None else a + b)

    def ln_mlp(self, i, x):
        return self.blocks[i].post_attention_layernorm(x)

    def act(self, i, u):
        return self.blocks[i].mlp.act_fn(u)

    def mlp(self, i, sh, h):
        """down partial sum (B, L, d): down_c(act(gate_c h) * up_c h) over columns c."""
        if sh.cols == 0:
            return h.new_zeros(h.shape[0], h.shape[1], sh.w_down.shape[0])
        gate, up = F.linear(h, sh.w_gate_up, sh.b_gate_up).split(sh.cols, dim=-1)
        return F.linear(self.act(i, gate) * up, sh.w_down)

    def after_mlp(self, i, x, m):
        b = self.blocks[i].mlp.down_proj.bias
        return x + (m if b is None else m + b)


register_layout("llama", LlamaLayout)
register_layout("qwen2", LlamaLayout)
