"""CoFormer on the digits ViT at P = 2: accuracy exact vs coformer (k = 1, 2, 4 = depth),
before and after calibration, on real GLOO ranks.

    python benchmarks/fidelity_coformer.py            # calibrate k = 2, 4; -> data/fidelity/coformer_vit_digits.json
    python benchmarks/fidelity_coformer.py --shipped  # evaluate the shipped weights only

Model: data/fidelity/vit_digits.safetensors (timm test_vit, img 32, patch 4, depth 4,
d 64, 2 heads, d_ff 192, N = 65). Calibration (runtime/parallel/coformer_calib.py) on
the 1347 training images (benchmarks/train_vit_digits.py's split, distillation from the
parent, no labels), saved to data/fidelity/coformer/vit_digits_p2_k{k}.safetensors +
.json card. Evaluation: the 450 held-out images as one batch through each strategy on 2
GLOO ranks (benchmarks/fidelity_common.py); `agreement` = predictions equal to the exact
model's; bytes per image from the plan (== what the ranks sent, tested).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from fidelity_common import DATA, ROOT, command, environment, run_on_ranks, save_table

CAL_DIR = os.path.join(DATA, "coformer")
KS = (2, 4)


def weights_path(k: int, world: int = 2) -> str:
    return os.path.join(CAL_DIR, f"vit_digits_p{world}_k{k}.safetensors")


def _adapter():
    from runtime.models import ModelSpec, build_adapter
    from train_vit_digits import SPEC

    return build_adapter(ModelSpec(**SPEC, checkpoint=os.path.join(DATA, "vit_digits.safetensors")))


def _rank(rank, world, grid):
    import torch

    from runtime.parallel import DistContext, create_strategy
    from train_vit_digits import digits_split

    ad = _adapter()
    _, _, x, y = digits_split(0)
    out = []
    with torch.inference_mode():
        ref = ad.reference(x)[0].argmax(1)
        for label, sname, opts in grid:
            run = create_strategy(sname, **opts).apply(ad, DistContext(rank, world), len(x))
            res = run(x)
            if rank == 0:
                pred = res.logits.argmax(1)
                out.append({"setting": label, "strategy": sname,
                            **{k: (os.path.relpath(v, ROOT) if k == "weights" else v)
                               for k, v in opts.items()},
                            "k": getattr(run.plan, "k", None), "n_exchanges": run.plan.n_exchanges,
                            "calibrated": "weights" in opts,
                            "accuracy": round((pred == y).float().mean().item(), 4),
                            "agreement": round((pred == ref).float().mean().item(), 4),
                            "comm_bytes_per_image": res.timing["totals"]["comm_bytes"] // len(x),
                            "formula_bytes_per_image": run.plan.comm_bytes(0) // len(x)})
        if rank == 0:
            out.insert(0, {"setting": "exact", "strategy": "single",
                           "accuracy": round((ref == y).float().mean().item(), 4), "agreement": 1.0})
    return out if rank == 0 else None


def calibrate_all(ks, world: int, steps: int, final_steps: int, threads: int) -> dict:
    import torch

    from runtime.parallel.coformer_calib import calibrate
    from train_vit_digits import digits_split

    torch.set_num_threads(threads)
    ad = _adapter()
    xtr, _, _, _ = digits_split(0)
    info = {}
    for k in ks:
        t0 = time.time()
        cal = calibrate(ad, world, k, data=xtr, steps=steps, final_steps=final_steps, seed=0,
                        data_name="sklearn digits, train split of benchmarks/train_vit_digits.py "
                                  "(train_test_split test_size=0.25, stratify, random_state=0), no labels",
                        parent="data/fidelity/vit_digits.safetensors", progress=True)
        cal.save(weights_path(k, world))
        info[k] = {"seconds": round(time.time() - t0, 1), "threads": threads, "losses": cal.losses}
        print(f"k={k}: calibrated in {info[k]['seconds']} s", file=sys.stderr)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shipped", action="store_true", help="evaluate the shipped weights, do not calibrate")
    ap.add_argument("--steps", type=int, default=150, help="calibration steps per block")
    ap.add_argument("--final-steps", type=int, default=300, help="end-to-end calibration steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="coformer_vit_digits.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(argv)
    world = 2
    cal = {} if a.shipped else calibrate_all(KS, world, a.steps, a.final_steps, a.threads)
    grid = [("tensor_parallel", "tensor_parallel", {}), ("coformer k=1", "coformer", {"k": 1})]
    for k in KS:
        grid += [(f"coformer k={k} contiguous", "coformer", {"k": k, "assign": "contiguous"}),
                 (f"coformer k={k} importance", "coformer", {"k": k}),
                 (f"coformer k={k} calibrated", "coformer", {"weights": weights_path(k, world)})]
    rows = [{"world_size": world, **r} for r in run_on_ranks(_rank, world, grid)]
    for r in rows:
        print(r, file=sys.stderr)
    # the cards carry the accuracy of their own weights, before and after
    import json
    acc = {r["setting"]: r["accuracy"] for r in rows}
    cards = {}
    for k in KS:
        path = os.path.splitext(weights_path(k, world))[0] + ".json"
        card = json.load(open(path))
        card["accuracy"] = {"test_images": 450, "exact": acc["exact"],
                            "before_calibration": acc[f"coformer k={k} importance"],
                            "after_calibration": acc[f"coformer k={k} calibrated"]}
        cards[str(k)] = {"weights": os.path.relpath(weights_path(k, world), ROOT), **card["calibration"]}
        with open(path, "w") as f:
            json.dump(card, f, indent=1)
            f.write("\n")
    print(save_table(a.out, {
        "benchmark": "fidelity_coformer", "model": "timm test_vit, img 32, patch 4, depth 4, "
        "trained on sklearn digits (data/fidelity/vit_digits.json)", "seq_len": 65, "world_size": world,
        "test_images": 450, "exchange": "real GLOO ranks (ring all-reduce, loopback)",
        "calibrated_this_run": bool(cal),
        "weights_command": "python benchmarks/fidelity_coformer.py (calibrates, then evaluates)",
        "calibration": cards,
        "environment": environment(), "rows": rows}, command=command(__file__, argv)))


if __name__ == "__main__":
    main()
