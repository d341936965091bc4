"""`prism-edge finetune`: fine-tune a model under Prism (or another emulated strategy).

    prism-edge finetune --model test_vit --img-size 32 --patch-size 4 --depth 4 \\
        --num-classes 10 --checkpoint data/fidelity/vit_digits.safetensors \\
        --task digits --world-size 2 --cr 4 --steps 600 --out out/vit_p2_cr4.safetensors

Writes the trained tensors (safetensors) and a JSON card beside them; prints the card.
Load the result anywhere a model is built with `--checkpoint out/vit_p2_cr4.json`.
"""
from __future__ import annotations

import argparse
import json
import os

from costmodel import checks

from ..errors import UsageError
from ..measure.run import add_strategy_args, strategy_options_from_args
from ..models.registry import ModelSpec
from .tasks import list_tasks


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the base model (as for `run`)")
    p.add_argument("--task", required=True, help=" | ".join(list_tasks()))
    add_strategy_args(p)
    p.add_argument("--world-size", type=checks.arg_count(2), default=2, help="devices P emulated")
    p.add_argument("--steps", type=checks.arg_count(), default=300)
    p.add_argument("--batch", type=checks.arg_count(), default=32)
    p.add_argument("--lr", type=checks.arg_positive(""), default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="data order and initialisation")
    p.add_argument("--trainable", default="all", help="all | attention | norms")
    p.add_argument("--threads", type=checks.arg_count(), default=2, help="torch threads")
    p.add_argument("--img-size", type=checks.arg_count())
    p.add_argument("--patch-size", type=checks.arg_count())
    p.add_argument("--depth", type=checks.arg_count())
    p.add_argument("--num-classes", type=checks.arg_count())
    p.add_argument("--seq-len", type=checks.arg_count(2), help="text models: tokens N")
    p.add_argument("--checkpoint", help="base weights (.safetensors, a from_pretrained folder, or a card)")
    p.add_argument("--out", required=True, help="weights file to write (.safetensors; card: .json beside it)")
    p.add_argument("--no-progress", action="store_true")


def main(a, argv=None) -> int:
    import torch

    from ..models.cards import spec_record
    from ..models.registry import build_adapter
    from ..parallel.base import DistContext, create_strategy, list_strategies, strategy_class
    from .finetune import TRAINABLE, finetune
    from .tasks import get_task

    if a.task not in list_tasks():
        raise UsageError(f"--task {a.task!r}: allowed: {', '.join(list_tasks())}")
    if a.trainable not in TRAINABLE:
        raise UsageError(f"--trainable {a.trainable!r}: allowed: {', '.join(TRAINABLE)}")
    if not a.out.endswith(".safetensors"):
        raise UsageError(f"--out {a.out!r} must end in .safetensors (the card is written beside it as .json)")
    for p in (a.out, a.out[:-len(".safetensors")] + ".json"):
        if os.path.lexists(p) and not os.path.isfile(p):
            raise UsageError(f"--out: {p!r} exists and is not a regular file")
    emulated = [n for n in list_strategies() if getattr(strategy_class(n), "emulated", False)]
    if a.strategy not in emulated:
        raise UsageError(f"--strategy {a.strategy!r}: fine-tuning runs the emulated forward; allowed: "
                         f"{', '.join(emulated)}")
    opts = strategy_options_from_args(a)
    torch.set_num_threads(a.threads)
    spec = ModelSpec(a.model, img_size=a.img_size, patch_size=a.patch_size, depth=a.depth,
                     num_classes=a.num_classes, checkpoint=a.checkpoint, seed=a.seed, seq_len=a.seq_len)
    try:
        strat = create_strategy(a.strategy, **opts)
        ad = build_adapter(spec)
        strat.plan(ad, DistContext(0, a.world_size), 1)     # cr / m within range for this model
        task = get_task(a.task)
        task.check(ad)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if a.strategy == "coformer":
        card = calibrate_coformer(ad, task, a, opts)
        print(json.dumps(card, indent=1))
        return 0
    base = {"name": ad.name, "family": ad.family,
            "spec": spec_record(spec, os.path.dirname(os.path.abspath(a.out)))}
    card = finetune(ad, task, world_size=a.world_size, strategy=a.strategy, options=opts,
                    steps=a.steps, lr=a.lr, batch=a.batch, seed=a.seed, trainable=a.trainable,
                    out=a.out, base=base, progress=not a.no_progress)
    print(json.dumps(card, indent=1))
    return 0


def calibrate_coformer(ad, task, a, opts) -> dict:
    """`finetune --strategy coformer`: CoFormer's sub-models are calibrated
    (runtime/parallel/coformer_calib.py: progressive, then end to end) rather than the
    parent fine-tuned; the task's training inputs are the data, its metric is measured
    before and after through the emulated forward."""
    from ..parallel.coformer_calib import calibrate
    from .finetune import StrategyForward

    inputs = getattr(task, "train_inputs", lambda: None)()
    if inputs is None:
        raise UsageError(f"--strategy coformer calibrates on image inputs; task {a.task!r} has none "
                         "(allowed: digits)")
    if opts.get("weights"):
        raise UsageError("--weights: calibration writes --out; start from the parent's weights")
    before = task.evaluate(StrategyForward(ad, "coformer", a.world_size, opts), ad)
    cal = calibrate(ad, a.world_size, opts.get("k"), opts.get("heads"), opts.get("cols"),
                    steps=a.steps, data=inputs, batch=a.batch, seed=a.seed,
                    assign=opts.get("assign") or "importance", data_name=task.data,
                    parent=a.checkpoint or a.model, progress=not a.no_progress)
    cal.save(a.out)
    after = task.evaluate(StrategyForward(ad, "coformer", a.world_size, {**opts, "weights": a.out}), ad)
    card_path = a.out[:-len(".safetensors")] + ".json"
    with open(card_path) as f:
        card = json.load(f)
    card.update(task=task.name, metric=task.metric, before=before, after=after)
    from costmodel.perfmap import atomic_write_text
    atomic_write_text(card_path, json.dumps(card, indent=1) + "\n")
    return card
