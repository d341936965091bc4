"""Decision quality on held-out measured configurations, and the hook's overhead.

For a measured perf map, every situation (model, seq_len, world_size, batch, bw) whose
candidates were all measured is a test case. Situations are split into K folds; for
each fold the cost model and the decision table are built WITHOUT the fold's records
(its distributed records, and the single-device records of its batch sizes), then each
held-out situation is decided and compared with the oracle (the best *measured*
candidate). Reported per objective: share of oracle-correct choices, mean and max
regret (chosen / oracle - 1). Energy uses energy_j where a sensor measured it, else the
labelled estimate energy_est_j (said in the output).

For a map measured in passes (profile --passes K), each latency record also gets the 90 %
bootstrap interval of its median over the passes (costmodel/noise.py). A situation is
*resolvable* when the oracle's interval lies wholly below the runner-up's: the data can
tell them apart. Reported: the share of resolvable situations, oracle-correct among
them, and the share of choices whose measured median lies inside the oracle's interval
(indistinguishable from the oracle in this data).

    python benchmarks/bench_decision.py data/perfmaps/testbed_vit.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

from costmodel.decision import DecisionTable
from costmodel.evaluate import requested_cr as _cr, situations
from costmodel.model import CostModel
from costmodel.noise import record_intervals
from costmodel.perfmap import PerfMap, atomic_write_text, load_perfmap, record_key, record_latency_ms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _energy(r):
    return r.get("energy_j") if r.get("energy_j") is not None else r.get("energy_est_j")


def _spread(r) -> float:
    """The record's own repeat spread above its median: p90 / median - 1."""
    lat = r.get("latency_ms") or {}
    med, p90 = lat.get("median"), lat.get("p90")
    return max(0.0, p90 / med - 1.0) if med and p90 else 0.0


def evaluate(pm: PerfMap, folds: int, seed: int = 0) -> dict:
    crs = sorted({round(_cr(r), 4) for r in pm.usable() if r.get("cr")})
    others = [s for s in ("voltage", "tensor_parallel", "galaxy")
              if any(r["strategy"] == s for r in pm.usable())]
    sits = situations(pm, crs, others)
    keys = sorted(sits)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    res = {"latency": [], "energy": []}
    ci = record_intervals(pm, coverage=0.9)          # {} for a map without passes
    cands = [("single", None)] + [(s, None) for s in others] + [("prism", c) for c in crs]
    for f in range(folds):
        test = [keys[i] for i in order[f::folds]]
        if not test:
            continue
        held = set(test)
        held_batches = {(k[0], k[1], k[3]) for k in test}

        def keep(r):
            if r["strategy"] == "single":
                return (r["model"], r["seq_len"], r["batch"]) not in held_batches
            if r.get("bw") is None:
                return True
            return (r["model"], r["seq_len"], r["world_size"], r["batch"], float(r["bw"])) not in held

        train = PerfMap(meta=pm.meta, records=[r for r in pm.records if keep(r)])
        cm = CostModel().fit(train)
        tables = {}
        for key in test:
            model, seq, P, batch, bw = key
            for obj in ("latency", "energy"):
                tk = (model, seq, P, obj)
                if tk not in tables:
                    tables[tk] = DecisionTable(cm, train, candidates=cands, objective=obj, seq_len=seq,
                                               world_size=P, model_name=model,
                                               batches=sorted({k[3] for k in keys}),
                                               bws=sorted({k[4] for k in keys}))
                d = tables[tk].choose(batch, bw)
                meas = {lab: (record_latency_ms(r) if obj == "latency" else _energy(r))
                        for lab, r in sits[key].items()}
                if any(v is None for v in meas.values()):
                    continue
                best = min(meas, key=meas.get)
                row = {"situation": list(key), "chosen": d["mode"], "oracle": best,
                       "regret": meas[d["mode"]] / meas[best] - 1.0,
                       "oracle_spread": _spread(sits[key][best]), "source": d["source"]}
                ivs = {lab: ci.get(record_key(r)) for lab, r in sits[key].items()}
                if obj == "latency" and all(iv is not None for iv in ivs.values()):
                    second = min((lab for lab in meas if lab != best), key=meas.get)
                    row["resolvable"] = ivs[best][1] < ivs[second][0]
                    row["chosen_in_oracle_interval"] = meas[d["mode"]] <= ivs[best][1]
                res[obj].append(row)
    out = {}
    for obj, rows in res.items():
        if not rows:
            continue
        reg = np.array([r["regret"] for r in rows])
        spread = np.array([r["oracle_spread"] for r in rows])
        out[obj] = {"n": len(rows), "oracle_correct": float(np.mean(reg <= 1e-12)),
                    # a choice whose measured latency lies within the oracle's own repeat
                    # spread (p90 / median) is indistinguishable from it in this data
                    "within_oracle_spread": float(np.mean(reg <= spread)),
                    "mean_regret_pct": float(reg.mean() * 100), "max_regret_pct": float(reg.max() * 100),
                    "rows": rows}
        if all("resolvable" in r for r in rows):
            res_ok = [r["regret"] <= 1e-12 for r in rows if r["resolvable"]]
            out[obj]["resolvable_share"] = float(np.mean([r["resolvable"] for r in rows]))
            out[obj]["oracle_correct_resolvable"] = float(np.mean(res_ok)) if res_ok else None
            out[obj]["within_oracle_interval"] = float(np.mean([r["chosen_in_oracle_interval"] for r in rows]))
    return out


def overhead(pm: PerfMap, n: int = 100_000) -> dict:
    cm = CostModel().fit(pm)
    r0 = pm.usable()[0]
    t = DecisionTable(cm, pm, seq_len=r0["seq_len"], model_name=r0["model"])
    rng = np.random.default_rng(1)
    batches = rng.integers(1, 33, n).tolist()
    bws = rng.uniform(100, 950, n).tolist()
    out = {}
    for name, fn in (("choose_fast", t.choose_fast), ("choose", t.choose)):
        m = n if name == "choose_fast" else n // 10
        ts = np.empty(m)
        for i in range(m):
            t0 = time.perf_counter_ns()
            fn(batches[i], bws[i])
            ts[i] = time.perf_counter_ns() - t0
        out[name] = {"p50_us": float(np.percentile(ts, 50) / 1e3), "p99_us": float(np.percentile(ts, 99) / 1e3),
                     "n": m}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("perfmap", nargs="+")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--merge", action="store_true",
                    help="evaluate the maps as one (perfmap.merge_perfmaps): e.g. p2 + tp for "
                         "decisions with tensor_parallel/galaxy candidates")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_decision.json"))
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    report = {"schema_version": 1, "command": "python benchmarks/bench_decision.py " + " ".join(sys.argv[1:]),
              "maps": {}}
    print(f"{'perf map':<34}{'objective':<10}{'n':>5}{'oracle-correct':>16}{'mean regret':>13}{'max regret':>12}"
          f"{'within spread':>15}")
    maps = [(p, load_perfmap(p)) for p in a.perfmap]
    if a.merge:
        from costmodel.perfmap import merge_perfmaps
        maps = [("+".join(os.path.basename(p)[:-5] for p in a.perfmap), merge_perfmaps(*[m for _, m in maps]))]
    for path, pm in maps:
        ev = evaluate(pm, a.folds)
        energy_src = "measured" if any(r.get("energy_j") is not None for r in pm.usable()) else "estimate (energy_est_j)"
        for obj, v in ev.items():
            lab = obj if obj == "latency" else f"energy*"
            print(f"{os.path.basename(path):<34}{lab:<10}{v['n']:>5}{v['oracle_correct'] * 100:>15.1f}%"
                  f"{v['mean_regret_pct']:>12.2f}%{v['max_regret_pct']:>11.2f}%"
                  f"{v['within_oracle_spread'] * 100:>14.1f}%")
            if "resolvable_share" in v:
                orr = v["oracle_correct_resolvable"]
                print(f"  passes: {v['resolvable_share'] * 100:.1f} % of situations resolvable (oracle's 90 % "
                      f"interval below the runner-up's); oracle-correct among them "
                      f"{'-' if orr is None else f'{orr * 100:.1f} %'}; choice inside the oracle's interval "
                      f"{v['within_oracle_interval'] * 100:.1f} %")
        oh = overhead(pm)
        report["maps"][path] = {"decision": ev, "overhead": oh, "energy_source": energy_src}
        print(f"  * energy objective scored on {energy_src}")
        for k, v in oh.items():
            print(f"  hook {k:<12} p50 {v['p50_us']:.2f} us   p99 {v['p99_us']:.2f} us   (n={v['n']})")
    atomic_write_text(a.out, json.dumps(report, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
