"""Fine-tuned weights: a JSON card naming its base model, and the trained tensors.

A card (written by runtime/train/finetune.py, schema_version 1) holds `base.spec`, the
ModelSpec of the model it was trained from (its own `checkpoint`, if any, relative to
the card's folder), and `weights`, a safetensors file beside the card with the tensors
that training changed. `--checkpoint CARD.json` anywhere a model is built loads the base
model, then those tensors: every name must exist in the base with the same shape.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch

SCHEMA_VERSION = 1


def is_card(path) -> bool:
    return bool(path) and str(path).endswith(".json")


def read_card(path: str) -> dict:
    """A fine-tune card, checked (ValueError in one line otherwise)."""
    try:
        with open(path) as f:
            card = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"fine-tune card {path!r} cannot be read: {e}") from None
    if (not isinstance(card, dict) or card.get("schema_version") != SCHEMA_VERSION
            or not isinstance(card.get("weights"), str) or not isinstance(card.get("base"), dict)):
        raise ValueError(f"{path!r} is not a prism-edge fine-tune card (schema_version "
                         f"{SCHEMA_VERSION} with base and weights)")
    return card


def apply_card(model: torch.nn.Module, card_path: str) -> dict:
    """Copy a card's trained tensors into `model`; returns the card."""
    from safetensors.torch import load_file

    card = read_card(card_path)
    wpath = os.path.join(os.path.dirname(os.path.abspath(card_path)), card["weights"])
    if not os.path.isfile(wpath):
        raise ValueError(f"fine-tune card {card_path!r}: its weights {wpath!r} do not exist")
    sd = load_file(wpath)
    own = dict(model.named_parameters())
    bad = [k for k, v in sd.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{wpath!r} does not fit the base model {card['base'].get('spec', {}).get('name')!r}: "
                         f"{bad[:3]} missing or of another shape")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v.to(own[k].dtype))
    return card


def base_spec(spec, card_path: str):
    """The ModelSpec to build before applying the card: the card's base spec (its
    checkpoint resolved against the card's folder); `spec` may only agree with it (same
    name) and choose seq_len (text models run any length)."""
    ModelSpec = type(spec)
    card = read_card(card_path)
    base = dict(card["base"].get("spec") or {})
    if not base.get("name"):
        raise ValueError(f"fine-tune card {card_path!r} names no base model spec")
    if spec.name != base["name"]:
        raise ValueError(f"--checkpoint {card_path!r} fine-tunes {base['name']!r}, not {spec.name!r}; "
                         f"use --model {base['name']}")
    names = {f.name for f in dataclasses.fields(ModelSpec)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in base.items() if k in names}
    if kw.get("checkpoint"):
        kw["checkpoint"] = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(card_path)),
                                                         kw["checkpoint"]))
    for k in ("img_size", "patch_size", "depth", "num_classes"):
        if getattr(spec, k) is not None and getattr(spec, k) != kw.get(k):
            raise ValueError(f"--{k.replace('_', '-')} {getattr(spec, k)}: the card {card_path!r} fine-tunes "
                             f"{base['name']} with {k}={kw.get(k)}; leave it out or give {kw.get(k)}")
    if spec.seq_len is not None:
        kw["seq_len"] = spec.seq_len
    return ModelSpec(**kw)


def spec_record(spec, card_dir: str) -> dict:
    """`spec` as a card's base.spec, its checkpoint relative to the card's folder."""
    d = {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}
    if d.get("checkpoint"):
        d["checkpoint"] = os.path.relpath(os.path.abspath(d["checkpoint"]), os.path.abspath(card_dir))
    return d
