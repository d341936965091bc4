"""Start P rank processes of one command and collect rank 0's stdout.

Used by `python -m runtime run --world-size P` (loopback) and by the emulated-network
testbed, which wraps each rank's argv (e.g. `ip netns exec dev1 ...`) and sets
GLOO_SOCKET_IFNAME per rank. Under torchrun none of this runs: ranks come from the env.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence


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
