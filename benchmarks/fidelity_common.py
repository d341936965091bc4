"""Shared pieces of the fidelity benchmarks: real GLOO ranks on loopback, JSON tables.

Every fidelity number is produced by the runtime's own adapter/strategy code paths on
real torch.distributed GLOO ranks (one process per device, pairwise exchange on
127.0.0.1), not by a re-implementation: rank 0 gathers each device's final rows with
`features=True` and scores them against the plain, unpartitioned model.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "data", "fidelity")
SCHEMA_VERSION = 1
TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world, port, out_path, args, threads):
    import torch

    from runtime.parallel import exchange as xch

    torch.set_num_threads(threads)
    xch.init_process_group(rank, world, timeout_s=TIMEOUT_S, master_addr="127.0.0.1",
                           master_port=port)
    try:
        res = fn(rank, world, *args)
    finally:
        xch.destroy()
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(res, f)


def run_on_ranks(fn, world: int, *args, threads: int = 1):
    """fn(rank, world, *args) on `world` GLOO ranks; returns rank 0's JSON-able result."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rank0.json")
        mp.start_processes(_entry, args=(fn, world, _free_port(), out, args, threads),
                           nprocs=world, join=True, start_method="spawn")
        with open(out) as f:
            return json.load(f)


def environment() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "exchange": "GLOO pairwise on loopback, one process per device"}


def save_table(name: str, table: dict) -> str:
    """Atomic JSON write of a result table into data/fidelity/."""
    from costmodel.perfmap import atomic_write_text

    path = os.path.join(DATA, name)
    atomic_write_text(path, json.dumps({"schema_version": SCHEMA_VERSION, **table}, indent=1) + "\n")
    return path


def prism_grid(crs, averaged=("output", "ln1"), bias=(True, False)):
    """Strategy settings of a sweep: voltage plus prism over cr x log_bias x averaged."""
    out = [("voltage", {})]
    for cr in crs:
        for b in bias:
            for a in averaged:
                out.append(("prism", {"cr": cr, "log_bias": b, "averaged": a}))
    return out
