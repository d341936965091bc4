"""A hung (SIGSTOPped) or dead (SIGKILLed) peer is bounded by the configured timeout:
every request is answered, the slowest within 2x the timeout (issue 20). Both the
Python AdaptiveRunner and `python -m runtime serve`."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.multiprocessing as mp

from runtime.launch import free_port
from runtime.models import ModelSpec, build_adapter
from runtime.serve.adaptive import AdaptiveRunner, Decision

pytestmark = pytest.mark.gloo
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = ModelSpec("test_vit", img_size=64, depth=2, seed=5)
TIMEOUT_S = 3.0


def _worker(rank, world, port, timeout_s):
    from runtime.serve.adaptive import serve_worker

    torch.set_num_threads(1)
    serve_worker(build_adapter(SPEC), rank, world, "127.0.0.1", port, timeout_s=timeout_s)


class AlwaysVoltage:
    def __call__(self, batch, bw):
        return Decision("voltage", predicted_ms=1.0)


def runner_figures(sig: int, timeout_s: float = TIMEOUT_S, n_after: int = 6) -> dict:
    """Serve a stream with the Python runner, send `sig` to the worker after 3 requests;
    wall seconds of every submit() (probe included)."""
    torch.set_num_threads(1)
    ctx = mp.get_context("spawn")
    port = free_port()
    ad = build_adapter(SPEC)
    runner = AdaptiveRunner(ad, AlwaysVoltage(), world_size=2, port=port, timeout_s=timeout_s,
                            probe_every=2, probe_bytes=128 * 1024)
    worker = ctx.Process(target=_worker, args=(1, 2, port, timeout_s), daemon=True)
    worker.start()
    walls, executed = [], []
    try:
        runner.start(block=True)
        for i in range(3 + n_after):
            if i == 3:
                os.kill(worker.pid, sig)
            x = ad.make_inputs(2, seed=100 + i)
            t0 = time.perf_counter()
            res = runner.submit(x)
            walls.append(time.perf_counter() - t0)
            torch.testing.assert_close(res.logits, ad.reference(x)[0], atol=1e-4, rtol=1e-4)
            executed.append(res.executed)
    finally:
        runner.close()
        if worker.is_alive():
            os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=10)
    return {"timeout_s": timeout_s, "walls_s": walls, "slowest_s": max(walls[3:]),
            "executed": executed, "faults": runner.counts["faults"]}


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL], ids=["SIGSTOP", "SIGKILL"])
def test_runner_peer_hung_or_dead_bounded_by_timeout(sig):
    f = runner_figures(sig)
    assert len(f["walls_s"]) == 9                                # every request answered
    assert f["executed"][:3] == ["voltage"] * 3
    assert all(e == "single" for e in f["executed"][4:])         # local while the peer is gone
    assert f["faults"] >= 1
    assert f["slowest_s"] <= 2 * TIMEOUT_S, f


def serve_figures(sig: int, timeout_s: float = TIMEOUT_S, tmp=None, n: int = 8, at: int = 3) -> dict:
    """`python -m runtime serve --policy voltage` on 2 ranks; at request `at` (the
    --switch-at handshake) rank 1 gets `sig`. Wall seconds between request lines."""
    port = free_port()
    sync = str(tmp)
    argv = [sys.executable, "-m", "runtime", "serve", "--model", "test_vit", "--img-size", "64",
            "--depth", "2", "--policy", "voltage", "--world-size", "2", "--probe-every", "2",
            "--timeout", str(timeout_s), "--stream", ",".join(["2"] * n), "--switch-at", str(at),
            "--sync-dir", sync]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
               PRISM_EDGE_LOG="WARNING", PYTHONPATH=ROOT)
    procs = [subprocess.Popen(argv, env=dict(env, RANK=str(r)), cwd=ROOT, text=True,
                              stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                              stderr=subprocess.PIPE if r == 0 else subprocess.DEVNULL)
             for r in range(2)]
    events, stamps = [], []
    err: list = []
    t_err = threading.Thread(target=lambda: err.append(procs[0].stderr.read()), daemon=True)
    t_err.start()
    try:
        t_last = None
        for line in procs[0].stdout:
            ev = json.loads(line)
            now = time.perf_counter()
            if ev["event"] == "switch":
                os.kill(procs[1].pid, sig)
                open(os.path.join(sync, "switched"), "w").close()
                t_last = time.perf_counter()        # the request after the signal starts now
                continue
            if ev["event"] == "request":
                stamps.append(now - t_last if t_last is not None else None)
                t_last = now
            events.append(ev)
        rc = procs[0].wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    req = [e for e in events if e["event"] == "request"]
    return {"timeout_s": timeout_s, "rc": rc, "n_requests": len(req), "walls_s": stamps,
            "slowest_s": max(s for s in stamps[at:] if s is not None),
            "executed": [e["executed"] for e in req], "faults": [e["fault"] for e in req],
            "stderr": (err[0] if err else "")[-2000:]}


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL], ids=["SIGSTOP", "SIGKILL"])
def test_serve_peer_hung_or_dead_bounded_by_timeout(sig, tmp_path):
    f = serve_figures(sig, tmp=tmp_path)
    assert f["rc"] == 0, f["stderr"]
    assert f["n_requests"] == 8                                   # every request answered
    assert f["executed"][:3] == ["voltage"] * 3
    assert all(e == "single" for e in f["executed"][4:])
    assert f["slowest_s"] <= 2 * TIMEOUT_S, f


def test_runner_first_request_after_reform_bounded():
    """A worker dies, a new one joins the re-formed group, then hangs: the first request
    on the re-formed group is bounded by the timeout too (not by a join timeout)."""
    torch.set_num_threads(1)
    ctx = mp.get_context("spawn")
    port = free_port()
    ad = build_adapter(SPEC)
    runner = AdaptiveRunner(ad, AlwaysVoltage(), world_size=2, port=port, timeout_s=TIMEOUT_S,
                            join_timeout_s=60, probe_every=0)
    workers = [ctx.Process(target=_worker, args=(1, 2, port, TIMEOUT_S), daemon=True)]
    workers[0].start()
    try:
        runner.start(block=True)
        assert runner.submit(ad.make_inputs(2, seed=1)).executed == "voltage"
        workers[0].kill()
        workers[0].join()
        assert runner.submit(ad.make_inputs(2, seed=2)).executed == "single"    # fault, local
        workers.append(ctx.Process(target=_worker, args=(1, 2, port, TIMEOUT_S), daemon=True))
        workers[1].start()
        assert runner.group.up.wait(timeout=60), "re-join did not happen"
        os.kill(workers[1].pid, signal.SIGSTOP)
        t0 = time.perf_counter()
        res = runner.submit(ad.make_inputs(2, seed=3))
        wall = time.perf_counter() - t0
        assert res.executed == "single" and res.fault and wall <= 2 * TIMEOUT_S, (wall, res.fault)
    finally:
        runner.close()
        for w in workers:
            if w.is_alive():
                os.kill(w.pid, signal.SIGKILL)
            w.join(timeout=10)
