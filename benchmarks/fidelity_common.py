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
import sys

from runtime.launch import spawn_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "fidelity")
SCHEMA_VERSION = 1
TIMEOUT_S = 300.0


def run_on_ranks(fn, world: int, *args, threads: int = 1):
    """fn(rank, world, *args) on `world` GLOO ranks (runtime.launch.spawn_ranks, process-
    group timeout TIMEOUT_S); returns rank 0's JSON-able result."""
    return spawn_ranks(fn, world, *args, timeout_s=TIMEOUT_S, threads=threads)[0]


def environment() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "exchange": "GLOO pairwise on loopback, one process per device"}


def command(script: str, argv=None, env=()) -> str:
    """The command line that produced a table: `python benchmarks/<script> ARGS`, prefixed
    by the variables of `env` that are set (e.g. HF_HUB_OFFLINE=1)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = [f"{k}={os.environ[k]}" for k in env if os.environ.get(k)]
    return " ".join([*pre, "python", f"benchmarks/{os.path.basename(script)}", *argv])


def save_table(name: str, table: dict, *, command: str) -> str:
    """Atomic JSON write of a result table into data/fidelity/, naming its command."""
    from costmodel.perfmap import atomic_write_text

    path = os.path.join(DATA, name)
    atomic_write_text(path, json.dumps({"schema_version": SCHEMA_VERSION, "command": command,
                                        **table}, indent=1) + "\n")
    return path


def prism_grid(crs, averaged=("output", "ln1"), bias=(True, False)):
    """Strategy settings of a sweep: voltage plus prism over cr x log_bias x averaged."""
    out = [("voltage", {})]
    for cr in crs:
        for b in bias:
            for a in averaged:
                out.append(("prism", {"cr": cr, "log_bias": b, "averaged": a}))
    return out
