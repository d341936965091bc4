"""Fine-tune a model under an approximating strategy (Prism) so it recovers accuracy.

    from runtime.train.finetune import finetune
    card = finetune(adapter, "digits", world_size=2, options={"cr": 4}, steps=300,
                    out="vit_digits_p2_cr4.safetensors")

The training forward is the emulated P-partition forward (runtime/train/emulate.py:
the strategy's own code with an in-process exchange, differentiable); the teacher is a
frozen copy of the model before training, run exactly. Task loss where the task has
labels (digits, stdlib bytes), distillation toward the teacher otherwise (stdlib text).
Seeded (torch.manual_seed, data order from a seeded generator), one thread pool.
The result: weights as safetensors (only the trained tensors, over the base model the
card names) and a JSON card (schema_version 1) with base model, strategy, P, CR, data,
steps, optimiser, seconds, and the task metric before and after, exact alongside.
`load_finetuned(card)` rebuilds the adapter; `--checkpoint CARD.json` does it on the CLI.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Optional

import torch

from ..parallel.base import create_strategy
from ..models.cards import SCHEMA_VERSION, read_card
from .emulate import EmulatedModel
from .tasks import get_task

TRAINABLE = ("all", "attention", "kv", "norms")


def _adapter_for_len(adapter, n: int):
    """The adapter over the same weights for sequences of n tokens (text tasks batch
    sentences of one length; the partition follows N)."""
    if n == adapter.seq_len:
        return adapter
    return type(adapter)(adapter.model, adapter.name, n)


def prism_m(seq_len: int, world_size: int, cr) -> int:
    """Nominal CR -> means per device for an N-token sequence: m = round(L_p / CR),
    clamped to [1, L_p] (short sentences reach m = 1 before the nominal CR)."""
    lp = -(-seq_len // world_size)
    return max(1, min(lp, int(round(lp / float(cr)))))


class StrategyForward:
    """inputs -> EmulatedOutput under (strategy, options, P), one EmulatedModel per
    sequence length (a nominal `cr` becomes each length's m, prism_m)."""

    def __init__(self, adapter, strategy: str, world_size: int, options: dict):
        self.adapter, self.strategy, self.world, self.options = adapter, strategy, world_size, dict(options)
        create_strategy(strategy, **self.options)          # bad options: one line, now
        self._models: dict = {}

    def _model(self, n: int, batch: int) -> EmulatedModel:
        if n not in self._models:
            ad = _adapter_for_len(self.adapter, n)
            opts = dict(self.options)
            if "cr" in opts and opts["cr"] is not None and self.strategy == "prism":
                opts["m"] = prism_m(n, self.world, opts.pop("cr"))
            self._models[n] = EmulatedModel(ad, self.strategy, self.world, batch=batch, **opts)
        return self._models[n]

    def __call__(self, inputs):
        n = inputs.input_ids.shape[1] if hasattr(inputs, "input_ids") else self.adapter.seq_len
        bsz = (inputs.input_ids if hasattr(inputs, "input_ids") else inputs).shape[0]
        return self._model(n, bsz)(inputs, features=True)

    def close(self):
        for m in self._models.values():
            m.close()


def trainable_parameters(model: torch.nn.Module, which: str) -> dict:
    """name -> parameter to train: all; the attention projections + norms; the key and
    value projections + norms (what reads the exchanged means; a fused qkv counts whole);
    or the norms only. The smaller sets keep a fine-tune's shipped file small."""
    if which not in TRAINABLE:
        raise ValueError(f"unknown trainable set {which!r}; known: {list(TRAINABLE)}")
    out = {}
    for name, p in model.named_parameters():
        low = name.lower()
        is_norm = "norm" in low or "ln_" in low or ".ln" in low
        is_attn = any(k in low for k in ("attn", "attention", "query", "key", "value", "qkv"))
        is_kv = any(k in low for k in (".key.", ".value.", "qkv", "k_proj", "v_proj", "c_attn"))
        if (which == "all" or (which == "norms" and is_norm)
                or (which == "attention" and (is_attn or is_norm)) or (which == "kv" and (is_kv or is_norm))):
            out[name] = p
    return out


def _progress(step: int, steps: int, loss: float, t0: float, every: int) -> None:
    if step % every and step != steps:
        return
    done = int(30 * step / steps)
    rate = (time.time() - t0) / max(1, step)
    print(f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{steps} loss {loss:.4f} "
          f"{rate * (steps - step):5.0f} s left", end="" if step < steps else "\n",
          file=sys.stderr, flush=True)


def finetune(adapter, task, *, world_size: int = 2, strategy: str = "prism",
             options: Optional[dict] = None, steps: int = 200, lr: float = 1e-3,
             batch: int = 32, seed: int = 0, trainable: str = "all", out: Optional[str] = None,
             base: Optional[dict] = None, progress: bool = True, eval_exact: bool = True) -> dict:
    """Fine-tune adapter.model in place under `strategy(**options)` on `world_size`
    emulated ranks; returns the card (also written next to `out` when given)."""
    task = get_task(task) if isinstance(task, str) else task
    task.check(adapter)
    if steps < 1 or batch < 1 or not lr > 0:
        raise ValueError(f"steps ({steps}) and batch ({batch}) must be >= 1 and lr ({lr}) > 0")
    options = dict(options or {})
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    teacher_ad = _rebind(adapter, copy.deepcopy(adapter.model).eval().requires_grad_(False))
    teacher = StrategyForward(teacher_ad, "single", 1, {})
    student = StrategyForward(adapter, strategy, world_size, options)

    before = task.evaluate(student, adapter, teacher)
    exact = task.evaluate(teacher, adapter, teacher) if eval_exact else None
    params = trainable_parameters(adapter.model, trainable)
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    data = task.batches(adapter, batch, gen)
    t0, hist = time.time(), []
    for step in range(1, steps + 1):
        x, y = next(data)
        with torch.no_grad():
            t_out = teacher(x) if task.objective == "distill" else None
        loss = task.loss(student(x), y, t_out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        sched.step()
        hist.append(loss.item())
        if progress:
            _progress(step, steps, sum(hist[-20:]) / len(hist[-20:]), t0, max(1, steps // 50))
    seconds = time.time() - t0
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    after = task.evaluate(student, adapter, teacher)
    student.close()
    teacher.close()
    card = {
        "schema_version": SCHEMA_VERSION, "kind": "prism-edge finetune",
        "base": base or {"name": adapter.name, "family": adapter.family},
        "strategy": strategy, "options": options, "world_size": world_size,
        "task": task.name, "objective": task.objective, "data": task.data, "metric": task.metric,
        "train": {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "trainable": trainable,
                  "optimizer": "AdamW (no weight decay), one-cycle 10 % warm-up, clip 1.0",
                  "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                  "loss_first20": sum(hist[:20]) / len(hist[:20]),
                  "loss_last20": sum(hist[-20:]) / len(hist[-20:])},
        "exact": exact, "before": before, "after": after,
        "weights": None,
    }
    if out:
        card = save_finetuned(adapter.model, params, card, out)
    return card


def _rebind(adapter, model):
    """A second adapter over `model`, a deep copy of adapter.model: the same attributes,
    with every module attribute (and list of modules, e.g. `blocks`) pointing into the
    copy. (A deepcopy of the adapter itself would also copy per-thread state.)"""
    names = {id(m): n for n, m in adapter.model.named_modules()}

    def into_copy(v):
        if isinstance(v, torch.nn.Module) and id(v) in names:
            return model.get_submodule(names[id(v)]) if names[id(v)] else model
        if isinstance(v, list) and v and all(isinstance(x, torch.nn.Module) for x in v):
            return [into_copy(x) for x in v]
        return v

    ad = copy.copy(adapter)
    ad.__dict__ = {k: into_copy(v) for k, v in adapter.__dict__.items()}
    return ad


def save_finetuned(model: torch.nn.Module, params: dict, card: dict, out: str) -> dict:
    """Write the trained tensors (safetensors) at `out` and the card at out's .json;
    refuses to overwrite anything that is not a regular file; atomic writes."""
    from safetensors.torch import save_file

    from costmodel.perfmap import atomic_write_text

    if not out.endswith(".safetensors"):
        raise ValueError(f"--out {out!r}: the weights file must end in .safetensors")
    card_path = out[: -len(".safetensors")] + ".json"
    for p in (out, card_path):
        if os.path.lexists(p) and not os.path.isfile(p):
            raise ValueError(f"{p!r} exists and is not a regular file; refusing to overwrite it")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in params.items()}
    tmp = out + ".tmp"
    save_file(tensors, tmp, metadata={"card": os.path.basename(card_path)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    card = {**card, "weights": os.path.basename(out), "tensors": len(tensors),
            "parameters": int(sum(v.numel() for v in tensors.values()))}
    atomic_write_text(card_path, json.dumps(card, indent=1) + "\n")
    return card


def load_finetuned(card_path: str, device="cpu"):
    """The adapter of a card: its base model built, then the trained tensors."""
    from ..models.registry import ModelSpec, build_adapter

    card = read_card(card_path)
    return build_adapter(ModelSpec(card["base"]["spec"]["name"], checkpoint=card_path), device)
