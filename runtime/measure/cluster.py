"""The profiling sweep across real devices: one process per board, started by torchrun.

    # on every board (node_rank 0 is the terminal device: it measures `single` and
    # writes the perf map; the others only take part in the distributed configurations)
    sudo GLOO_SOCKET_IFNAME=wlan0 torchrun --nnodes 2 --node_rank $R --nproc_per_node 1 \\
        --master_addr 192.168.1.10 --master_port 29500 -m runtime profile-cluster \\
        --model vit_base_patch16_224 --strategy single,voltage,prism --batch 1,2,4,8 \\
        --bw 100,200,400 --shape-iface wlan0 --device cuda --meter jtop \\
        --out data/perfmaps/orin_p2.json

Same axes, rows and perf map as `python -m runtime profile` (measure/driver.py), with
the devices real instead of emulated:

- World size: torchrun's WORLD_SIZE is P; every rank expands the same sweep and walks the
  distributed configurations in the same order inside one GLOO process group (with a
  timeout: a dead board makes the sweep fail, never hang).
- Link rate: with `--shape-iface IF` every rank sets a tc tbf on its own egress of IF to
  each `--bw` in turn (root; the qdisc is removed on exit, also on errors and SIGTERM), so
  both directions of every device pair are shaped. Without it the driver cannot change
  the rate: give one `--bw`, the link's nominal rate as set by other means. Either way,
  before each rate the ranks run a bulk GLOO transfer from every rank to rank 0 and the
  *measured* rate (the slowest pair) is stored next to the nominal one.
- Durability: rank 0 appends each row to the raw JSONL as it is measured; running the
  same command again on every board resumes (rank 0 tells the others which
  configurations are still missing).
- Energy: each board reads its own meter (`--meter`) and rows carry the sum over the
  boards when every board measured; otherwise `energy_j` is null and the labelled
  estimate `energy_est_j` stands alone.
- After the distributed part the group is torn down and rank 0 measures `single`
  in-process.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Optional

from ..errors import UsageError

log = logging.getLogger("runtime.cluster")

BULK_SECONDS = 1.0


# --------------------------------------------------------------------------- the link

def measure_to_rank0(rank: int, world_size: int, bw_hint_mbps: Optional[float],
                     seconds: float = BULK_SECONDS) -> Optional[list]:
    """Bulk GLOO transfer from every rank r > 0 to rank 0, one pair at a time; rank 0
    returns [{"src": r, "mbps": ...}]. The first tenth of the bytes is sent as its own
    message and left out of the timing (tbf burst, TCP slow start)."""
    import torch
    import torch.distributed as dist

    n = int(max(4 << 20, (bw_hint_mbps or 1000.0) * 1e6 / 8 * seconds * 10 / 9))
    warm, main = n // 10, n - n // 10
    out = []
    for src in range(1, world_size):
        dist.barrier()
        if rank == src:
            dist.send(torch.zeros(warm, dtype=torch.uint8), 0)
            dist.send(torch.zeros(main, dtype=torch.uint8), 0)
        elif rank == 0:
            dist.recv(torch.empty(warm, dtype=torch.uint8), src)
            t0 = time.perf_counter()
            dist.recv(torch.empty(main, dtype=torch.uint8), src)
            dt = time.perf_counter() - t0
            out.append({"src": src, "mbps": round(main * 8 / dt / 1e6, 3), "bytes": main})
    return out if rank == 0 else None


def _agree(rank: int, world_size: int, problem: Optional[str]) -> None:
    """Every rank learns every rank's problem; all raise the first one (no rank is left
    waiting in a collective for a peer that gave up)."""
    from ..parallel.exchange import gather_json

    probs = gather_json(problem, rank, world_size)
    bad = [(r, p) for r, p in enumerate(probs) if p]
    if bad:
        r, p = bad[0]
        raise ValueError(p if r == 0 else f"rank {r}: {p}")


# --------------------------------------------------------------------------- the sweep

def _check_args(a, spec) -> Optional[str]:
    if a.shape_iface is None and len(spec.bws) != 1:
        return ("without --shape-iface the driver cannot change the link rate: give one --bw "
                "(the link's nominal rate) or --shape-iface IFACE to set each rate with tc")
    if spec.delay_ms > 0:
        return "--delay applies to the emulated testbed only; real devices have the link's own delay"
    if a.shape_iface:
        from ..netem.shaping import check_shaping
        return check_shaping(a.shape_iface)
    return None


def main(a, argv_tail) -> int:
    import dataclasses

    from ..netem.shaping import Shaper
    from ..parallel import exchange as xch
    from .driver import Sweep, spec_from_args
    from .mapbuild import environment
    from .spec import expand
    from .worker import group_plan, run_group

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UsageError("profile-cluster runs under torchrun (RANK and WORLD_SIZE are unset); "
                         "on one host use `python -m runtime profile`")
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if ws < 2:
        raise UsageError(f"WORLD_SIZE={ws}: profile-cluster needs at least 2 devices")
    try:
        spec = spec_from_args(a)
        if a.world_sizes != "2" and spec.world_sizes != (ws,):
            raise ValueError(f"--world-size {a.world_sizes} but torchrun started WORLD_SIZE={ws}; "
                             f"give --world-size {ws} or leave it out")
        spec = dataclasses.replace(spec, world_sizes=(ws,), testbed="loopback")
        if a.host_check:
            raise ValueError("--host-check times the cores of one host (python -m runtime profile); "
                             "profile-cluster runs one process per device")
        if spec.order != "grid":
            raise ValueError(f"--order {spec.order} is not implemented in profile-cluster; allowed: grid")
    except ValueError as e:
        raise UsageError(str(e))
    if a.shape_iface and not os.environ.get("GLOO_SOCKET_IFNAME"):
        os.environ["GLOO_SOCKET_IFNAME"] = a.shape_iface
    iface = os.environ.get("GLOO_SOCKET_IFNAME")

    xch.init_process_group(rank, ws, timeout_s=spec.timeout_s)
    shaper, sweep = None, None
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        try:
            _agree(rank, ws, _check_args(a, spec))
        except ValueError as e:
            raise UsageError(str(e))
        envs = xch.gather_json({**environment(None), "host": socket.gethostname(),
                                "rank": rank, "iface": iface}, rank, ws)
        # rank 0 owns the raw log and tells the others what is left to measure
        problem, todo = None, []
        if rank == 0:
            try:
                sweep = Sweep(spec, a.out, a.raw, progress=not a.no_progress)
                sweep.prepare(mode="cluster", protocol_extra={"launcher": "torchrun"})
                if os.path.isdir(a.out):
                    raise ValueError(f"--out {a.out} is a directory; give a .json file path")
                todo = [c.key for c in sweep.pending() if c.world_size == ws]
            except ValueError as e:
                problem = str(e)
        try:
            _agree(rank, ws, problem)
        except ValueError as e:
            raise UsageError(str(e))
        todo = set(xch.gather_json(todo, rank, ws)[0])
        configs = [c for c in expand(spec, shaped=True) if c.world_size == ws and c.key in todo]
        if a.shape_iface:
            shaper = Shaper(a.shape_iface)
        if rank == 0:
            sweep.start_progress(len(todo) + len([c for c in sweep.pending() if c.world_size == 1]),
                                 desc="profile-cluster")
        for k in sorted({c.pass_no for c in configs}):          # --passes: the grid in turn
            in_pass = [c for c in configs if c.pass_no == k]
            for bw in sorted({c.bw for c in in_pass}):
                link = _set_rate(rank, ws, bw, shaper, iface, sweep)
                for model in dict.fromkeys(c.model for c in in_pass if c.bw == bw):
                    group = [c for c in in_pass if c.bw == bw and c.model == model]
                    plan = group_plan(spec, model, ws, group, energy_scope="per-device")
                    run_group(plan, rank, ws, (lambda row, _l=link, _bw=bw: sweep.record(row, _l, _bw))
                              if rank == 0 else (lambda row: None))
        if shaper is not None:
            shaper.close()
        xch.destroy()
        if rank != 0:
            return _exit(0)
        singles = [c for c in sweep.pending() if c.world_size == 1]
        for k, model in dict.fromkeys((c.pass_no, c.model) for c in singles):
            plan = group_plan(spec, model, 1, [c for c in singles if c.model == model and c.pass_no == k])
            run_group(plan, 0, 1, lambda row: sweep.record(row, None, None))
        sweep.finish()
        sweep.overrides = _overrides(envs, a.shape_iface, iface, ws)
        d = sweep.write_map()
        s = d["sweep"]
        print(json.dumps({"out": a.out, "raw": sweep.raw_path, "n_records": s["n_records"],
                          "n_errors": s["n_errors"], "duration_s": s["duration_s"],
                          "link_checks": d["cluster"]["link_checks"]}), flush=True)
        return _exit(0)
    except BaseException as e:
        if rank == 0 and sweep is not None and not isinstance(e, UsageError):
            print(f"error: {type(e).__name__}: {e}; {len(sweep.raw.rows)} rows are kept in "
                  f"{sweep.raw_path}: run the same command on every device to resume", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if shaper is not None:
            shaper.close()
        if xch.dist.is_initialized():
            xch.dist.destroy_process_group()


def _exit(code: int) -> int:
    """Leave without interpreter teardown (gloo threads may abort in static destructors)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _set_rate(rank: int, ws: int, bw: float, shaper, iface, sweep) -> Optional[dict]:
    """Apply `bw` on every device (if shaping), measure it; rank 0 returns the link."""
    problem = None
    if shaper is not None:
        try:
            shaper.set(bw)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            problem = f"{type(e).__name__}: {e}"
    _agree(rank, ws, problem)
    pairs = measure_to_rank0(rank, ws, bw)
    if rank != 0:
        return None
    mbps = min(p["mbps"] for p in pairs)
    log.info("P=%d bw=%g Mbit/s (%s): measured %.1f Mbit/s", ws, bw,
             "tbf on every device" if shaper else "nominal, not set by the driver", mbps)
    sweep.link_checks.append({"world_size": ws, "bw": bw, "bw_measured": mbps})
    link = {"mode": "cluster", "launcher": "torchrun", "iface": iface,
            "shaper": (f"tc tbf on every device's egress of {shaper.iface} (both directions of "
                       "every pair)") if shaper else "none set by the driver: bw is the nominal rate given",
            "bw": bw, "bw_requested": bw, "bw_measured": mbps, "bw_measured_pairs": pairs,
            "bw_meaning": "TCP payload rate, Mbit/s", "delay_method": "none: the real link's own",
            "delay_ms": 0.0}
    sweep.links[ws] = {k: v for k, v in link.items()
                       if k not in ("bw", "bw_requested", "bw_measured", "bw_measured_pairs")}
    return link


def _overrides(envs: list, shape_iface, iface, ws: int) -> dict:
    hosts = [e["host"] for e in envs]
    return {
        "cluster": {"devices": f"{ws} devices, one process each, started by torchrun: "
                               + ", ".join(f"rank {e['rank']} = {e['host']} ({e['cpu'] or '?'}"
                                           + (f", {e['gpu']}" if e.get("gpu") else "") + ")"
                                           for e in envs),
                    "link": (f"real network via {iface or 'the default interface'}; "
                             + (f"tc tbf on every device's egress of {shape_iface}" if shape_iface
                                else "rate not set by the driver (nominal bw as given)")),
                    "hosts": hosts, "same_host": len(set(hosts)) == 1},
        "environment": {"devices": envs},
        "protocol": {"pinning": "none by the driver (one process per device)",
                     "single": "rank 0's device alone, in-process, after the distributed part",
                     "energy": "each device's own meter; rows hold the sum when every device measured"},
    }


def add_args(p) -> None:
    from .driver import add_args as add_profile_args

    add_profile_args(p)
    p.add_argument("--shape-iface", help="set each --bw with tc tbf on this interface's egress "
                                         "on every device (root); without it give one --bw")
