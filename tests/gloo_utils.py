"""Run a function on P local GLOO ranks (loopback) inside a test, with a timeout."""
from __future__ import annotations

from runtime.launch import spawn_ranks


def run_ranks(fn, world_size: int, tmp_path, *args) -> list:
    """fn(rank, world_size, *args) -> JSON-able, run on every rank; returns the list of
    results by rank. A failing or hanging rank fails the test (process-group timeout).
    A thin wrapper of runtime.launch.spawn_ranks (one thread per rank, 60 s timeout)."""
    return spawn_ranks(fn, world_size, *args, out_dir=tmp_path, timeout_s=60, threads=1)
