"""Run a function on P local GLOO ranks (loopback) inside a test, with a timeout."""
from __future__ import annotations

import json
import os

import torch.multiprocessing as mp

from runtime.launch import free_port


def _entry(rank, fn, world_size, port, out_dir, args):
    import torch

    from runtime.parallel import exchange as xch

    torch.set_num_threads(1)
    xch.init_process_group(rank, world_size, timeout_s=60, master_addr="127.0.0.1", master_port=port)
    try:
        res = fn(rank, world_size, *args)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        xch.destroy()
    # skip interpreter teardown: gloo's background threads can call std::terminate from
    # static destructors at exit, after all work is done and results are written
    os._exit(0)


def run_ranks(fn, world_size: int, tmp_path, *args) -> list:
    """fn(rank, world_size, *args) -> JSON-able, run on every rank; returns the list of
    results by rank. A failing or hanging rank fails the test (process-group timeout)."""
    port = free_port()
    mp.start_processes(_entry, args=(fn, world_size, port, str(tmp_path), args),
                       nprocs=world_size, join=True, start_method="spawn")
    out = []
    for r in range(world_size):
        with open(tmp_path / f"rank{r}.json") as f:
            out.append(json.load(f))
    return out
