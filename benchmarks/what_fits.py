"""What fits a 6 GB-usable Orin Nano (8 GB unified memory shared with the OS), from the
cost model's memory model (costmodel.memory; torch-free). Prints markdown.

    .venv/bin/python benchmarks/what_fits.py [--budget-gb 6] [--world-size 2]

Per device peak = weights held + live activations + exchange buffers (fused attention,
fp32, no Jetson staging copies), for single (one device), voltage, prism (CR 9.9),
tensor_parallel, galaxy, pipeline and coformer (its default k = depth: one aggregation)
at P devices. ViTs take the image size whose token
count is nearest the target N (N = (img / patch)^2 + 1: 197, 530, 1025); BERT-large has
512 positions (N = 1024 is n/a). Then the CoFormer comparison: GPT2-XL per-device
weights and peaks of every strategy vs single at P = 2, 3, 4 (coformer too).
"""
from __future__ import annotations

import argparse
import math
import sys

from costmodel.formulas import bert_shape, gpt2_shape, vit_shape
from costmodel.memory import memory_breakdown, peak_for
from costmodel.strategies import make_plan

STRATEGIES = ("single", "voltage", "prism", "tensor_parallel", "galaxy", "pipeline", "coformer")
CR = 9.9
NS = (197, 512, 1024)
BATCHES = (1, 8, 32)


def _vit(name, d, heads, layers, patch):
    def make(n):
        g = round(math.sqrt(n - 1))
        return vit_shape(name, img_size=g * patch, patch_size=patch, d=d, heads=heads, n_layers=layers)
    return make


MODELS = {
    "ViT-B/16": _vit("vit_base_patch16", 768, 12, 12, 16),
    "ViT-L/16": _vit("vit_large_patch16", 1024, 16, 24, 16),
    "ViT-H/14": _vit("vit_huge_patch14", 1280, 16, 32, 14),
    "BERT-large": lambda n: None if n > 512 else bert_shape("bert-large", seq_len=n, d=1024, heads=16, n_layers=24),
    "GPT-2 medium": lambda n: gpt2_shape("gpt2-medium", seq_len=n, d=1024, heads=16, n_layers=24),
    "GPT-2 large": lambda n: gpt2_shape("gpt2-large", seq_len=n, d=1280, heads=20, n_layers=36),
    "GPT-2 XL": lambda n: gpt2_shape("gpt2-xl", seq_len=n, d=1600, heads=25, n_layers=48),
}


def peak_gb(strategy, shape, p, batch):
    ws = 1 if strategy == "single" else p
    try:
        peaks = peak_for(strategy, shape, world_size=ws, batch=batch, cr=CR if strategy == "prism" else None)
    except (ValueError, TypeError) as e:
        return None, str(e)
    return max(peaks) / 1e9, None


def fits_table(budget_gb: float, p: int) -> str:
    head = "| model | N | batch | " + " | ".join(f"{s}" for s in STRATEGIES) + " |"
    lines = [head, "|" + "---|" * (3 + len(STRATEGIES))]
    count = {s: 0 for s in STRATEGIES}
    total = 0
    for name, make in MODELS.items():
        for n in NS:
            shape = make(n)
            for b in BATCHES:
                if shape is None:
                    lines.append(f"| {name} | {n} | {b} | " + " | ".join("n/a" for _ in STRATEGIES) + " |")
                    continue
                total += 1
                cells = []
                for s in STRATEGIES:
                    gb, err = peak_gb(s, shape, p, b)
                    if gb is None:
                        cells.append("refused")
                    elif gb <= budget_gb:
                        count[s] += 1
                        cells.append(f"{gb:.2f}")
                    else:
                        cells.append(f"**{gb:.1f} ✗**")
                lines.append(f"| {name} | {shape.seq_len} | {b} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Fits in {budget_gb:g} GB (of {total} model x N x batch cases): " +
                 ", ".join(f"{s} {count[s]}" for s in STRATEGIES) + ".")
    return "\n".join(lines)


def coformer_table() -> str:
    shape = gpt2_shape("gpt2-xl", seq_len=1024, d=1600, heads=25, n_layers=48)
    single = memory_breakdown(make_plan("single", shape, world_size=1, batch=1), 0)
    lines = [f"GPT2-XL (N = 1024, batch 1): single holds {single['weights'] / 1e9:.2f} GB of weights "
             f"(peak {single['peak'] / 1e9:.2f} GB). Largest device vs single:", "",
             "| strategy | P | weights / device GB (max) | vs single | peak / device GB (max) | vs single |",
             "|---|---|---|---|---|---|"]
    for s in ("pipeline", "tensor_parallel", "galaxy", "coformer", "voltage", "prism"):
        for p in (2, 3, 4):
            opts = {"cr": CR} if s == "prism" else {}
            plan = make_plan(s, shape, world_size=p, batch=1, **opts)
            bd = [memory_breakdown(plan, r) for r in range(p)]
            w = max(x["weights"] for x in bd)
            pk = max(x["peak"] for x in bd)
            lines.append(f"| {s} | {p} | {w / 1e9:.2f} | {100 * (w / single['weights'] - 1):+.1f} % | "
                         f"{pk / 1e9:.2f} | {100 * (pk / single['peak'] - 1):+.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-gb", type=float, default=6.0)
    ap.add_argument("--world-size", type=int, default=2)
    a = ap.parse_args(argv)
    print(f"Per-device peak GB (10^9 bytes, fp32, fused attention) at P = {a.world_size} "
          f"(single: one device); **bold ✗**: over the {a.budget_gb:g} GB budget.\n")
    print(fits_table(a.budget_gb, a.world_size))
    print()
    print(coformer_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
