"""More Hugging Face `transformers` encoders behind the adapter surface (models/vit.py):

    hf-vit-tiny / hf-vit-base (ViTModel: pooled CLS output), hf-vit-tiny-cls /
    hf-vit-base-cls (ViTForImageClassification: logits on the CLS row),
    distilbert-tiny / distilbert-base (DistilBertModel: the CLS row's final features),
    distilbert-tiny-cls / distilbert-base-cls (DistilBertForSequenceClassification),
    roberta-tiny / roberta-base (RobertaModel: pooled), roberta-tiny-cls / roberta-base-cls
    (RobertaForSequenceClassification).

Random weights follow the seed; `--checkpoint DIR` loads a local `from_pretrained` folder
(never the hub). HF ViT is pre-LN with one CLS prefix token (on device 0, never averaged:
docs/method.md); DistilBERT and RoBERTa are post-LN like BERT, with the same padding
masks (`token_mask`). RoBERTa's position ids skip padding (they start at pad_id + 1), and
every device embeds the whole sequence, so each row keeps its global position.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from costmodel.formulas import ModelShape, bert_shape, vit_shape
from .hf import HFBertAdapter, TextInputs, check_seq_len, checkpoint_config, random_tokens
from .registry import ModelSpec, register_family

_TINY_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                  max_position_embeddings=130, vocab_size=1000)
_TINY_VIT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 image_size=32, patch_size=8)
_DISTIL_TINY = dict(dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=128,
                    vocab_size=1000)

# name -> (family, config overrides, kind, default seq_len)
MODELS = {
    "hf-vit-tiny": ("hf_vit", _TINY_VIT, "base", None),
    "hf-vit-tiny-cls": ("hf_vit", {**_TINY_VIT, "num_labels": 10}, "cls", None),
    "hf-vit-base": ("hf_vit", {}, "base", None),
    "hf-vit-base-cls": ("hf_vit", {"num_labels": 1000}, "cls", None),
    "distilbert-tiny": ("distilbert", _DISTIL_TINY, "base", 32),
    "distilbert-tiny-cls": ("distilbert", _DISTIL_TINY, "cls", 32),
    "distilbert-base": ("distilbert", {}, "base", 256),
    "distilbert-base-cls": ("distilbert", {}, "cls", 256),
    "roberta-tiny": ("roberta", {**_TINY_TEXT, "pad_token_id": 1}, "base", 32),
    "roberta-tiny-cls": ("roberta", {**_TINY_TEXT, "pad_token_id": 1}, "cls", 32),
    "roberta-base": ("roberta", {"max_position_embeddings": 514, "pad_token_id": 1,
                                 "vocab_size": 50265, "type_vocab_size": 1}, "base", 256),
    "roberta-base-cls": ("roberta", {"max_position_embeddings": 514, "pad_token_id": 1,
                                     "vocab_size": 50265, "type_vocab_size": 1}, "cls", 256),
}


def _sdpa(q, k, v, heads: int, bias, scale: float) -> torch.Tensor:
    B, Lq, D = q.shape
    Lk, Dh = k.shape[1], D // heads
    q = q.view(B, Lq, heads, Dh).transpose(1, 2)
    k = k.view(B, Lk, heads, Dh).transpose(1, 2)
    v = v.view(B, Lk, heads, Dh).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return out.transpose(1, 2).reshape(B, Lq, D)


class HFViTAdapter:
    """ViTModel / ViTForImageClassification: pre-LN layers, CLS token pooling."""

    family = "hf_vit"

    def __init__(self, model: nn.Module, name: str = "hf-vit"):
        from transformers import ViTForImageClassification, ViTModel

        self.model = model.eval()
        self.is_cls = isinstance(model, ViTForImageClassification)
        base = model.vit if self.is_cls else model
        if not isinstance(base, ViTModel):
            raise TypeError(f"expected a transformers ViTModel or ViTForImageClassification, "
                            f"got {type(model).__name__}")
        self.base, self.config, self.name = base, base.config, name
        self.blocks = list(base.layers)
        cfg = self.config
        img, patch = cfg.image_size, cfg.patch_size
        if not isinstance(img, int) or not isinstance(patch, int):
            raise ValueError(f"model {name!r}: non-square image or patch sizes are not supported")
        heads_out = cfg.num_labels if self.is_cls else 0
        shape = vit_shape(name, img_size=img, patch_size=patch, d=cfg.hidden_size,
                          heads=cfg.num_attention_heads, d_ff=cfg.intermediate_size,
                          n_layers=cfg.num_hidden_layers, in_chans=cfg.num_channels,
                          num_classes=max(1, heads_out))
        pool = 2.0 * cfg.hidden_size * cfg.pooler_output_size if base.pooler is not None else 0.0
        self.shape: ModelShape = dataclasses.replace(
            shape, head_flops=(2.0 * cfg.hidden_size * heads_out if self.is_cls else 0.0) + pool)
        self.img_size, self.patch_size, self.prefix = img, patch, 1

    @property
    def seq_len(self) -> int:
        return self.shape.seq_len

    def make_inputs(self, batch: int, seed: int, device="cpu") -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1)
        return torch.randn(batch, self.config.num_channels, self.img_size, self.img_size,
                           generator=g).to(device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.embeddings(images)

    def kv_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].layernorm_before(x)

    def block(self, i: int, x: torch.Tensor, remote: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        ly = self.blocks[i]
        at = ly.attention
        h = ly.layernorm_before(x)
        kv = h if remote is None else torch.cat([h, remote], dim=1)
        ctx = _sdpa(at.q_proj(h), at.k_proj(kv), at.v_proj(kv), at.num_attention_heads, bias, at.scaling)
        x = x + ly.dropout(at.o_proj(ctx))
        return x + ly.dropout(ly.mlp(ly.layernorm_after(x)))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.layernorm(x)

    def head(self, x_norm: torch.Tensor) -> torch.Tensor:
        """Logits on the CLS row, the pooled CLS output (ViTModel with pooler), or the
        CLS row's final features."""
        if self.is_cls:
            return self.model.classifier(x_norm[:, 0])
        return self.base.pooler(x_norm) if self.base.pooler is not None else x_norm[:, 0]

    def reference(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hs = self.base(images).last_hidden_state
        return self.head(hs), hs


class HFDistilBertAdapter(HFBertAdapter):
    """DistilBertModel (the CLS row's final features) or DistilBertForSequenceClassification
    (pre_classifier, ReLU, classifier on the CLS row); post-LN blocks."""

    family = "distilbert"

    @staticmethod
    def classes():
        from transformers import DistilBertForSequenceClassification, DistilBertModel
        return DistilBertModel, DistilBertForSequenceClassification, "distilbert"

    def __init__(self, model: nn.Module, name: str = "distilbert", seq_len: Optional[int] = None,
                 lengths: Optional[tuple] = None):
        base = self._unwrap(model)      # sinusoidal or learned: absolute positions either way
        cfg = base.config
        self.base, self.config, self.name = base, cfg, name
        self.blocks = list(base.transformer.layer)
        n = 128 if seq_len is None else seq_len
        check_seq_len(name, n, cfg.max_position_embeddings)
        self._set_lengths(lengths, n)
        self.shape = bert_shape(name, seq_len=n, d=cfg.dim, heads=cfg.n_heads, d_ff=cfg.hidden_dim,
                                n_layers=cfg.n_layers, num_classes=cfg.num_labels if self.is_cls else 0,
                                pooler=self.is_cls)   # pre_classifier: d x d

    def embed(self, inputs: TextInputs) -> torch.Tensor:
        return self.base.embeddings(inputs.input_ids)

    def block(self, i: int, x: torch.Tensor, remote: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        ly = self.blocks[i]
        sa = ly.attention
        kv = x if remote is None else torch.cat([x, remote], dim=1)
        ctx = _sdpa(sa.q_lin(x), sa.k_lin(kv), sa.v_lin(kv), sa.n_heads, bias, sa.scaling)
        a = ly.sa_layer_norm(sa.out_lin(ctx) + x)
        return ly.output_layer_norm(ly.ffn(a) + a)

    def head(self, x_norm_rank0: torch.Tensor) -> torch.Tensor:
        pooled = x_norm_rank0[:, 0]
        if not self.is_cls:
            return pooled
        m = self.model
        return m.classifier(m.dropout(torch.relu(m.pre_classifier(pooled))))

    def reference(self, inputs: TextInputs) -> tuple[torch.Tensor, torch.Tensor]:
        hs = self.base(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).last_hidden_state
        return self.head(hs), hs


class HFRobertaAdapter(HFBertAdapter):
    """RobertaModel (pooled) or RobertaForSequenceClassification; BERT's layers, RoBERTa's
    padding-aware position ids (computed on the whole sequence by every device)."""

    family = "roberta"

    @staticmethod
    def classes():
        from transformers import RobertaForSequenceClassification, RobertaModel
        return RobertaModel, RobertaForSequenceClassification, "roberta"

    @staticmethod
    def max_positions(cfg) -> int:
        return cfg.max_position_embeddings - (cfg.pad_token_id or 0) - 1

    def __init__(self, model, name="roberta", seq_len=None, lengths=None):
        super().__init__(model, name, seq_len, lengths)
        if self.is_cls:   # RobertaClassificationHead: dense d x d, tanh, out_proj
            self.shape = dataclasses.replace(self.shape, head_flops=2.0 * self.shape.d * (
                self.shape.d + self.config.num_labels))

    def make_inputs(self, batch: int, seed: int, device="cpu", lengths=None) -> TextInputs:
        """<s> ... </s> then padding (pad id 1), ids drawn above the special ids."""
        return random_tokens(batch, self.seq_len, self.config.vocab_size, seed, lengths or self.lengths,
                             cls_id=0, sep_id=2, pad_id=self.config.pad_token_id or 1).to(device)

    def head(self, x_norm_rank0: torch.Tensor) -> torch.Tensor:
        if self.is_cls:
            return self.model.classifier(x_norm_rank0)     # reads the <s> row itself
        return self.base.pooler(x_norm_rank0) if self.base.pooler is not None else x_norm_rank0[:, 0]


# --------------------------------------------------------------------------- creation

def _family(name: str) -> Optional[str]:
    if name in MODELS:
        return MODELS[name][0]
    for prefix, fam in (("hf-vit", "hf_vit"), ("distilbert", "distilbert"), ("roberta", "roberta")):
        if name == prefix or name.startswith(prefix + "-"):
            return fam
    return None


def _build(spec: ModelSpec, device, family: str):
    import transformers as tf

    if spec.name not in MODELS and not spec.checkpoint:
        known = sorted(n for n, v in MODELS.items() if v[0] == family)
        raise ValueError(f"unknown {family} model {spec.name!r}; known: {known} "
                         "(or the family name with --checkpoint DIR)")
    fam, over, kind, default_n = MODELS.get(spec.name, (family, {}, None, 128 if family != "hf_vit" else None))
    model_type = {"hf_vit": "vit"}.get(fam, fam)
    config_cls = {"hf_vit": tf.ViTConfig, "distilbert": tf.DistilBertConfig, "roberta": tf.RobertaConfig}[fam]
    if spec.checkpoint:
        cfg = checkpoint_config(model_type, spec.checkpoint)
        if kind is None:
            arch = (cfg.architectures or [""])[0]
            kind = "cls" if arch.endswith("ForImageClassification") or arch.endswith(
                "ForSequenceClassification") else "base"
    else:
        cfg = config_cls(**over)
    if fam == "hf_vit":
        if spec.seq_len is not None or spec.lengths:
            raise ValueError(f"seq_len / lengths apply to text models, not to {spec.name!r}")
        for k in ("img_size", "patch_size"):
            v = getattr(spec, k)
            if v is not None:
                setattr(cfg, {"img_size": "image_size"}.get(k, k), v)
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"img_size={cfg.image_size} is not a multiple of the patch size {cfg.patch_size}")
    elif spec.img_size is not None or spec.patch_size is not None:
        raise ValueError(f"img_size/patch_size apply to ViT models, not to {spec.name!r}")
    if spec.depth is not None:
        if spec.depth < 1:
            raise ValueError(f"depth={spec.depth} must be >= 1")
        setattr(cfg, "n_layers" if fam == "distilbert" else "num_hidden_layers", spec.depth)
    if spec.num_classes is not None:
        if kind != "cls":
            raise ValueError(f"num_classes applies to classification models (e.g. {family}-tiny-cls), "
                             f"not to {spec.name!r}")
        cfg.num_labels = spec.num_classes
    cfg._attn_implementation = "sdpa"
    classes = {("hf_vit", "base"): tf.ViTModel, ("hf_vit", "cls"): tf.ViTForImageClassification,
               ("distilbert", "base"): tf.DistilBertModel,
               ("distilbert", "cls"): tf.DistilBertForSequenceClassification,
               ("roberta", "base"): tf.RobertaModel, ("roberta", "cls"): tf.RobertaForSequenceClassification}
    cls = classes[(fam, kind)]
    n = default_n if spec.seq_len is None else spec.seq_len
    if fam != "hf_vit":
        max_pos = (HFRobertaAdapter.max_positions(cfg) if fam == "roberta" else cfg.max_position_embeddings)
        check_seq_len(spec.name, n, max_pos)          # before building weights
    dev = torch.device(device)
    if spec.checkpoint and dev.type != "meta":
        model = cls.from_pretrained(spec.checkpoint, config=cfg, local_files_only=True)
    else:
        torch.manual_seed(spec.seed)
        model = cls(cfg)
    model = model.to(dev).eval()
    if fam == "hf_vit":
        return HFViTAdapter(model, spec.name)
    return (HFDistilBertAdapter if fam == "distilbert" else HFRobertaAdapter)(model, spec.name, n, spec.lengths)


@register_family("hf_vit", match=lambda name: _family(name) == "hf_vit", tiny=ModelSpec("hf-vit-tiny-cls"))
def build_hf_vit(spec: ModelSpec, device="cpu") -> HFViTAdapter:
    return _build(spec, device, "hf_vit")


@register_family("distilbert", match=lambda name: _family(name) == "distilbert",
                 tiny=ModelSpec("distilbert-tiny-cls", seq_len=24))
def build_distilbert(spec: ModelSpec, device="cpu") -> HFDistilBertAdapter:
    return _build(spec, device, "distilbert")


@register_family("roberta", match=lambda name: _family(name) == "roberta",
                 tiny=ModelSpec("roberta-tiny-cls", seq_len=24))
def build_roberta(spec: ModelSpec, device="cpu") -> HFRobertaAdapter:
    return _build(spec, device, "roberta")
