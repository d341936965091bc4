"""Head / column layouts (tensor_parallel, galaxy) of HF ViT and DistilBERT, registered
with tp_layout.register_layout (RoBERTa's layers are BERT's: BertLayout)."""
from __future__ import annotations

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
