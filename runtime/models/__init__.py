"""Plain models behind the small adapter surface the strategies use.

registry.py (ModelSpec, register_family, build_adapter), vit.py (timm ViTs), hf.py
(Hugging Face BERT / GPT-2), hf_encoders.py (HF ViT, DistilBERT, RoBERTa), llama.py, masks.py
(padding and causal masks under a partition).
"""
from .registry import (ModelSpec, build_adapter, family_of, list_families, load_state_dict,  # noqa: F401
                       n_tokens, register_family, shape_spec, tiny_spec)
from . import hf, hf_encoders, llama, vit  # noqa: E402,F401  - register their families (transformers loads lazily)

__all__ = ["ModelSpec", "build_adapter", "family_of", "list_families", "load_state_dict",
           "n_tokens", "register_family", "shape_spec", "tiny_spec"]
