"""Cost-model benchmark: held-out accuracy, crossovers, adaptive sampling, predict latency.

    python benchmarks/bench_costmodel.py [PERFMAP ...] [--unshaped-bw MBIT] [--synthetic]
                                         [--quick] [--json OUT]
    python benchmarks/bench_costmodel.py --part tp [P2_MAP TP_MAP] [--quick] [--json OUT]

Default: the Jetson paper map (data/perfmaps/jetson_orin_nano_paper.json, unshaped link
assumed 1000 Mbit/s). Any perf map path works (the testbed maps when they land);
`--synthetic` adds a SYNTHETIC map (costmodel.synthetic, labelled as such) to exercise
the axes the Jetson figures lack.

For every axis with >= 2 values (batch, bw, cr, seq_len, world_size): leave one value
out, fit on the rest, predict the held-out rows (costmodel.evaluate.held_out, also
`python -m costmodel evaluate held-out MAP`); median APE, P90 APE and the share
within +-10 % for total latency and each phase, for the hybrid, the calibrated analytical
model alone, and a random forest on raw features (strategy, batch, bw, cr, seq_len,
world_size). Rows an axis does not apply to (single's bw/cr) always stay in training.

`--part tp` (issue 8): tensor_parallel and galaxy. Fits on the merged perf maps
(perfmap.merge_perfmaps; default data/perfmaps/testbed_vit_p2.json +
testbed_vit_tp.json), leaves one value of batch, bw and seq_len out of every strategy
at once, and reports the same table restricted to the tensor_parallel + galaxy rows,
per strategy, and over all rows; plus an ablation of the comm phase on the hybrid (the
one shared link vs TP strategies with their own link parameters vs their own comm and
other).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from costmodel.evaluate import TARGETS, held_out
from costmodel.model import CostModel
from costmodel.perfmap import PerfMap, load_perfmap, merge_perfmaps

REPO = Path(__file__).resolve().parent.parent

JETSON = REPO / "data" / "perfmaps" / "jetson_orin_nano_paper.json"
TP_MAPS = (REPO / "data" / "perfmaps" / "testbed_vit_p2.json", REPO / "data" / "perfmaps" / "testbed_vit_tp.json")
TP_SUBSETS = {"tensor_parallel + galaxy": ("tensor_parallel", "galaxy"), "tensor_parallel": ("tensor_parallel",),
              "galaxy": ("galaxy",), "all strategies": None}


def crossovers(cm: CostModel, *, bw_ref: float, batches, cr: float, seq_len=None) -> dict:
    """Which of single / Prism wins at each batch at bw_ref, and the bw where they cross."""
    from scipy.optimize import brentq

    out = {"bw_ref": bw_ref, "cr": cr, "winner": {}, "bw_crossover": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in batches:
            ps = float(cm.predict(b, bw_ref, cr, strategy="prism", seq_len=seq_len, warn=False)["latency_ms"])
            si = float(cm.predict(b, None, None, strategy="single", seq_len=seq_len, warn=False)["latency_ms"])
            out["winner"][int(b)] = "prism" if ps < si else "single"

            def gap(bw):
                return float(cm.predict(b, bw, cr, strategy="prism", seq_len=seq_len, warn=False)["latency_ms"]) - si
            lo, hi = 20.0, 5000.0
            out["bw_crossover"][int(b)] = brentq(gap, lo, hi) if gap(lo) > 0 > gap(hi) else None
    return out


def timing(fitted: CostModel | None) -> dict:
    """Scalar one-call latency on the shipped default profile; a 100k-configuration
    vectorised call on that profile and on the last model this run fitted."""
    import costmodel

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        costmodel.predict(8, 500, 9.9)                 # load + warm the cache
        t = []
        for _ in range(200):
            t0 = time.perf_counter()
            costmodel.predict(8, 500, 9.9)
            t.append(time.perf_counter() - t0)
        out["scalar_ms_median"] = float(np.median(t) * 1e3)
        rng = np.random.default_rng(0)
        n = 100_000
        args = (rng.integers(1, 33, n), rng.uniform(200, 900, n), rng.choice([3.3, 4.95, 9.9], n))
        strat = rng.choice(np.array(["single", "voltage", "prism"], dtype=object), n)
        for name, cm in (("profile", costmodel.load_profile()), ("fitted", fitted)):
            if cm is None:
                continue
            cm.predict(*args, strategy=strat, warn=False)
            t100 = []
            for _ in range(3):
                t0 = time.perf_counter()
                cm.predict(*args, strategy=strat, warn=False)
                t100.append(time.perf_counter() - t0)
            out[f"vector_100k_s_{name}"] = float(min(t100))
    return out


def _fmt(m):
    if not m or m.get("n", 0) == 0:
        return f"{'-':>6} {'-':>6} {'-':>5}"
    return f"{m['median_ape']:6.1f} {m['p90_ape']:6.1f} {100 * m['within_10pct']:5.0f}"


def print_lovo(name, res):
    print(f"\n== {name}: leave-one-value-out (median APE % | P90 APE % | % within +-10 %)")
    hdr = f"{'axis':<10} {'target':<8} | {'hybrid':^20} | {'analytical':^20} | {'random forest':^20}"
    print(hdr)
    print("-" * len(hdr))
    for ax, r in res.items():
        for t in TARGETS:
            print(f"{ax:<10} {t:<8} | {_fmt(r['hybrid'][t])} | {_fmt(r['analytical'][t])} | {_fmt(r['forest'][t])}")


def print_lovo_subsets(res, subsets, variants=()):
    for sub in subsets:
        print(f"\n== {sub}: leave-one-value-out on the merged map (median APE % | P90 APE % | % within +-10 %)")
        hdr = f"{'axis':<10} {'target':<8} | {'hybrid':^20} | {'analytical':^20} | {'random forest':^20}"
        print(hdr)
        print("-" * len(hdr))
        for ax, r in res.items():
            s = r["subsets"][sub]
            for t in TARGETS:
                print(f"{ax:<10} {t:<8} | {_fmt(s['hybrid'][t])} | {_fmt(s['analytical'][t])} | {_fmt(s['forest'][t])}")
    if variants:
        names = ["hybrid"] + list(variants)
        print("\n== ablation of the comm phase, hybrid, total latency (median | P90 | within 10 %): "
              + "; ".join(f"[{i}] {n}" for i, n in enumerate(["default: one shared link (tp_phases=())"]
                                                              + list(variants))))
        hdr = f"{'rows':<25} {'axis':<8} | " + " | ".join(f"{'[' + str(i) + ']':^20}" for i in range(len(names)))
        print(hdr)
        print("-" * len(hdr))
        for sub in subsets:
            for ax, r in res.items():
                s = r["subsets"][sub]
                print(f"{sub:<25} {ax:<8} | " + " | ".join(_fmt(s[n]["latency"]) for n in names))


TP_VARIANTS = {"own link (tp_phases=('comm',))": {"tp_phases": ("comm",)},
               "own comm and other (tp_phases=('comm', 'other'))": {"tp_phases": ("comm", "other")}}


def run_tp(paths, quick, out):
    """--part tp: held-out error of tensor_parallel / galaxy on the merged maps."""
    pm = merge_perfmaps(*paths)
    rows = pm.usable(breakdown=True)
    n_tp = sum(r["strategy"] in ("tensor_parallel", "galaxy") for r in rows)
    print(f"\n##### merged {' + '.join(Path(p).name for p in paths)}: {len(rows)} usable rows "
          f"({n_tp} tensor_parallel/galaxy), source={pm.source}")
    t0 = time.time()
    res = held_out(pm, unshaped_bw=None, quick=quick, axes=("batch", "bw", "seq_len"), subsets=TP_SUBSETS,
               variants=TP_VARIANTS)
    print_lovo_subsets(res, TP_SUBSETS, TP_VARIANTS)
    print(f"(leave-one-value-out took {time.time() - t0:.0f} s)")
    cm = CostModel().fit(pm)
    out["maps"]["tp"] = {"perfmaps": [str(Path(p).relative_to(REPO)) if Path(p).is_relative_to(REPO) else str(p)
                                      for p in paths],
                         "n_rows": len(rows), "n_tp_rows": n_tp, "lovo": res,
                         "cv": cm.cv_, "physical": cm.physical_parameters()}
    return cm


def run_map(name, pm, unshaped_bw, quick, out):
    print(f"\n##### {name}: {len(pm.usable(breakdown=True))} usable rows, source={pm.source}")
    t0 = time.time()
    res = held_out(pm, unshaped_bw=unshaped_bw, quick=quick)
    print_lovo(name, res)
    print(f"(leave-one-value-out took {time.time() - t0:.0f} s)")
    out["maps"][name] = {"lovo": res}
    cm = CostModel(unshaped_bw=unshaped_bw).fit(pm)
    axes = pm.axes()
    if {"single", "prism"} <= set(axes["strategy"]):
        crs = axes["cr"]
        cr = 9.9 if 9.9 in crs else crs[-1]
        bw_ref = unshaped_bw if unshaped_bw is not None else max(axes["bw"])
        seq = None if len(axes["seq_len"]) <= 1 else sorted(axes["seq_len"])[len(axes["seq_len"]) // 2]
        cx = crossovers(cm, bw_ref=bw_ref, batches=axes["batch"], cr=cr, seq_len=seq)
        out["maps"][name]["crossovers"] = cx
        print(f"\nadaptive crossover at bw={bw_ref:g} Mbit/s, cr={cr:g}"
              + (f", seq_len={seq:g}" if seq else "") + ": "
              + ", ".join(f"b{b}: {w}" for b, w in cx["winner"].items()))
        print("Prism-vs-single bandwidth crossover (Mbit/s) per batch: "
              + ", ".join(f"b{b}: {'-' if v is None else f'{v:.0f}'}" for b, v in cx["bw_crossover"].items()))
    n_rows = len(pm.usable(breakdown=True))
    if n_rows < 40:
        print(f"\nadaptive sampling: skipped, 20 % of {n_rows} configurations is too few rows to fit "
              f"per-strategy parameters")
        return cm
    from costmodel import sampling
    kw = dict(cv_folds=3, residual_estimators=60)
    t0 = time.time()
    ad = sampling.simulate(pm, 0.2, unshaped_bw=unshaped_bw, model_kw=kw)
    rnd = sampling.compare_random(pm, 0.2, unshaped_bw=unshaped_bw, model_kw=kw)
    out["maps"][name]["sampling"] = {"adaptive": ad, "random": rnd}
    print(f"\nadaptive sampling, 20 % of {ad['n_grid']} configurations ({ad['n_profiled']} profiled), "
          f"scored on the rest  [{time.time() - t0:.0f} s]")
    for lab, r in (("adaptive (mixed)", ad["held_out"]), ("random (3 seeds)", rnd["held_out"])):
        da = r.get("decision_accuracy")
        print(f"  {lab:<17} median {r['median_ape']:.1f} %  P90 {r['p90_ape']:.1f} %  "
              f"within10 {100 * r['within_10pct']:.0f} %  decision acc "
              + ("-" if da is None else f"{100 * da:.0f} %"))
    return cm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("perfmaps", nargs="*", help=f"perf map paths (default {JETSON.relative_to(REPO)})")
    ap.add_argument("--unshaped-bw", type=float, default=None,
                    help="Mbit/s for bw-null records (default 1000 for the Jetson paper map)")
    ap.add_argument("--synthetic", action="store_true", help="also run a SYNTHETIC map")
    ap.add_argument("--quick", action="store_true", help="smaller models, fewer folds")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--part", choices=("maps", "tp"), default="maps",
                    help="maps: every PERFMAP (default); tp: tensor_parallel/galaxy on the merged "
                         "P2 + TP maps (PERFMAP ... default " + " + ".join(p.name for p in TP_MAPS) + ")")
    a = ap.parse_args(argv)
    out = {"maps": {}}
    if a.part == "tp":
        out["command"] = "python benchmarks/bench_costmodel.py " + " ".join(argv if argv is not None else sys.argv[1:])
        run_tp(a.perfmaps or [str(p) for p in TP_MAPS], a.quick, out)
        if a.json:
            from costmodel.perfmap import atomic_write_text
            atomic_write_text(a.json, json.dumps(out, indent=1, default=lambda x: None) + "\n")
        return 0
    paths = a.perfmaps or [str(JETSON)]
    cm = None
    for p in paths:
        pm = load_perfmap(p)
        ub = a.unshaped_bw
        if ub is None and any(r.get("bw") is None and r["strategy"] != "single" for r in pm.usable()):
            ub = 1000.0
            print(f"note: {p} has distributed rows with bw null; assuming the unshaped link is {ub:g} Mbit/s",
                  file=sys.stderr)
        cm = run_map(Path(p).name, pm, ub, a.quick, out)
    if a.synthetic:
        from costmodel.synthetic import synthetic_perfmap
        run_map("SYNTHETIC (generated, not measured)", PerfMap.from_dict(synthetic_perfmap()), None, a.quick, out)
    t = timing(cm)
    out["timing"] = t
    print(f"\npredict latency: scalar costmodel.predict() {t['scalar_ms_median']:.2f} ms (median of 200); "
          f"100k configurations vectorised: {t['vector_100k_s_profile']:.2f} s on the shipped profile"
          + (f", {t['vector_100k_s_fitted']:.2f} s on the last fitted map" if "vector_100k_s_fitted" in t else ""))
    if a.json:
        from costmodel.perfmap import atomic_write_text
        atomic_write_text(a.json, json.dumps(out, indent=1, default=lambda x: None) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
