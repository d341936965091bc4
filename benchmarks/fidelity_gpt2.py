"""Next-byte accuracy and perplexity vs CR of a tiny GPT-2 under the partition-aware
causal mask.

    python benchmarks/train_gpt2_tiny.py    # once: data/fidelity/gpt2_bytes/
    python benchmarks/fidelity_gpt2.py      # -> data/fidelity/gpt2_bytes_accuracy.json

64 held-out windows of 128 bytes (Python stdlib sources, see benchmarks/train_gpt2_tiny.py)
run as one batch on real GLOO ranks for P = 2 and 4. Each device computes the logits of
its own positions; rank 0 gathers them. Reported over all 128 x 64 predictions and per
device (device 0 is exact by construction: it sees only its own past). `agreement` =
fraction of argmax predictions equal to the exact model's.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from fidelity_common import DATA, command, environment, prism_grid, run_on_ranks, save_table

CRS = {2: [1, 2, 4, 8, 16, 64], 4: [1, 2, 4, 8, 32]}


def _metrics(logits, tgt, ref_pred, sizes):
    import torch
    import torch.nn.functional as F

    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    nll = nll.view(tgt.shape)
    pred = logits.argmax(-1)
    out = {"nll": nll.mean().item(), "perplexity": math.exp(nll.mean().item()),
           "next_byte_accuracy": (pred == tgt).float().mean().item(),
           "agreement": (pred == ref_pred).float().mean().item(), "per_device": []}
    a = 0
    for s in sizes:
        out["per_device"].append({
            "perplexity": math.exp(nll[:, a:a + s].mean().item()),
            "next_byte_accuracy": (pred[:, a:a + s] == tgt[:, a:a + s]).float().mean().item()})
        a += s
    return out


def _rank(rank, world, grid, checkpoint=None):
    """`checkpoint`: a fine-tune card; its model runs the grid, the base model is the
    exact reference for agreement."""
    import torch

    from runtime.parallel.exchange import gather_rows_to_all
    from runtime.models.hf import TextInputs
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy
    from train_gpt2_tiny import SEQ, eval_batch

    base = build_adapter(ModelSpec("gpt2", checkpoint=os.path.join(DATA, "gpt2_bytes"), seq_len=SEQ))
    ad = base if checkpoint is None else build_adapter(ModelSpec("gpt2", checkpoint=checkpoint, seq_len=SEQ))
    ev = eval_batch()
    x = TextInputs(ev[:, :-1], torch.ones(len(ev), SEQ, dtype=torch.long))
    tgt = ev[:, 1:]
    out = []
    with torch.inference_mode():
        ref = base.reference(x)[0]
        ref_pred = ref.argmax(-1)
        if rank == 0:
            out.append({"strategy": "exact", **_metrics(ref, tgt, ref_pred, [SEQ])})
        for sname, opts in grid:
            ctx = DistContext(rank, world, torch.device("cpu"), "pairwise", None)
            run = create_strategy(sname, **opts).apply(ad, ctx, len(ev))
            res = run(x)
            logits = gather_rows_to_all(res.logits, run.plan.sizes, rank)
            if rank == 0:
                out.append({"strategy": sname, **opts, "m": run.plan.m, "cr_resolved": run.plan.cr,
                            **_metrics(logits, tgt, ref_pred, run.plan.sizes)})
    return out if rank == 0 else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-sizes", default="2,4")
    ap.add_argument("--out", default="gpt2_bytes_accuracy.json")
    a = ap.parse_args(argv)
    rows = []
    for world in [int(w) for w in a.world_sizes.split(",")]:
        for r in run_on_ranks(_rank, world, prism_grid(CRS[world])):
            rows.append({"world_size": world, **r})
            print({k: v for k, v in rows[-1].items() if k != "per_device"}, file=sys.stderr)
    print(save_table(a.out, {
        "benchmark": "fidelity_gpt2", "model": "byte-level GPT2LMHeadModel (data/fidelity/gpt2_bytes.json)",
        "seq_len": 128, "sequences": 64, "mask": "partition-aware causal",
        "exchange": "real GLOO ranks (pairwise, loopback)", "environment": environment(),
        "rows": rows}, command=command(__file__, argv)))


if __name__ == "__main__":
    main()
