"""Train a small ViT on scikit-learn's digits, in-process, and ship its weights.

    python benchmarks/train_vit_digits.py   # -> data/fidelity/vit_digits.safetensors (+ .json)

8x8 digits (0..16) are scaled to [0, 1], upsampled to 32x32 (bilinear), repeated to 3
channels and normalised to [-1, 1]; the model is timm `test_vit` (d = 64, 2 heads) with
img_size 32, patch 4 (N = 64 patches + CLS = 65 tokens), depth 4, 10 classes, built by
the runtime's own ModelSpec so the same flags load it:
    python -m runtime run --model test_vit --img-size 32 --patch-size 4 --depth 4 \
        --num-classes 10 --checkpoint data/fidelity/vit_digits.safetensors ...
Split: train_test_split(test_size=0.25, stratify, random_state=0). A few minutes on
one or two CPU threads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "fidelity")
SPEC = dict(name="test_vit", img_size=32, patch_size=4, depth=4, num_classes=10)


def digits_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): runtime.train.tasks.digits_split, the one
    definition of the data the fine-tuning task and the fidelity benchmark also read."""
    from runtime.train.tasks import digits_split as split

    return split(seed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    argv = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from runtime.models import ModelSpec, build_adapter

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr, xte, yte = digits_split(a.seed)
    model = build_adapter(ModelSpec(**SPEC, seed=a.seed)).model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = a.epochs * ((len(xtr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    for ep in range(a.epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            b = perm[i:i + 64]
            xb = xtr[b]
            # random shifts of up to 1 px: cheap augmentation for a tiny data set
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if ep % 5 == 4 or ep == a.epochs - 1:
            model.eval()
            with torch.no_grad():
                acc = (model(xte).argmax(1) == yte).float().mean().item()
            model.train()
            print(f"epoch {ep + 1}: loss {loss.item():.3f} test acc {acc:.4f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr)
    model.eval()
    with torch.no_grad():
        acc_te = (model(xte).argmax(1) == yte).float().mean().item()
        acc_tr = (model(xtr).argmax(1) == ytr).float().mean().item()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "vit_digits.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    meta = {"schema_version": 1, "command": " ".join(["python", "benchmarks/train_vit_digits.py", *argv]),
            "weights": "vit_digits.safetensors", "spec": SPEC,
            "data": "sklearn.datasets.load_digits, 8x8 -> 32x32 bilinear, 3 channels, (x-0.5)/0.5",
            "split": {"test_size": 0.25, "stratify": True, "random_state": a.seed,
                      "n_train": len(xtr), "n_test": len(xte)},
            "train": {"epochs": a.epochs, "batch": 64, "optimizer": "AdamW lr 3e-3 wd 0.05, one-cycle (15 % warm-up)",
                      "augment": "random roll up to 1 px", "seconds": round(time.time() - t0, 1),
                      "threads": a.threads, "seed": a.seed},
            "accuracy": {"train": acc_tr, "test": acc_te}}
    with open(os.path.join(OUT, "vit_digits.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps(meta["accuracy"]))


if __name__ == "__main__":
    main()
