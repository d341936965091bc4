"""Train a tiny byte-level GPT-2 on text shipped with the interpreter, and ship it.

    python benchmarks/train_gpt2_tiny.py  # -> data/fidelity/gpt2_bytes/ (config.json, model.safetensors)

Text: the Python standard library's own top-level *.py sources (offline, always there),
sorted by name; every 10th file is held out for evaluation. Tokens are bytes (vocab
256), so no tokenizer download is needed. Model: GPT2LMHeadModel, n_embd 96, 4 layers,
4 heads, 128 positions. Loads with
    python -m runtime run --model gpt2 --checkpoint data/fidelity/gpt2_bytes --seq-len 128 ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "fidelity", "gpt2_bytes")
SEQ = 128


def corpus():
    """(train bytes, eval bytes, eval file names) from the stdlib sources
    (runtime.train.tasks.stdlib_corpus, which the fine-tuning task also reads)."""
    from runtime.train.tasks import stdlib_corpus

    return stdlib_corpus()


def eval_batch(n: int = 64, seed: int = 0):
    """(n, SEQ + 1) byte windows from the held-out files at seeded offsets."""
    from runtime.train.tasks import byte_windows

    return byte_windows(corpus()[1], n, SEQ, seed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    argv = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train, held, names = corpus()
    data = torch.frombuffer(bytearray(train), dtype=torch.uint8).long()
    cfg = GPT2Config(vocab_size=256, n_positions=SEQ, n_embd=96, n_layer=4, n_head=4,
                     bos_token_id=10, eos_token_id=10, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=a.steps)
    ev = eval_batch()
    t0 = time.time()
    for step in range(a.steps):
        s = torch.randint(0, len(data) - SEQ - 1, (a.batch,))
        xb = torch.stack([data[i:i + SEQ + 1] for i in s.tolist()])
        logits = model(xb[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, 256), xb[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 200 == 199 or step == a.steps - 1:
            print(f"step {step + 1}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    model.eval()
    with torch.no_grad():
        lg = model(ev[:, :-1]).logits
        nll = F.cross_entropy(lg.reshape(-1, 256), ev[:, 1:].reshape(-1)).item()
        acc = (lg.argmax(-1) == ev[:, 1:]).float().mean().item()
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    meta = {"schema_version": 1, "command": " ".join(["python", "benchmarks/train_gpt2_tiny.py", *argv]),
            "model": "GPT2LMHeadModel, byte-level (vocab 256)",
            "config": {"n_embd": 96, "n_layer": 4, "n_head": 4, "n_positions": SEQ},
            "data": {"source": "Python stdlib top-level *.py (sorted), every 10th file held out",
                     "python": sys.version.split()[0], "train_bytes": len(train),
                     "heldout_bytes": len(held), "heldout_files": names},
            "train": {"steps": a.steps, "batch": a.batch, "seq_len": SEQ,
                      "optimizer": "AdamW lr 3e-3 wd 0.01, one-cycle, clip 1.0",
                      "seconds": round(time.time() - t0, 1), "threads": a.threads, "seed": a.seed},
            "heldout": {"sequences": len(ev), "nll": nll, "perplexity": float(torch.tensor(nll).exp()),
                        "next_byte_accuracy": acc}}
    with open(os.path.join(os.path.dirname(OUT), "gpt2_bytes.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps(meta["heldout"]))


if __name__ == "__main__":
    main()
