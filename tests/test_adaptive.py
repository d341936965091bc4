"""Adaptive runner: per-batch decisions, and a peer killed mid-stream loses no request."""
import time

import pytest
import torch
import torch.multiprocessing as mp

from runtime.serve.adaptive import AdaptiveRunner, Decision
from runtime.launch import free_port
from runtime.models import ModelSpec, build_adapter

pytestmark = pytest.mark.gloo
SPEC = ModelSpec("test_vit", img_size=64, depth=2, seed=5)


def _worker(rank, world, port):
    from runtime.serve.adaptive import serve_worker

    torch.set_num_threads(1)
    serve_worker(build_adapter(SPEC), rank, world, "127.0.0.1", port, timeout_s=5)


class VoltageFromBatch2:
    """Distributed (Voltage: exact) from batch 2, single below."""

    def __call__(self, batch, bw):
        return Decision("voltage", predicted_ms=1.0) if batch >= 2 else Decision("single", predicted_ms=1.0)


def test_peer_killed_mid_stream_all_requests_answered(tmp_path):
    torch.set_num_threads(1)
    ctx = mp.get_context("spawn")
    port = free_port()
    ad = build_adapter(SPEC)
    runner = AdaptiveRunner(ad, VoltageFromBatch2(), world_size=2, port=port, timeout_s=5,
                            probe_every=3, probe_bytes=128 * 1024)
    worker = ctx.Process(target=_worker, args=(1, 2, port), daemon=True)
    worker.start()
    runner.start(block=True)
    batches = [1, 2, 4, 2, 3, 2, 1, 4, 2, 2]
    results = []
    t0 = time.time()
    try:
        for i, b in enumerate(batches):
            if i == 4:
                worker.kill()
                worker.join()
            x = ad.make_inputs(b, seed=100 + i)
            res = runner.submit(x)
            ref, _ = ad.reference(x)
            torch.testing.assert_close(res.logits, ref, atol=1e-4, rtol=1e-4)
            results.append(res)
        # every request answered; the ones before the kill ran distributed from batch 2
        assert [r.executed for r in results[:4]] == ["single", "voltage", "voltage", "voltage"]
        assert runner.counts["faults"] >= 1 and runner.counts["local_reruns"] == 1
        assert all(r.executed == "single" for r in results[5:])    # stays local while down
        assert time.time() - t0 < 60                               # bounded by the timeout
        # the peer comes back: the group re-forms in the background, distributed resumes
        worker = ctx.Process(target=_worker, args=(1, 2, port), daemon=True)
        worker.start()
        assert runner.group.up.wait(timeout=60), "re-join did not happen"
        x = ad.make_inputs(4, seed=999)
        res = runner.submit(x)
        assert res.executed == "voltage" and res.fault is None
        torch.testing.assert_close(res.logits, ad.reference(x)[0], atol=1e-4, rtol=1e-4)
        assert runner.counts["probes"] >= 1 and runner.bw.estimate and runner.bw.estimate > 0
    finally:
        runner.close()
        worker.join(timeout=10)
        if worker.is_alive():
            worker.kill()
