"""The model-family registry: which adapter builds a model name.

    build_adapter(ModelSpec("vit_tiny_patch16_224"))        # -> TimmViTAdapter
    family_of("bert-base")                                  # -> "bert"
    list_families()                                         # -> ["bert", "gpt2", "vit"]

A family registers a builder(spec, device) and a matcher(name) -> bool with
`register_family(name, match=...)`; families are tried in registration order, and the
one registered without a matcher (the timm ViTs) is the fallback. Adding a family
is one module that calls `register_family` (and an import in models/__init__.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a timm name plus overrides, all following from `seed`."""

    name: str
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    num_classes: Optional[int] = None
    depth: Optional[int] = None
    checkpoint: Optional[str] = None
    seed: int = 0
    seq_len: Optional[int] = None        # text models: tokens N
    lengths: Optional[tuple] = None      # text models: valid tokens per sample (padding)

    def kwargs(self) -> dict:
        kw = {}
        for k in ("img_size", "patch_size", "num_classes", "depth"):
            v = getattr(self, k)
            if v is not None:
                kw[k] = v
        return kw


_FAMILIES: dict = {}      # name -> (builder, matcher or None), in registration order


_TINY: dict = {}          # name -> a small ModelSpec of the family, for tests


def register_family(name: str, *, match: Optional[Callable[[str], bool]] = None,
                    tiny: Optional[ModelSpec] = None):
    """Register builder(spec, device) for the model names `match` accepts. The one family
    registered without a matcher is the fallback (timm ViTs: timm validates the name).
    tiny: a small random-weight model of the family; tests parametrised over the
    registry run every strategy on it (timm's test_* variants play the same part)."""
    def deco(fn):
        if name in _FAMILIES:
            raise ValueError(f"model family {name!r} is already registered")
        if match is None and any(m is None for _, m in _FAMILIES.values()):
            raise ValueError(f"model family {name!r}: a fallback family is already registered")
        _FAMILIES[name] = (fn, match)
        if tiny is not None:
            _TINY[name] = tiny
        return fn
    return deco


def tiny_spec(family: str) -> ModelSpec:
    """The small test model a family registered (ValueError naming those that did)."""
    if family not in _TINY:
        raise ValueError(f"model family {family!r} registered no tiny model; those that did: {sorted(_TINY)}")
    return _TINY[family]


def list_families() -> list:
    return sorted(_FAMILIES)


def family_of(name: str) -> str:
    """The family that builds `name` ("vit", "bert", "gpt2", ...)."""
    for fam, (_, match) in _FAMILIES.items():
        if match is not None and match(name):
            return fam
    for fam, (_, match) in _FAMILIES.items():
        if match is None:
            return fam
    raise ValueError(f"no model family builds {name!r}; families: {list_families()}")


def load_state_dict(path: str) -> dict:
    """Load weights without pickle: safetensors, or torch.load(weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    from ..errors import UsageError

    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(p))
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the refusal (weights_only) or a corrupt file: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        why = ("it holds objects other than tensors, which weights_only=True refuses (no pickle "
               "is executed); save a plain state dict or .safetensors"
               if "weights_only" in str(e) or "Unpickl" in type(e).__name__ else first)
        raise UsageError(f"checkpoint {path!r} cannot be loaded: {why}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def build_adapter(spec: ModelSpec, device="cpu"):
    """Create the plain model for `spec` (weights follow from spec.seed) and wrap it.
    A checkpoint ending in .json is a fine-tune card (models/cards.py): its base model
    is built, then the card's trained tensors are loaded into it."""
    if spec.checkpoint and str(spec.checkpoint).endswith(".json"):
        from .cards import apply_card, base_spec

        base = base_spec(spec, spec.checkpoint)
        if str(device) == "meta":
            base = shape_spec(base)
        ad = _FAMILIES[family_of(base.name)][0](base, device)
        if str(device) != "meta":
            apply_card(ad.model, spec.checkpoint)
        return ad
    return _FAMILIES[family_of(spec.name)][0](spec, device)


def n_tokens(spec: ModelSpec) -> int:
    """Token count of a spec without building weights (meta device)."""
    with torch.device("meta"):
        ad = build_adapter(shape_spec(spec), device="meta")
    return ad.seq_len


def shape_spec(spec: ModelSpec) -> ModelSpec:
    """The spec to build on the meta device for shapes: a ViT drops its weights file;
    text families keep their checkpoint folder (only its config.json is read there)."""
    if spec.checkpoint and str(spec.checkpoint).endswith(".json"):
        return spec                # a fine-tune card: its base is built on meta (weights not read)
    if family_of(spec.name) != "vit":
        return spec
    return ModelSpec(**{**spec.__dict__, "checkpoint": None})
