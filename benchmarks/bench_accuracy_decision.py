"""Accuracy-aware decisions: one (batch, bw), three accuracy budgets, and the held-out
error of the accuracy model (costmodel/accuracy.py; docs/accuracy.md).

Latency comes from a shipped cost-model profile (default testbed-vit-p2: ViT-Ti/16
measured on the emulated testbed), accuracy from the fidelity tables in data/fidelity/
(the small models measured there: digits ViT, byte GPT-2, MiniLM, SmolLM2). The
fidelity model is a stand-in for the profiled one: the hook pairs the profile's latency
with the named table's predicted drop. For every fidelity model and every
max_accuracy_drop in 0.5 / 2 / 10 points the table shows the mode chosen, its latency
and its predicted drop; with fine-tuned rows in the tables (data/fidelity/finetuned/)
the same with finetuned=True. Then the leave-one-CR-out error of the interpolation.

    python benchmarks/bench_accuracy_decision.py [--profile testbed-vit-p2] [--batch 32] [--bw 900] [--seq-len 197] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import warnings

BOUNDS = (0.5, 2, 10)
CANDIDATES = [("single", None), ("voltage", None), ("prism", 2.0), ("prism", 3.3), ("prism", 4.95),
              ("prism", 9.9)]


def _fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def decisions(profile: str, batch: int, bw: float, seq_len, world_size: int = 2) -> list:
    import costmodel
    from costmodel.accuracy import default_model
    from costmodel.decision import DecisionTable

    am = default_model()
    cm = costmodel.load_profile(profile)
    rows = []
    for fid in am.models():
        tuned = any(k[0] == fid and k[3] for k in am.series())
        for finetuned in ((False, True) if tuned else (False,)):
            for bound in BOUNDS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = DecisionTable(cm, candidates=CANDIDATES, seq_len=seq_len, world_size=world_size,
                                      batches=[batch], max_accuracy_drop=bound, fidelity=fid,
                                      finetuned=finetuned)
                d = t.choose(batch, bw)
                acc = d["accuracy"][d["mode"]]
                rows.append({"fidelity": fid, "finetuned": finetuned, "max_accuracy_drop": bound,
                             "mode": d["mode"], "latency_ms": d["predicted"][d["mode"]]["latency_ms"],
                             "metric": acc["metric"], "drop": acc["drop"], "basis": acc["basis"],
                             "dropped": sorted(d["dropped"])})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")            # no bound: every candidate, annotated
                t = DecisionTable(cm, candidates=CANDIDATES, seq_len=seq_len, world_size=world_size,
                                  batches=[batch], fidelity=fid, finetuned=finetuned)
            d = t.choose(batch, bw)
            rows[-1]["candidates"] = {lab: {"latency_ms": d["predicted"][lab]["latency_ms"],
                                            **{k: d["accuracy"].get(lab, {}).get(k) for k in ("drop", "basis")}}
                                      for lab in t.labels}
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="testbed-vit-p2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bw", type=float, default=900.0)
    ap.add_argument("--seq-len", type=int, default=197)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from costmodel.accuracy import held_out

    rows = decisions(a.profile, a.batch, a.bw, a.seq_len)
    print(f"## Decisions at batch {a.batch}, {a.bw:g} Mbit/s, P = 2 (latency: profile {a.profile}, "
          f"seq_len {a.seq_len}; accuracy: data/fidelity tables)\n")
    print("| fidelity model (metric) | weights | max_accuracy_drop | mode chosen | latency ms | predicted drop | basis | dropped |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fidelity']} ({r['metric']}) | {'fine-tuned' if r['finetuned'] else 'off-the-shelf'} | "
              f"{r['max_accuracy_drop']:g} | {r['mode']} | {r['latency_ms']:.1f} | {_fmt(r['drop'])} | "
              f"{r['basis']} | {len(r['dropped'])} |")
    print("\n## Every candidate: latency (ms) / predicted drop (points) / basis\n")
    labels = list(next(r for r in rows if "candidates" in r)["candidates"])
    print("| fidelity model | weights | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for r in rows:
        if "candidates" not in r:
            continue
        cells = [f"{c['latency_ms']:.1f} / {_fmt(c['drop'])} / {c['basis'] or 'no data'}"
                 for c in r["candidates"].values()]
        print(f"| {r['fidelity']} | {'fine-tuned' if r['finetuned'] else 'off-the-shelf'} | " + " | ".join(cells) + " |")
    res = {how: held_out(how=how) for how in ("log", "linear")}
    print("\n## Held-out error of the accuracy model (leave one CR out, |error| in points)\n")
    print("| model | metric | n (default variant) | median / max, log CR (default variant) | "
          "median / max, log CR (all variants) | median / max, linear CR (all variants) |")
    print("|---|---|---|---|---|---|")
    for m, s in res["log"]["per_model"].items():
        met = next(r["metric"] for r in res["log"]["rows"] if r["model"] == m)
        d = res["log"]["per_model_default_variant"][m]
        lin = res["linear"]["per_model"][m]
        print(f"| {m} | {met} | {d['n']} | {_fmt(d['median_abs_error'])} / {_fmt(d['max_abs_error'])} | "
              f"{_fmt(s['median_abs_error'])} / {_fmt(s['max_abs_error'])} (n {s['n']}) | "
              f"{_fmt(lin['median_abs_error'])} / {_fmt(lin['max_abs_error'])} |")
    for k, lab in (("fraction_metrics", "fraction metrics (accuracy, cosine)"), ("perplexity", "perplexity")):
        s, lin = res["log"][k], res["linear"][k]
        print(f"| all | {lab} | {s['n']} | - | {_fmt(s['median_abs_error'])} / {_fmt(s['max_abs_error'])} | "
              f"{_fmt(lin['median_abs_error'])} / {_fmt(lin['max_abs_error'])} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"decisions": rows, "held_out": {h: {k: v for k, v in r.items() if k != "rows"}
                                                       for h, r in res.items()}}, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
