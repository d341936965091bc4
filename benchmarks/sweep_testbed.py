"""The shipped data sweep on this machine's emulated network (issue 3).

    python benchmarks/sweep_testbed.py --dry-run           # commands and configuration counts
    python benchmarks/sweep_testbed.py --estimate          # short timed subset -> duration estimate
    python benchmarks/sweep_testbed.py                     # the full sweep (run on a quiet machine)
    python benchmarks/sweep_testbed.py --only p2           # one part; re-running resumes

Parts (each one `python -m runtime profile` call, resumable from its raw JSONL in
out/sweeps/; the perf maps go to data/perfmaps/):
  p2: vit_tiny and vit_small, P=2, batch {1,2,4,8,16,32}, bw {200,300,500,700,900} Mbit/s,
      cr {3.3,4.95,9.9} + voltage + single, img {96,160,224} -> seq_len {37,101,197}
  p3: the same models, P=3 (a subset: batch {1,4,16}, bw {200,500,900}, img {96,224}),
      voltage and prism only (single is in p2). On a 2-core host P=3 shares cores: the
      perf map says so (cluster.devices, link_emulation.cores_shared).
  p2a: vit_tiny's part of p2 again with adaptive repeats (at least 5, up to 25, until the
      median's robust relative standard error is <= 1.5 %, at most 10 s of repeats per
      configuration): the measurement-protocol A/B behind the cost-model accuracy (issue 4).
  p2m: vit_tiny's part of p2 a third time, as 36 passes over the whole grid (5 repeats
      each; a record's median = the median of its passes' medians) with a host check
      before and after: does spreading repeats over time beat repeating in one burst?
      (issue 4; run with 3 passes, then resumed with 6, 10, 20 and 36: each resumption
      measured only the new passes, ~7-7.7 min per pass)
  tp3: tensor_parallel and galaxy at P=3 (vit_tiny, the p3 subset): checks the cost
      model's message-step count 2(P-1) out of sample (P=3 shares the 2 cores).
  tp: the head/column-split baselines (issue 8): tensor_parallel and galaxy, the same
      models, P=2, batch {1,2,4,8,16}, bw {200,...,900}, img {96,160,224}. Batch 32 is
      left out: tensor_parallel sends 4x Voltage's bytes, ~9 s a pass at 200 Mbit/s.

Timings are only worth shipping from a quiet machine: nothing else running, the sweep
alone on its cores. The estimate fits per-model compute throughput (GFLOP/s per core)
and the per-launch overhead on a small timed subset, then adds the analytical
compute (costmodel.formulas FLOPs) and wire time (bytes / measured bw) of every
configuration of the full sweep.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224")
PARTS = {
    "p2": dict(strategy="single,voltage,prism", batch="1,2,4,8,16,32", bw="200,300,500,700,900",
               cr="3.3,4.95,9.9", img_size="96,160,224", world_size="2"),
    "p3": dict(strategy="voltage,prism", batch="1,4,16", bw="200,500,900",
               cr="3.3,4.95,9.9", img_size="96,224", world_size="3"),
    "p2a": dict(model="vit_tiny_patch16_224", strategy="single,voltage,prism", batch="1,2,4,8,16,32",
                bw="200,300,500,700,900", cr="3.3,4.95,9.9", img_size="96,160,224", world_size="2",
                max_repeats="25", target_se="0.015", repeat_budget="10"),
    "p2m": dict(model="vit_tiny_patch16_224", strategy="single,voltage,prism", batch="1,2,4,8,16,32",
                bw="200,300,500,700,900", cr="3.3,4.95,9.9", img_size="96,160,224", world_size="2",
                passes="36", host_check=True),
    "tp3": dict(model="vit_tiny_patch16_224", strategy="tensor_parallel,galaxy", batch="1,4,16",
                bw="200,500,900", cr="9.9", img_size="96,224", world_size="3"),
    "tp": dict(strategy="tensor_parallel,galaxy", batch="1,2,4,8,16", bw="200,300,500,700,900",
               cr="9.9", img_size="96,160,224", world_size="2"),
}
PROTOCOL = dict(warmup="1", repeats="5")


def part_args(name: str, out_dir: str, raw_dir: str, models=MODELS, **over) -> list:
    ax = {**PARTS[name], **PROTOCOL, **over}
    args = ["profile", "--model", ax.pop("model", ",".join(models))]
    for k, v in ax.items():
        args += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
    args += ["--out", os.path.join(out_dir, f"testbed_vit_{name}.json"),
             "--raw", os.path.join(raw_dir, f"testbed_vit_{name}.raw.jsonl")]
    return args


def spec_of(args: list):
    from runtime.cli import main  # noqa: F401 - registers the commands
    from runtime.measure.driver import add_args as add_profile_args, spec_from_args

    ap = argparse.ArgumentParser()
    add_profile_args(ap)
    return spec_from_args(ap.parse_args(args[1:]))


def run_part(args: list) -> dict:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "runtime", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: profile exited with {p.returncode}")
    res = json.loads(p.stdout)
    res["wall_s"] = time.monotonic() - t0
    return res


# --------------------------------------------------------------------------- estimate

def _config_cost(c, spec, gflops: dict, bw_eff: float) -> float:
    """Seconds to measure one configuration: (warmup + repeats) passes of the slowest
    rank's compute at the fitted rate plus its wire time at the measured rate."""
    from costmodel.strategies import make_plan
    from runtime.measure.spec import model_shape

    sh = model_shape(spec, c.model, c.img_size)
    p = make_plan(c.strategy, sh, world_size=c.world_size, batch=c.batch, cr=c.cr)
    rate = gflops[c.model] * 1e9
    if c.world_size > 1 and c.world_size > (os.cpu_count() or 1):
        rate *= (os.cpu_count() or 1) / c.world_size          # ranks share cores
    compute = p.max_flops() / rate
    wire = 0.0 if c.bw is None else max(p.comm_bytes(r) for r in range(c.world_size)) * 8 / (c.bw * 1e6 * bw_eff)
    return (spec.warmup + spec.repeats) * (compute + wire)


def estimate(out_dir: str, raw_dir: str) -> dict:
    """Time a small subset of both models, fit GFLOP/s and the launch overhead, predict
    every part of the full sweep."""
    from costmodel.strategies import make_plan
    from costmodel.perfmap import load_perfmap
    from runtime.measure.spec import expand, model_shape

    os.makedirs(raw_dir, exist_ok=True)
    calib = {"strategy": "single,voltage,prism", "batch": "1,4", "bw": "300", "cr": "9.9",
             "img_size": "96,224", "world_size": "2"}
    args = part_args("p2", raw_dir, raw_dir, **calib)
    args[args.index("--out") + 1] = os.path.join(raw_dir, "estimate-subset.json")
    args[args.index("--raw") + 1] = os.path.join(raw_dir, f"estimate-subset-{os.getpid()}.raw.jsonl")
    spec = spec_of(args)
    n_cfg = len(expand(spec))
    t0 = time.monotonic()
    res = run_part(args)
    wall = time.monotonic() - t0
    pm = load_perfmap(args[args.index("--out") + 1])
    gf = {}
    for m in MODELS:
        rates = []
        for r in pm.records:
            if r["model"] == m and r["strategy"] == "single" and not r["error"]:
                sh = model_shape(spec, m, r["img_size"])
                fl = make_plan("single", sh, world_size=1, batch=r["batch"]).flops(0)
                rates.append(fl / (r["latency_ms"]["median"] / 1e3) / 1e9)
        gf[m] = statistics.median(rates)
    bw_eff = statistics.median([c["bw_measured"] / c["bw"] for c in pm.meta["cluster"]["link_checks"]])
    from runtime.measure.spec import Config  # noqa: F401
    predicted_measure = sum(_config_cost(c, spec, gf, bw_eff) for c in expand(spec))
    n_launch = len({c.group for c in expand(spec)})
    n_checks = len({(c.world_size, c.bw) for c in expand(spec) if c.bw is not None})
    overhead_per_launch = max(0.0, (wall - predicted_measure - 2.5 * n_checks) / n_launch)
    out = {"subset": {"configs": n_cfg, "wall_s": round(wall, 1), "launches": n_launch,
                      "gflops_per_core": {k: round(v, 2) for k, v in gf.items()},
                      "bw_efficiency": round(bw_eff, 4),
                      "overhead_per_launch_s": round(overhead_per_launch, 2),
                      "command": "python -m runtime " + " ".join(args)},
           "parts": {}}
    for name in PARTS:
        sp = spec_of(part_args(name, out_dir, raw_dir))
        cs = expand(sp)
        meas = sum(_config_cost(c, sp, gf, bw_eff) for c in cs)
        launches = len({c.group for c in cs})
        checks = len({(c.world_size, c.bw) for c in cs if c.bw is not None})
        total = meas + launches * overhead_per_launch + checks * 2.5 + 5
        out["parts"][name] = {"configs": len(cs), "launches": launches,
                              "estimate_s": round(total, 0), "estimate_min": round(total / 60, 1)}
    out["total_estimate_min"] = round(sum(p["estimate_min"] for p in out["parts"].values()), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(PARTS), action="append", help="run only these parts")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "data", "perfmaps"))
    ap.add_argument("--raw-dir", default=os.path.join(ROOT, "out", "sweeps"))
    ap.add_argument("--dry-run", action="store_true", help="print commands and counts only")
    ap.add_argument("--estimate", action="store_true", help="time a small subset and predict the duration")
    a = ap.parse_args()
    if a.estimate:
        print(json.dumps(estimate(a.out_dir, a.raw_dir), indent=1))
        return 0
    from runtime.measure.spec import expand

    parts = a.only or list(PARTS)
    for name in parts:
        args = part_args(name, a.out_dir, a.raw_dir)
        n = len(expand(spec_of(args)))
        print(f"[{name}] {n} configurations: python -m runtime {' '.join(args)}", file=sys.stderr)
        if not a.dry_run:
            os.makedirs(a.raw_dir, exist_ok=True)
            res = run_part(args)
            print(json.dumps({"part": name, **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
