"""Start P local rank processes: of one command (`launch`) or of one function (`spawn_ranks`).

`launch` runs a CLI command as ranks 0..P-1 and collects rank 0's stdout. Used by
`python -m runtime run --world-size P` (loopback) and by the emulated-network testbed,
which wraps each rank's argv (e.g. `ip netns exec dev1 ...`) and sets GLOO_SOCKET_IFNAME
per rank. Under torchrun none of this runs: ranks come from the env.

`spawn_ranks` runs a picklable function on P spawned processes inside one GLOO process
group on loopback and returns each rank's JSON result; used by the tests
(tests/gloo_utils.py) and the benchmarks (fidelity_common.py, bench_tp_galaxy.py,
bench_runtime.py). `free_port` is the one free-port helper of all of them.

Torch-free at import (torch is imported in the spawned ranks only).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

SPAWN_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LaunchError(RuntimeError):
    pass


def launch(argv: Sequence[str], world_size: int, *, master_addr: str = "127.0.0.1",
           master_port: Optional[int] = None, timeout_s: float = 600.0,
           wrap: Optional[Callable[[int, list], list]] = None,
           env_per_rank: Optional[Callable[[int], dict]] = None,
           stderr=None, on_stdout_line: Optional[Callable[[str], None]] = None) -> str:
    """Run `argv` as ranks 0..P-1; return rank 0's stdout. Every child is killed when
    one fails, on timeout, and on KeyboardInterrupt; a failure raises LaunchError with
    the failing rank's exit code. `on_stdout_line` sees each of rank 0's stdout lines as
    it is printed (streamed results); it has seen all of them when launch returns or
    raises."""
    port = master_port or free_port()
    procs = []
    t = None
    try:
        for r in range(world_size):
            env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world_size), LOCAL_RANK=str(r),
                       MASTER_ADDR=master_addr, MASTER_PORT=str(port), PRISM_EDGE_CHILD="1")
            if env_per_rank:
                env.update(env_per_rank(r))
            cmd = list(argv) if wrap is None else wrap(r, list(argv))
            procs.append(subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                stderr=stderr, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        out = []
        # drain rank 0's stdout while waiting so a large result cannot block on the pipe
        import threading
        def drain():
            if on_stdout_line is None:
                out.append(procs[0].stdout.read())
                return
            lines = []
            for ln in procs[0].stdout:
                lines.append(ln)
                on_stdout_line(ln.decode())
            out.append(b"".join(lines))
        t = threading.Thread(target=drain, daemon=True)
        t.start()
        while True:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                time.sleep(0.5)  # let peers report their own error first
                r, c = bad[0]
                raise LaunchError(f"rank {r} exited with code {c}")
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                raise LaunchError(f"ranks did not finish within {timeout_s:.0f} s")
            time.sleep(0.05)
        t.join(timeout=10)
        return (out[0] if out else b"").decode()
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()
        if t is not None:
            t.join(timeout=10)


def self_argv(args: Sequence[str]) -> list:
    """argv that re-runs this package's CLI with `args` in the current interpreter."""
    return [sys.executable, "-m", "runtime", *args]


# --------------------------------------------------------------------------- function ranks

def _spawn_entry(rank, fn, world_size, port, out_dir, args, timeout_s, threads, master_addr):
    import torch

    from .parallel import exchange as xch

    torch.set_num_threads(threads)
    xch.init_process_group(rank, world_size, timeout_s=timeout_s, master_addr=master_addr,
                           master_port=port)
    # a failure propagates without the teardown barrier (peers waiting in a collective
    # would hold it for the whole timeout); torch records it and the parent stops the rest
    res = fn(rank, world_size, *args)
    path = os.path.join(out_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(res, f)
    os.replace(path + ".tmp", path)
    xch.destroy()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: gloo's background threads can call std::terminate from
    # static destructors at exit, after all work is done and results are written
    os._exit(0)


def spawn_ranks(fn: Callable, world_size: int, *args, out_dir: Optional[str] = None,
                timeout_s: float = SPAWN_TIMEOUT_S, threads: int = 1,
                deadline_s: Optional[float] = None, master_addr: str = "127.0.0.1") -> list:
    """Run `fn(rank, world_size, *args)` on `world_size` spawned local processes, each in
    one GLOO process group (initialised with `timeout_s`, so a collective waiting on a
    dead or hung peer fails instead of hanging) with `threads` torch threads. Each rank's
    JSON-serialisable return value is written to `out_dir/rank{r}.json` (a temporary
    folder when None) and the list of them, by rank, is returned.

    `fn` and `args` must be picklable (module-level function; in a script run as
    `python x.py` functions of `__main__` are fine). A rank that raises, or exits, fails
    the whole launch with LaunchError carrying its traceback; the other ranks are
    stopped. `deadline_s` (default: none) bounds the whole run's wall time as well."""
    import tempfile

    import torch.multiprocessing as mp

    if out_dir is None:
        with tempfile.TemporaryDirectory() as d:
            return spawn_ranks(fn, world_size, *args, out_dir=d, timeout_s=timeout_s,
                               threads=threads, deadline_s=deadline_s, master_addr=master_addr)
    out_dir = str(out_dir)
    ctx = mp.start_processes(
        _spawn_entry, args=(fn, world_size, free_port(master_addr), out_dir, args, timeout_s,
                            threads, master_addr),
        nprocs=world_size, join=False, start_method="spawn")
    end = None if deadline_s is None else time.monotonic() + deadline_s
    try:
        while True:
            wait = 1.0 if end is None else max(0.0, min(1.0, end - time.monotonic()))
            try:
                if ctx.join(timeout=wait):
                    break
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
                raise LaunchError(f"rank {e.error_index} failed: {e}") from e
            if end is not None and time.monotonic() >= end:
                raise LaunchError(f"ranks did not finish within {deadline_s:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join()
    out = []
    for r in range(world_size):
        path = os.path.join(out_dir, f"rank{r}.json")
        if not os.path.exists(path):
            raise LaunchError(f"rank {r} exited without writing its result")
        with open(path) as f:
            out.append(json.load(f))
    return out
