"""Predicted vs measured per-device memory (issue 17): activations + buffers.

    .venv/bin/python benchmarks/bench_memory.py [--quick] [--out benchmarks/results/bench_memory.json]

Every registered strategy (coformer included; refusals listed) over ViT-S/16 (depth 2, 3, 4), BERT-base (depth 2, N = 128) and
GPT-2 (depth 2, N = 64) at batch 1, 8, 32 on P = 2 and 3 GLOO ranks (one spawn per P;
single runs on rank 0 of the P = 2 spawn). Each rank: one warm-up forward, then one
forward under runtime.measure.memory.measure_peak (CPU: torch.profiler's [memory]
events; the peak of live tensor bytes during the forward minus those live before it),
against costmodel.memory.memory_breakdown(plan, rank)["activations"] + ["buffers"].
Weights are not in either number (every rank builds the full model; see
runtime/measure/memory.py); weights_used (from the model) vs weights predicted are listed
apart. Prints the table and the median / max relative error.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

MODELS = [("vit_small_patch16_224", 2, None), ("vit_small_patch16_224", 3, None),
          ("vit_small_patch16_224", 4, None), ("bert-base", 2, 128), ("gpt2", 2, 64)]
BATCHES = (1, 8, 32)
OPTS = {"prism": {"cr": 9.9}}


def _rank(rank: int, world_size: int, models, batches) -> list:
    import torch

    from runtime.measure.memory import rank_memory
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy, list_strategies

    rows = []
    for name, depth, seq in models:
        ad = build_adapter(ModelSpec(name, depth=depth, seq_len=seq, seed=0), "cpu")
        for strat in list_strategies():
            single = strat == "single"
            if single and world_size != 2:
                continue
            for b in batches:
                if single and rank != 0:
                    continue
                ctx = DistContext(0, 1, torch.device("cpu")) if single else \
                    DistContext(rank, world_size, torch.device("cpu"))
                try:
                    runner = create_strategy(strat, **OPTS.get(strat, {})).apply(ad, ctx, b)
                except (ValueError, TypeError) as e:
                    rows.append({"model": name, "depth": depth, "strategy": strat, "P": world_size,
                                 "batch": b, "rank": rank, "error": str(e)})
                    continue
                x = ad.make_inputs(b, 0, "cpu")
                with torch.no_grad():
                    res = runner(x)                       # warm-up: lazy buffers, caches
                m = rank_memory(runner, x, ad, res.plan, rank if not single else 0, "cpu")
                rows.append({"model": name, "depth": depth, "seq_len": ad.shape.seq_len,
                             "strategy": strat, "P": 1 if single else world_size, "batch": b,
                             "rank": rank, "measured": m["memory_peak_bytes"],
                             "predicted": m["memory_peak_predicted_bytes"],
                             "weights_used": m["memory"]["weights_used_bytes"],
                             "weights_predicted": m["memory"]["weights_predicted_bytes"]})
                del runner, x, res
    return rows


def main(argv=None) -> int:
    from runtime.launch import spawn_ranks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ViT-S depth 2 only, batch 1 and 8")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "bench_memory.json"))
    a = ap.parse_args(argv)
    models = MODELS[:1] if a.quick else MODELS
    batches = (1, 8) if a.quick else BATCHES
    t0 = time.time()
    rows = []
    for p in (2, 3):
        for per_rank in spawn_ranks(_rank, p, models, batches, timeout_s=300.0):
            rows.extend(per_rank)
    ok = [r for r in rows if "error" not in r and r["predicted"]]
    for r in ok:
        r["rel_err"] = (r["predicted"] - r["measured"]) / r["measured"]
    errs = [abs(r["rel_err"]) for r in ok]
    print(f"{'model':<24}{'L':>2} {'strategy':<16}{'P':>2}{'B':>4}{'rank':>5}"
          f"{'measured MB':>13}{'predicted MB':>14}{'err %':>8}")
    for r in sorted(ok, key=lambda r: (r["model"], r["depth"], r["strategy"], r["P"], r["batch"], r["rank"])):
        print(f"{r['model']:<24}{r['depth']:>2} {r['strategy']:<16}{r['P']:>2}{r['batch']:>4}{r['rank']:>5}"
              f"{r['measured'] / 1e6:>13.2f}{r['predicted'] / 1e6:>14.2f}{100 * r['rel_err']:>8.1f}")
    by = {}
    for r in ok:
        by.setdefault(r["strategy"], []).append(abs(r["rel_err"]))
    summary = {"n": len(ok), "median_abs_rel_err": statistics.median(errs), "max_abs_rel_err": max(errs),
               "per_strategy": {s: {"n": len(v), "median": statistics.median(v), "max": max(v)}
                                for s, v in sorted(by.items())},
               "refused": [r for r in rows if "error" in r], "wall_s": round(time.time() - t0, 1)}
    print(f"\nall: n={len(ok)} median |err| {100 * summary['median_abs_rel_err']:.1f} %, "
          f"max {100 * summary['max_abs_rel_err']:.1f} %  ({summary['wall_s']} s)")
    for s, v in summary["per_strategy"].items():
        print(f"  {s:<16} n={v['n']:>3} median {100 * v['median']:5.1f} %  max {100 * v['max']:5.1f} %")
    for r in summary["refused"]:
        print(f"  refused: {r['model']} {r['strategy']} P={r['P']}: {r['error']}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"command": "python benchmarks/bench_memory.py" + (" --quick" if a.quick else ""),
                   "summary": summary, "rows": rows}, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
