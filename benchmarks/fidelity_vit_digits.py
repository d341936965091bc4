"""Top-1 accuracy vs CR of a ViT trained on scikit-learn digits: exact vs Voltage vs Prism.

    python benchmarks/train_vit_digits.py       # once: data/fidelity/vit_digits.safetensors
    python benchmarks/fidelity_vit_digits.py    # -> data/fidelity/vit_digits_accuracy.json

The held-out split (450 images, N = 65 tokens) runs as one batch through the runtime's
strategies on real GLOO ranks (benchmarks/fidelity_common.py), for P = 2 and 4, every
CR in CRS (m = round(L_p / CR), at least 1), with and without the log(s) bias, and with
both averaged tensors ("output": block input, receivers apply norm1; "ln1": norm1
output). `agreement` = fraction of predictions equal to the exact model's.
"""
from __future__ import annotations

import argparse
import os
import sys

from fidelity_common import DATA, command, environment, prism_grid, run_on_ranks, save_table

CRS = {2: [1, 2, 4, 8, 16, 33], 4: [1, 2, 4, 8, 17]}


def _rank(rank, world, grid, checkpoint=None):
    """`checkpoint`: a fine-tune card; its model runs the grid, the base model is the
    exact reference (accuracy is the card model's own; agreement is with the base)."""
    import torch

    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy
    from train_vit_digits import SPEC
    from runtime.train.tasks import digits_split

    base = build_adapter(ModelSpec(**SPEC, checkpoint=os.path.join(DATA, "vit_digits.safetensors")))
    ad = base if checkpoint is None else build_adapter(ModelSpec(SPEC["name"], checkpoint=checkpoint))
    _, _, x, y = digits_split(0)
    out = []
    with torch.inference_mode():
        ref = base.reference(x)[0].argmax(1)
        for sname, opts in grid:
            ctx = DistContext(rank, world, torch.device("cpu"), "pairwise", None)
            run = create_strategy(sname, **opts).apply(ad, ctx, len(x))
            res = run(x)
            if rank == 0:
                pred = res.logits.argmax(1)
                out.append({"strategy": sname, **opts, "m": run.plan.m, "cr_resolved": run.plan.cr,
                            "accuracy": (pred == y).float().mean().item(),
                            "agreement": (pred == ref).float().mean().item(),
                            "comm_bytes_per_image": run.plan.comm_bytes(0) // len(x)})
        if rank == 0:
            out.insert(0, {"strategy": "exact", "accuracy": (ref == y).float().mean().item(),
                           "agreement": 1.0})
    return out if rank == 0 else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-sizes", default="2,4")
    ap.add_argument("--out", default="vit_digits_accuracy.json")
    a = ap.parse_args(argv)
    rows = []
    for world in [int(w) for w in a.world_sizes.split(",")]:
        for r in run_on_ranks(_rank, world, prism_grid(CRS[world])):
            rows.append({"world_size": world, **r})
            print(rows[-1], file=sys.stderr)
    print(save_table(a.out, {
        "benchmark": "fidelity_vit_digits", "model": "timm test_vit, img 32, patch 4, depth 4, "
        "trained on sklearn digits (data/fidelity/vit_digits.json)", "seq_len": 65,
        "test_images": 450, "exchange": "real GLOO ranks (pairwise, loopback)",
        "environment": environment(), "rows": rows}, command=command(__file__, argv)))


if __name__ == "__main__":
    main()
