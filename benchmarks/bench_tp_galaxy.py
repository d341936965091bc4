"""single vs tensor_parallel vs galaxy vs voltage vs prism on local GLOO ranks (loopback
unless started inside the emulated network), and the planner's uneven split vs the even
split with one device slowed by a CPU quota.

    python benchmarks/bench_tp_galaxy.py table  --model vit_small_patch16_224 --world-size 2,3
    python benchmarks/bench_tp_galaxy.py table  --model bert-base --seq-len 128 --world-size 2
    python benchmarks/bench_tp_galaxy.py hetero --model vit_small_patch16_224 --quotas 0.6,0.3

Latency: median over repeats of the slowest rank's wall time of one forward pass (ranks
start together after a barrier), batch 1, fp32, one thread per rank. Bytes: sent by each
device per pass, as counted at the collectives, next to the formula's
(costmodel.formulas Plan.comm_bytes). Timings on a shared host are only comparable
within one run; say which host and how loaded it was when quoting them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

CONFIGS = [  # (label, strategy, options)
    ("voltage", "voltage", {}),
    ("prism cr=9.9", "prism", {"cr": 9.9}),
    ("tensor_parallel", "tensor_parallel", {}),
    ("tensor_parallel pairwise", "tensor_parallel", {"collective": "pairwise"}),
    ("galaxy tiles=2", "galaxy", {"tiles": 2}),
    ("galaxy tiles=1", "galaxy", {"tiles": 1}),
    ("galaxy no overlap", "galaxy", {"tiles": 1, "overlap": False}),
]


def _spec(a):
    from runtime.models import ModelSpec, family_of

    text = family_of(a.model) != "vit"
    return ModelSpec(a.model, img_size=None if text else a.img_size, depth=a.depth, seed=0,
                     seq_len=a.seq_len if text else None)


def _measure(runner, x, rank, world, warmup, repeats):
    from runtime.measure.timing import timed_repeats

    lat, _, res = timed_repeats(runner, x, warmup=warmup, repeats=repeats, world_size=world)
    tot = res.timing["totals"]  # the last pass's
    return {"latency_ms": lat, "comm_bytes": tot["comm_bytes"], "comm_ms": tot["comm_ms"],
            "compute_ms": tot["compute_ms"], "bytes_formula": res.plan.comm_bytes(rank)}


def _rows(mine_by_rank, label, strategy, opts, partition, world, extra=None):
    from runtime.measure.timing import slowest_rank

    e2e = slowest_rank([m["latency_ms"] for m in mine_by_rank])
    row = {"label": label, "strategy": strategy, "options": opts, "world_size": world,
           "partition": partition, "latency_ms": statistics.median(e2e), "samples_ms": e2e,
           "comm_bytes": [m["comm_bytes"] for m in mine_by_rank],
           "bytes_formula": [m["bytes_formula"] for m in mine_by_rank],
           "comm_ms": [m["comm_ms"] for m in mine_by_rank],
           "compute_ms": [m["compute_ms"] for m in mine_by_rank]}
    row.update(extra or {})
    return row


def job_table(rank, world, a):
    import torch
    import torch.distributed as dist

    from runtime.parallel.exchange import gather_json
    from runtime.models import build_adapter
    from runtime.parallel import DistContext, create_strategy

    ad = build_adapter(_spec(a))
    x = ad.make_inputs(1, seed=0)
    rows = []
    if a.with_single:
        mine = {"latency_ms": [0.0] * a.repeats, "comm_bytes": 0, "comm_ms": 0.0, "compute_ms": 0.0,
                "bytes_formula": 0}
        if rank == 0:
            run = create_strategy("single").apply(ad, DistContext(0, 1), 1)
            mine = _measure(run, x, 0, 1, a.warmup, a.repeats)
        dist.barrier()
        every = gather_json(mine, rank, world)
        rows.append(_rows(every[:1], "single", "single", {}, None, 1))
    for label, strat, opts in CONFIGS:
        if a.only and strat not in a.only:
            continue
        if strat == "prism":
            opts, label = {"cr": a.cr}, f"prism cr={a.cr:g}"
        run = create_strategy(strat, **opts).apply(ad, DistContext(rank, world, torch.device("cpu")), 1)
        every = gather_json(_measure(run, x, rank, world, a.warmup, a.repeats), rank, world)
        rows.append(_rows(every, label, strat, opts, list(run.plan.sizes), world))
    return rows


def job_hetero(rank, world, a):
    import contextlib

    import torch
    import torch.distributed as dist

    from runtime.parallel.exchange import gather_json
    from runtime.models import build_adapter
    from runtime.parallel.planner import cpu_quota, plan_splits, predict_ms, profile_speed
    from runtime.parallel import DistContext, create_strategy

    quota = a.quotas[rank] if rank < len(a.quotas) else None
    ad = build_adapter(_spec(a))
    x = ad.make_inputs(1, seed=0)
    rows = []
    with (cpu_quota(quota) if quota else contextlib.nullcontext()):
        dist.barrier()
        speed = profile_speed(ad, repeats=a.profile_repeats)
        speeds = [s for s in gather_json(speed, rank, world)]
        for strat, opts in (("voltage", {}), ("prism", {"cr": a.cr}), ("galaxy", {"tiles": 2}),
                            ("tensor_parallel", {})):
            if a.only and strat not in a.only:
                continue
            sp = plan_splits(strat, ad.shape, speeds, bw=a.bw, cr=opts.get("cr"),
                             tiles=opts.get("tiles"))
            for kind in ("even", "planned"):
                o = dict(opts)
                part = None
                if kind == "planned":
                    o.update({k: v for k, v in sp.options.items() if k in ("heads", "cols")})
                    part = sp.partition
                run = create_strategy(strat, **o).apply(
                    ad, DistContext(rank, world, torch.device("cpu"), partition=part), 1)
                every = gather_json(_measure(run, x, rank, world, a.warmup, a.repeats), rank, world)
                pred = predict_ms(run.plan, speeds, bw=a.bw)
                rows.append(_rows(every, f"{strat} {kind}", strat, o, list(run.plan.sizes), world,
                                  {"predicted_ms": pred, "speeds_gflops": [s / 1e9 for s in speeds],
                                   "quotas": a.quotas,
                                   "heads": list(run.plan.heads_split) or None,
                                   "cols": list(run.plan.cols_split) or None}))
    return rows


# --------------------------------------------------------------------------- launching

JOBS = {"table": job_table, "hetero": job_hetero}


def _worker(job, args_json):
    """One rank started by the testbed (env RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
    rank 0 prints the rows as one JSON line."""
    import torch

    from runtime.parallel import exchange as xch

    a = argparse.Namespace(**json.loads(args_json))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(a.threads)
    xch.init_process_group(rank, world, timeout_s=a.timeout)
    try:
        res = JOBS[job](rank, world, a)
    finally:
        xch.destroy()
    if rank == 0:
        print(json.dumps(res), flush=True)


def launch(job, world, a) -> list:
    """Rows of `job` on `world` ranks: spawned on loopback (runtime.launch.spawn_ranks),
    or as processes in the emulated network with --testbed-bw."""
    if a.testbed_bw:
        from runtime.netem.testbed import Testbed

        with Testbed(world, a.testbed_bw) as tb:
            a.bw_measured = tb.measure_bw()
            out = tb.launch([sys.executable, os.path.abspath(__file__), "_worker", job,
                             json.dumps(vars(a))], timeout_s=a.timeout * 4)
        rows = json.loads((out if isinstance(out, str) else out.decode()).strip().splitlines()[-1])
        for r in rows:
            r.update(bw=a.testbed_bw, bw_measured=a.bw_measured)
        return rows

    from runtime.launch import spawn_ranks

    return spawn_ranks(JOBS[job], world, a, timeout_s=a.timeout, threads=a.threads)[0]


def _fmt_bytes(xs):
    return "/".join(f"{x / 1e6:.2f}" for x in xs)


def print_table(rows, *, hetero=False):
    vol = {r["world_size"]: r for r in rows if r["label"] == "voltage"}
    hdr = f"{'P':>2} {'strategy':<26} {'latency_ms':>10} {'comm_ms max':>11} {'MB sent/device':>18} {'formula MB':>18} {'x voltage':>9}"
    if hetero:
        hdr = (f"{'strategy':<24} {'split':<34} {'latency_ms':>10} {'predicted_ms':>12} "
               f"{'MB sent/device':>16}")
    print(hdr)
    for r in rows:
        if hetero:
            split = f"rows {r['partition']}"
            if r.get("heads"):
                split = f"h{r['heads']} c{r['cols']}" + (f" r{r['partition']}" if r["strategy"] == "galaxy" else "")
            print(f"{r['label']:<24} {split:<34} {r['latency_ms']:>10.1f} {r['predicted_ms']:>12.1f} "
                  f"{_fmt_bytes(r['comm_bytes']):>16}")
            continue
        v = vol.get(r["world_size"])
        ratio = (sum(r["comm_bytes"]) / sum(v["comm_bytes"])) if v and sum(v["comm_bytes"]) else float("nan")
        print(f"{r['world_size']:>2} {r['label']:<26} {r['latency_ms']:>10.1f} {max(r['comm_ms']):>11.1f} "
              f"{_fmt_bytes(r['comm_bytes']):>18} {_fmt_bytes(r['bytes_formula']):>18} {ratio:>9.2f}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        return _worker(argv[1], argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("job", choices=["table", "hetero"])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--world-size", default="2,3")
    ap.add_argument("--only", default="", help="comma list of strategies")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0, help="process-group timeout, s")
    ap.add_argument("--quotas", default="0.6,0.3", help="hetero: CPU quota per rank (0 = none)")
    ap.add_argument("--cr", type=float, default=9.9)
    ap.add_argument("--bw", type=float, default=None, help="planner's link rate, Mbit/s (none: compute only)")
    ap.add_argument("--profile-repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write rows as JSON here")
    ap.add_argument("--testbed-bw", type=float, default=None,
                    help="run the ranks in the emulated network (runtime.netem.testbed) at this "
                         "Mbit/s instead of loopback")
    a = ap.parse_args(argv)
    a.only = [s for s in a.only.split(",") if s]
    a.quotas = [float(q) or None for q in a.quotas.split(",")]
    worlds = [int(w) for w in a.world_size.split(",")]
    t0 = time.time()
    rows = []
    if a.job == "table":
        for i, w in enumerate(worlds):
            a.with_single = i == 0
            rows += launch("table", w, a)
        print_table(rows)
    else:
        rows = launch("hetero", len(a.quotas), a)
        print(f"profiled speeds (GFLOP/s): {[round(s, 2) for s in rows[0]['speeds_gflops']]} "
              f"under quotas {a.quotas}")
        print_table(rows, hetero=True)
    load = os.getloadavg()
    link = f"shaped {a.testbed_bw:g} Mbit/s (measured {a.bw_measured:.0f})" if a.testbed_bw else "loopback"
    from runtime.models import family_of
    size = f"seq_len={a.seq_len}" if family_of(a.model) != "vit" else f"img_size={a.img_size}"
    print(f"# {link}; {a.model} {size} depth={a.depth or 'full'} threads/rank={a.threads} "
          f"repeats={a.repeats}; host {os.cpu_count()} CPUs, load avg {load[0]:.1f}; "
          f"{time.time() - t0:.0f} s", file=sys.stderr)
    if a.out:
        from costmodel.perfmap import atomic_write_text

        cmd = " ".join(["python", "benchmarks/bench_tp_galaxy.py", *argv])
        atomic_write_text(a.out, json.dumps({"schema_version": 1, "command": cmd, "job": a.job,
                                             "args": vars(a), "load_avg": load, "rows": rows},
                                            indent=1))


if __name__ == "__main__":
    main()
