"""Fine-tune the shipped models under Prism and measure them on real GLOO ranks.

    python benchmarks/finetune_prism.py                 # train what is missing, then evaluate
    python benchmarks/finetune_prism.py --eval-only     # evaluate the shipped cards
    -> data/fidelity/finetuned/<model>_p<P>_cr<CR>.{safetensors,json}  (weights + card)
    -> data/fidelity/finetuned_accuracy.json                          (the table)

Training runs `runtime.train.finetune` (the emulated P-partition forward, seeded); the
evaluation runs the fidelity benchmarks' own rank functions on real GLOO ranks, once
with the base weights and once with each card's, so "before" and "after" are measured
side by side by the distributed runtime, scored against the *base* model's exact output.
  - vit_digits: sklearn digits, task loss; P = 2, 4; CR 2, 4, 8; all weights trained.
  - gpt2_bytes: next byte on the stdlib sources, task loss; P = 2; CR 4, 8, 16.
  - minilm: embedding distillation on stdlib docstring sentences (runtime.train.tasks.
    stdlib_sentences; evaluation on data/fidelity/sentences.txt, which they do not
    contain); P = 2; CR 2, 4, 8; key/value projections and norms trained (smaller file).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from fidelity_common import DATA, command, environment, run_on_ranks, save_table

OUT = os.path.join(DATA, "finetuned")
SETTINGS = {
    "vit_digits": dict(task="digits", worlds=(2, 4), crs=(2, 4, 8), steps=900, lr=1e-3, batch=64,
                       trainable="all",
                       spec=dict(name="test_vit", img_size=32, patch_size=4, depth=4, num_classes=10,
                                 checkpoint=os.path.join(DATA, "vit_digits.safetensors"))),
    "gpt2_bytes": dict(task="stdlib-bytes", worlds=(2,), crs=(4, 8, 16), steps=600, lr=1e-3, batch=16,
                       trainable="all",
                       spec=dict(name="gpt2", checkpoint=os.path.join(DATA, "gpt2_bytes"), seq_len=128)),
    "minilm": dict(task="stdlib-text", worlds=(2,), crs=(2, 4, 8), steps=500, lr=2e-4, batch=16,
                   trainable="kv", spec=dict(name="all-minilm-l6-v2", seq_len=128)),
}


def card_path(model: str, world: int, cr) -> str:
    return os.path.join(OUT, f"{model}_p{world}_cr{cr:g}.json")


def train(model: str, world: int, cr, steps=None) -> dict:
    import torch

    from runtime.models import ModelSpec, build_adapter
    from runtime.models.cards import spec_record
    from runtime.train.finetune import finetune

    st = SETTINGS[model]
    spec = ModelSpec(**st["spec"])
    ad = build_adapter(spec)
    torch.set_num_threads(2)
    out = card_path(model, world, cr)[:-len(".json")] + ".safetensors"
    base = {"name": ad.name, "family": ad.family, "key": model, "spec": spec_record(spec, OUT)}
    return finetune(ad, st["task"], world_size=world, options={"cr": cr}, steps=steps or st["steps"],
                    lr=st["lr"], batch=st["batch"], seed=0, trainable=st["trainable"], out=out,
                    base=base)


def evaluate(model: str, world: int, cr, card) -> list:
    """[before, after] rows of one setting, measured on `world` GLOO ranks."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    grid = [("prism", {"cr": cr})]
    rows = []
    for ck in (None, card):
        if model == "vit_digits":
            import fidelity_vit_digits as fv
            r = [x for x in run_on_ranks(fv._rank, world, grid, ck) if x["strategy"] == "prism"][0]
        elif model == "gpt2_bytes":
            import fidelity_gpt2 as fg
            r = [x for x in run_on_ranks(fg._rank, world, grid, ck) if x["strategy"] == "prism"][0]
            r.pop("per_device", None)
        else:
            import fidelity_minilm as fm
            sents, _, groups = fm.sentence_groups()
            r = fm.grid_rows(world, groups, grid, len(sents), ck)[0]
        rows.append({"model": model, "world_size": world, "strategy": "prism", "cr": cr,
                     "finetuned": ck is not None,
                     "card": None if ck is None else os.path.relpath(ck, DATA), **r})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(SETTINGS), help="comma separated: " + ", ".join(SETTINGS))
    ap.add_argument("--eval-only", action="store_true", help="evaluate the existing cards, train nothing")
    ap.add_argument("--retrain", action="store_true", help="train even where a card exists")
    ap.add_argument("--steps", type=int, help="override the steps (smoke tests)")
    ap.add_argument("--out", default="finetuned_accuracy.json")
    a = ap.parse_args(argv)
    models = a.models.split(",")
    bad = [m for m in models if m not in SETTINGS]
    if bad:
        ap.error(f"unknown model(s) {bad}; allowed: {', '.join(SETTINGS)}")
    import json

    rows, cards = [], {}
    for m in models:
        for w in SETTINGS[m]["worlds"]:
            for cr in SETTINGS[m]["crs"]:
                path = card_path(m, w, cr)
                if not a.eval_only and (a.retrain or not os.path.isfile(path)):
                    t0 = time.time()
                    c = train(m, w, cr, a.steps)
                    print(f"{m} P={w} CR={cr}: {c['metric']} {c['before'][c['metric']]:.4f} -> "
                          f"{c['after'][c['metric']]:.4f} ({time.time() - t0:.0f} s)", file=sys.stderr)
                if os.path.isfile(path):
                    with open(path) as f:
                        cards[(m, w, cr)] = json.load(f)
                    rows += evaluate(m, w, cr, path)
                    print(rows[-2:], file=sys.stderr)
    train_s = {f"{m}_p{w}_cr{cr:g}": c["train"]["seconds"] for (m, w, cr), c in cards.items()}
    print(save_table(a.out, {
        "benchmark": "finetune_prism", "models": {m: SETTINGS[m]["task"] for m in models},
        "exchange": "real GLOO ranks (pairwise, loopback); before = base weights, after = the card's",
        "train_seconds": train_s, "environment": environment(), "rows": rows},
        command=command(__file__, argv)))


if __name__ == "__main__":
    main()
