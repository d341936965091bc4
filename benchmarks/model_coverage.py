"""Registry sweep: which timm ViT-family models the runtime partitions, under which strategy.

    python benchmarks/model_coverage.py                 # -> benchmarks/results/model_coverage.json
    python benchmarks/model_coverage.py --sample 40     # a seeded sample of the names

Every timm name matching vit_*, deit*, eva*, beit* (`timm.list_models`, pretrained=False)
is built on the meta device with depth 2 (no weights): the adapter either accepts it or
refuses in one line, grouped here by reason. Each accepted model is then built for real
(random weights from a seed) at a small image (4 patches a side) and depth 2, and run
under every registered strategy on 2 GLOO ranks (one spawn for all models,
runtime.launch.spawn_ranks), single on one: parity with the plain model (final features
and logits, |err| <= 1e-4 x max(1, |ref|)) at the strategy's exact options, and the bytes
each rank hands to its collectives == the formula's.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import sys
import time

PATTERNS = ("vit_*", "deit*", "eva*", "beit*")
DEPTH = 2
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "model_coverage.json")


def names(sample=None, seed=0) -> list:
    import timm

    out = sorted({n for p in PATTERNS for n in timm.list_models(p)})
    if sample and sample < len(out):
        out = sorted(random.Random(seed).sample(out, sample))
    return out


def _reason(msg: str, name: str) -> str:
    """A refusal's reason without the model's name and sizes (for grouping)."""
    msg = msg.replace(repr(name), "M").replace(name, "M").splitlines()[0]
    msg = re.sub(r"^model M: ", "", msg)
    return re.sub(r"\d+", "#", msg)[:160]


def classify(name: str) -> dict:
    """Build on the meta device (depth 2), small image if the model takes one; the
    adapter accepts it or refuses with a reason."""
    import timm
    import torch

    from runtime.models.vit import TimmViTAdapter, unsupported_reason

    row = {"model": name}
    try:
        try:
            with torch.device("meta"):
                m = timm.create_model(name, pretrained=False, depth=DEPTH)
        except Exception as e:  # noqa: BLE001 - depth cannot be reduced: the adapter's verdict at full depth
            with torch.device("meta"):
                m = timm.create_model(name, pretrained=False)
            why = unsupported_reason(m)
            raise ValueError(why or f"not run: timm cannot build it at depth {DEPTH} "
                             f"({str(e).splitlines()[0][:120]})") from None
        pe = getattr(m, "patch_embed", None)
        ps = getattr(pe, "patch_size", None)
        patch = (ps[0] if isinstance(ps, (tuple, list)) else ps) or 16
        kw = {"depth": DEPTH}
        try:
            with torch.device("meta"):
                m = timm.create_model(name, pretrained=False, depth=DEPTH, img_size=4 * patch)
            kw["img_size"] = 4 * patch
        except Exception:  # noqa: BLE001 - a model with a fixed size keeps its default
            pass
        row["kwargs"] = kw
        ad = TimmViTAdapter(m, name)
        row.update(accepted=True, seq_len=ad.seq_len, prefix=ad.prefix, pool=ad.pool, d=ad.shape.d)
    except Exception as e:  # noqa: BLE001 - every refusal or build failure is a table row
        row.update(accepted=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                   reason=_reason(str(e) or type(e).__name__, name))
    return row


def _rank(rank, world, models, strategies):
    import timm
    import torch

    from costmodel.strategies import get_formula
    from runtime.models.vit import TimmViTAdapter
    from runtime.parallel import DistContext, create_strategy, strategy_class

    out = []
    for name, kw in models:
        torch.manual_seed(7)
        t0 = time.perf_counter()
        ad = TimmViTAdapter(timm.create_model(name, pretrained=False, **kw).eval(), name)
        x = ad.make_inputs(2, seed=1)
        with torch.inference_mode():
            ref_l, ref_f = ad.reference(x)
        tol_l, tol_f = 1e-4 * max(1.0, ref_l.abs().max().item()), 1e-4 * max(1.0, ref_f.abs().max().item())
        for st in strategies:
            ws = world if get_formula(st).distributed else 1
            if rank >= ws:
                continue
            row = {"model": name, "strategy": st}
            try:
                opts = strategy_class(st).exact_options(ad.seq_len, ws)
                run = create_strategy(st, **opts).apply(ad, DistContext(rank, ws), 2)
            except ValueError as e:
                out.append({**row, "refused": str(e).splitlines()[0]})
                continue
            res = run(x, features=True)
            fe = (res.features - ref_f).abs().max().item()
            le = None if res.logits is None else (res.logits - ref_l).abs().max().item()
            row.update(feat_err=fe, logit_err=le, bytes=res.timing["totals"]["comm_bytes"],
                       bytes_formula=res.plan.comm_bytes(rank),
                       parity=fe <= tol_f and (le is None or le <= tol_l))
            out.append(row)
        out.append({"model": name, "build_run_s": round(time.perf_counter() - t0, 2)})
    return out


def main(argv=None):
    from runtime.launch import spawn_ranks
    from runtime.parallel import list_strategies

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", type=int, default=None, help="a seeded sample of this many names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--deadline-s", type=float, default=540.0, help="wall-clock bound of the rank run")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = [classify(n) for n in names(a.sample, a.seed)]
    t_meta = time.perf_counter() - t0
    ok = [r for r in rows if r["accepted"]]
    strategies = list_strategies()
    res = spawn_ranks(_rank, 2, [(r["model"], r["kwargs"]) for r in ok], strategies,
                      timeout_s=120, threads=1, deadline_s=a.deadline_s)
    runs = [r for rr in res for r in rr if "strategy" in r]
    per = collections.defaultdict(dict)       # model -> strategy -> "parity" / "FAIL ..." / refusal
    for r in runs:
        cur = per[r["model"]].get(r["strategy"], "parity")
        if "refused" in r:
            verdict = "refused: " + _reason(r["refused"], r["model"])
        elif r["parity"] and r["bytes"] == r["bytes_formula"]:
            verdict = "parity"
        else:
            verdict = f"FAIL feat_err={r['feat_err']:.2e} logit_err={r['logit_err']} bytes={r['bytes']}/{r['bytes_formula']}"
        per[r["model"]][r["strategy"]] = verdict if cur == "parity" else cur
    summary = {st: sum(per[m].get(st) == "parity" for m in per) for st in strategies}
    refusals = collections.Counter(r["reason"] for r in rows if not r["accepted"])
    examples = {}
    for r in rows:
        if not r["accepted"]:
            examples.setdefault(r["reason"], []).append(r["model"])
    st_refusals = collections.Counter(v for m in per for v in per[m].values() if v != "parity")
    table = {
        "benchmark": "model_coverage", "command": " ".join(["python", "benchmarks/model_coverage.py",
                                                            *(sys.argv[1:] if argv is None else argv)]),
        "patterns": list(PATTERNS), "depth": DEPTH, "world_size": 2, "img_size": "4 patches a side",
        "names": len(rows), "accepted": len(ok), "sampled": a.sample is not None,
        "parity_per_strategy": summary,
        "refused_by_reason": [{"reason": k, "count": v, "examples": examples[k][:4]}
                              for k, v in refusals.most_common()],
        "strategy_refusals_or_failures": dict(st_refusals),
        "per_model": {m: per[m] for m in sorted(per)},
        "accepted_by_prefix_and_pool": dict(collections.Counter(
            f"prefix={r['prefix']} pool={r['pool']}" for r in ok)),
        "accepted_models": {r["model"]: {k: r[k] for k in ("seq_len", "prefix", "pool", "d", "kwargs")}
                            for r in ok},
        "refused_models": {r["model"]: r["error"] for r in rows if not r["accepted"]},
        "seconds": {"meta_classify": round(t_meta, 1), "total": round(time.perf_counter() - t0, 1)},
    }
    from costmodel.perfmap import atomic_write_text

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    atomic_write_text(a.out, json.dumps(table, indent=1) + "\n")
    print(json.dumps({k: table[k] for k in ("names", "accepted", "parity_per_strategy",
                                            "accepted_by_prefix_and_pool",
                                            "refused_by_reason", "strategy_refusals_or_failures",
                                            "seconds")}, indent=1))


if __name__ == "__main__":
    main()
