"""Adaptive runner: per batch, single device or distributed, and it survives its peers.

The terminal device (rank 0) holds a stream of batches. For each one it asks a policy
(`costmodel.decision.DecisionTable.choose` or any callable with the same result) which
mode minimises the objective at the observed bandwidth, then either runs the plain
model locally or tells the workers what to run and runs its own partition.

Control protocol (rank 0 -> every worker, over the same GLOO group):
  header int64[16] = [op, strategy code, m, n tensors, (dtype code, ndim, dims[4]) ...]
  op RUN: then the input tensors (the worker embeds and keeps its own rows);
  op PROBE: then a probe payload, answered by a one-element ack (active bandwidth probe);
  op STOP: the worker leaves.

Faults: an exchange that fails (peer died: connection reset) or times out (a hung or
stopped peer: rank 0's group carries `timeout_s` on every operation) makes rank 0 re-run
that batch locally; every later batch stays local
while a background thread re-forms the group at the next *generation* (a fresh key
prefix on rank 0's persistent TCPStore). A restarted worker reads the generation and
joins; when the new group is up, distributed modes are allowed again. No request is
lost; every event is logged and counted.

Timeouts (GLOO, torch 2.14): point-to-point send / recv wait on the gloo context's
timeout, fixed by `init_process_group(timeout=...)`; `ProcessGroup.set_timeout` changes
only the collectives (all_reduce, all_gather, barrier), not send / recv, and a per-op
`work.wait(timeout)` overrides either. So rank 0 creates every generation's group with
`timeout_s` itself: every operation, p2p or collective, including the first after a
re-form, fails within `timeout_s` when a peer hangs. A peer's start-up (which may take
much longer) is waited for before that, on the store: each worker announces
`ready/g<gen>/<rank>` and rank 0 waits for all of them (join_timeout_s) before the
rendezvous, so the short timeout never has to cover it. A worker never re-joins a
generation it has failed in (a failed rendezvous leaves keys behind under its prefix);
it waits for rank 0 to open the next one. The re-join runs on a background thread and
requests run locally meanwhile: it never blocks a request.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

from costmodel.formulas import offsets
from costmodel.strategies import get_formula, mode_label

from ..models.masks import token_info
from ..parallel import DistContext, create_strategy, list_strategies

log = logging.getLogger("runtime.adaptive")

OP_STOP, OP_RUN, OP_PROBE = 0, 1, 2
def strategy_code(name: str) -> int:
    """A strategy's code in the control header: its index in the (shared) registry."""
    return list_strategies().index(name)


def _options(strategy: str, m: int) -> dict:
    """Options a worker builds the strategy with: m for a compressing one, else none."""
    return {"m": m} if get_formula(strategy).compresses else {}

DTYPES = [torch.float32, torch.int64, torch.float16, torch.bfloat16, torch.uint8, torch.bool,
          torch.int32]
HEADER = 32
ROWS_FLAG = 28     # header slot: 1 = the payload is this worker's embedded rows


# --------------------------------------------------------------------------- helpers

def pack_inputs(inputs) -> list:
    """Inputs as a list of tensors (a tensor, or a dataclass / NamedTuple of tensors)."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if dataclasses.is_dataclass(inputs):
        return [getattr(inputs, f.name) for f in dataclasses.fields(inputs)]
    if isinstance(inputs, tuple):
        return list(inputs)
    raise TypeError(f"cannot send inputs of type {type(inputs).__name__}")


def unpack_like(template_type, tensors: list):
    if template_type is torch.Tensor:
        return tensors[0]
    return template_type(*tensors)


def _header(op: int, strategy: str = "single", m: int = 0, tensors=()) -> torch.Tensor:
    h = torch.zeros(HEADER, dtype=torch.int64)
    h[0], h[1], h[2], h[3] = op, strategy_code(strategy), m, len(tensors)
    for i, t in enumerate(tensors):
        base = 4 + 6 * i
        if t.dim() > 4 or base + 6 > HEADER:
            raise ValueError("inputs must be at most 4 tensors of at most 4 dims")
        h[base], h[base + 1] = DTYPES.index(t.dtype), t.dim()
        h[base + 2: base + 2 + t.dim()] = torch.tensor(t.shape)
    return h


def _shapes(h: torch.Tensor) -> list:
    out = []
    for i in range(int(h[3])):
        base = 4 + 6 * i
        nd = int(h[base + 1])
        out.append((DTYPES[int(h[base])], tuple(int(s) for s in h[base + 2: base + 2 + nd])))
    return out


@dataclass
class Decision:
    """What the policy chose for one batch."""

    strategy: str                 # a registered strategy (runtime.list_strategies())
    cr: Optional[float] = None
    m: Optional[int] = None
    predicted_ms: Optional[float] = None
    source: str = "model"         # "profiled" (exact perf-map entry) or "model"
    margin: Optional[float] = None

    @property
    def mode(self) -> str:
        return mode_label(self.strategy, self.cr)


@dataclass
class BandwidthMonitor:
    """Link bandwidth estimate in Mbit/s: passive from the exchanges of recent requests
    (bytes / comm time of the least-waiting block, messages of at least `min_bytes`),
    active from occasional probes (payload + ack). An exponentially weighted average of
    both; a sample more than 2x away from the estimate replaces it (a step change)."""

    alpha: float = 0.5
    min_bytes: int = 64 * 1024
    estimate: Optional[float] = None
    samples: deque = field(default_factory=lambda: deque(maxlen=50))

    def observe(self, nbytes: int, seconds: float, kind: str) -> None:
        if nbytes < self.min_bytes or seconds <= 0:
            return
        mbps = nbytes * 8 / seconds / 1e6
        self.samples.append((time.time(), kind, mbps))
        if self.estimate is None or not 0.5 <= mbps / self.estimate <= 2.0:
            self.estimate = mbps          # a step change (link renegotiated, shaped): jump
        else:
            self.estimate = self.alpha * mbps + (1 - self.alpha) * self.estimate


# --------------------------------------------------------------------------- group

class Group:
    """Rank 0's side of a re-formable GLOO group on a persistent TCPStore."""

    def __init__(self, world_size: int, host: str, port: int, timeout_s: float,
                 join_timeout_s: float = 120.0):
        self.world_size, self.timeout_s, self.join_timeout_s = world_size, timeout_s, join_timeout_s
        self.store = dist.TCPStore(host, port, world_size=None, is_master=True,
                                   wait_for_workers=False, timeout=_dt.timedelta(seconds=3600))
        self.gen = 0
        self.up = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.stopping = False

    def form(self, block: bool = False) -> None:
        """(Re)form the group at the next generation, in the background unless `block`
        (a re-join already running in the background keeps going)."""
        self.up.clear()
        if self._thread is not None and self._thread.is_alive():
            return
        self.gen += 1
        self.store.set("gen", str(self.gen))
        if block:
            self._join()
        else:
            self._thread = threading.Thread(target=self._join_loop, daemon=True)
            self._thread.start()

    def _join(self) -> None:
        # the peers' start-up is waited for on the store (long), the rendezvous and every
        # operation after it carry the short timeout (module docstring: Timeouts)
        self.store.wait([f"ready/g{self.gen}/{q}" for q in range(1, self.world_size)],
                        _dt.timedelta(seconds=self.join_timeout_s))
        td = _dt.timedelta(seconds=self.timeout_s)
        dist.init_process_group("gloo", store=dist.PrefixStore(f"g{self.gen}", self.store),
                                rank=0, world_size=self.world_size, timeout=td)
        dist.distributed_c10d._get_default_group().set_timeout(td)   # collectives: the same
        self.up.set()
        log.info("group generation %d is up (%d ranks)", self.gen, self.world_size)

    def _join_loop(self) -> None:
        while not self.stopping:
            try:
                self._join()
                return
            except Exception as e:  # noqa: BLE001 - keep retrying until peers return
                log.info("re-join at generation %d failed (%s); retrying", self.gen,
                         str(e).splitlines()[0][:120])
                _destroy()
                self.gen += 1
                self.store.set("gen", str(self.gen))

    def broken(self) -> None:
        self.up.clear()
        _destroy()


def _destroy() -> None:
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a broken group may fail to tear down cleanly
        pass


# --------------------------------------------------------------------------- terminal

@dataclass
class RequestResult:
    index: int
    batch: int
    decision: Decision
    executed: str               # what actually ran (single after a fault)
    latency_ms: float
    bw_estimate: Optional[float]
    logits: torch.Tensor
    fault: Optional[str] = None
    scatter_bytes: int = 0


class AdaptiveRunner:
    """Rank 0: takes batches, decides, runs, observes the link, survives faults.

    policy(batch, bw) -> Decision. `bw` is None until the first observation;
    `initial_bw` seeds it (e.g. the bulk-transfer rate measured before serving).
    hysteresis: a new mode for a batch size replaces the last one used for that batch
    size only if its predicted latency is at least this fraction lower.
    """

    def __init__(self, adapter, policy: Callable, *, world_size: int, host: str = "127.0.0.1",
                 port: int = 29400, timeout_s: float = 10.0, join_timeout_s: float = 120.0,
                 probe_every: int = 8, probe_bytes: int = 256 * 1024, hysteresis: float = 0.1,
                 initial_bw: Optional[float] = None, exchange: str = "pairwise",
                 max_memory_mb=None, max_batch: int = 1):
        self.adapter, self.policy = adapter, policy
        self.max_memory_mb, self.max_batch = max_memory_mb, max_batch
        self.world_size, self.exchange = world_size, exchange
        self.probe_every, self.probe_bytes, self.hysteresis = probe_every, probe_bytes, hysteresis
        self.bw = BandwidthMonitor(estimate=initial_bw)
        self.group = Group(world_size, host, port, timeout_s, join_timeout_s)
        self.last: dict = {}
        self.events: list = []
        self.counts = {"faults": 0, "rejoins": 0, "local_reruns": 0, "probes": 0, "switches": 0}
        self._n = 0
        self._single = create_strategy("single").apply(adapter, DistContext(), 1)

    def check_fits(self) -> None:
        """A static mode (a policy with a fixed `strategy`) whose predicted peak
        (costmodel.memory, at `max_batch`) exceeds `max_memory_mb` on some device: raise
        ValueError in one line saying which device and by how much. Adaptive policies
        filter their own candidates (DecisionTable(max_memory_mb=))."""
        strategy = getattr(self.policy, "strategy", None)
        if self.max_memory_mb is None or strategy is None or hasattr(self.policy, "table"):
            return
        from costmodel.memory import peak_for

        ws = self.world_size if get_formula(strategy).distributed else 1
        budget = self.max_memory_mb
        budget = list(budget) if isinstance(budget, (list, tuple)) else [budget] * self.world_size
        cr = getattr(self.policy, "cr", None)
        peaks = [v / 1e6 for v in peak_for(strategy, self.adapter.shape, world_size=ws,
                                           batch=int(self.max_batch), cr=cr)]
        over = [(r, p, budget[r]) for r, p in enumerate(peaks) if p > budget[r]]
        if over:
            r, p, b = max(over, key=lambda t: t[1] - t[2])
            mode = strategy if cr is None else f"{strategy}(cr={cr:g})"
            raise ValueError(f"static mode {mode} does not fit: predicted peak {p:.1f} MB on device {r} "
                             f"at batch {self.max_batch} > max_memory_mb={b:g}")

    def start(self, block: bool = True) -> "AdaptiveRunner":
        self.check_fits()                 # before any peer is waited for
        self.group.form(block=block)
        return self

    # ---- decisions
    def decide(self, batch: int) -> Decision:
        dec = self.policy(batch, self.bw.estimate)
        prev = self.last.get(batch)
        if prev is not None and prev.mode != dec.mode and prev.predicted_ms and dec.predicted_ms:
            now_prev = self.policy.predict(batch, self.bw.estimate, prev) \
                if hasattr(self.policy, "predict") else prev.predicted_ms
            if now_prev is not None and dec.predicted_ms > (1 - self.hysteresis) * now_prev:
                dec = dataclasses.replace(prev, predicted_ms=now_prev)   # hold: gain too small
        if prev is None or prev.mode != dec.mode:
            self.counts["switches"] += prev is not None
        self.last[batch] = dec
        return dec

    # ---- serving
    @torch.inference_mode()
    def submit(self, inputs) -> RequestResult:
        """Run one batch; never raises for a peer failure."""
        idx, self._n = self._n, self._n + 1
        batch = pack_inputs(inputs)[0].shape[0]
        if self.group.up.is_set() and self.probe_every and idx % self.probe_every == 0:
            self._probe()
        dec = self.decide(batch)
        t0 = time.perf_counter()
        fault, executed, scatter = None, "single", 0
        if get_formula(dec.strategy).distributed and self.group.up.is_set():
            try:
                logits, scatter = self._run_distributed(dec, inputs, batch)
                executed = dec.mode
            except Exception as e:  # noqa: BLE001 - any exchange failure means: go local
                fault = str(e).splitlines()[0][:200]
                self._on_fault(idx, fault)
                logits = self._single(inputs).logits
                self.counts["local_reruns"] += 1
        else:
            logits = self._single(inputs).logits
        ms = (time.perf_counter() - t0) * 1e3
        return RequestResult(idx, batch, dec, executed, ms, self.bw.estimate, logits, fault, scatter)

    def _run_distributed(self, dec: Decision, inputs, batch: int):
        """Tell the workers what to run and send each its input: its own embedded rows
        (B, L_q, d) for models without masks (ViT: half an image costs more than its
        rows), else the raw inputs (token ids are small; masks need every position)."""
        opts = _options(dec.strategy, dec.m)
        ctx = DistContext(0, self.world_size, torch.device("cpu"), self.exchange)
        runner = create_strategy(dec.strategy, **opts).apply(self.adapter, ctx, batch)
        by_rows = token_info(self.adapter, inputs) is None
        if by_rows:
            full = self.adapter.embed(inputs)
            starts = offsets(runner.plan.sizes)
            per_rank = [[full[:, a:a + n].contiguous()] for a, n in zip(starts, runner.plan.sizes)]
        else:
            per_rank = [[t.contiguous() for t in pack_inputs(inputs)]] * self.world_size
        reqs = []
        for q in range(1, self.world_size):
            h = _header(OP_RUN, dec.strategy, dec.m or 0, per_rank[q])
            h[ROWS_FLAG] = int(by_rows)
            reqs.append(dist.isend(h, q))
            reqs += [dist.isend(t, q) for t in per_rank[q]]
        for r in reqs:
            r.wait()
        nbytes = sum(t.numel() * t.element_size() for q in range(1, self.world_size) for t in per_rank[q])
        res = runner(rows=per_rank[0][0]) if by_rows else runner(inputs)
        # Passive estimate from this request's own exchanges. A send's completion only
        # means the kernel took the bytes (socket buffers), so send times are not used;
        # an exchange's bytes / comm time is a lower bound (it includes waiting for the
        # peer): the block with the least waiting gives the sample.
        best = max(((b["comm_bytes"], b["comm_ms"]) for b in res.timing["blocks"]
                    if b["comm_ms"] > 0 and b["comm_bytes"] >= self.bw.min_bytes),
                   key=lambda bt: bt[0] / bt[1], default=None)
        if best is not None:
            self.bw.observe(best[0], best[1] / 1e3, "passive")   # all of it leaves on our link
        return res.logits, nbytes

    def _probe(self) -> None:
        payload = torch.zeros(self.probe_bytes // 4, dtype=torch.float32)
        ack = torch.zeros(1)
        try:
            for q in range(1, self.world_size):
                dist.send(_header(OP_PROBE, tensors=[payload]), q)
                t0 = time.perf_counter()
                dist.send(payload, q)
                dist.recv(ack, q)
                self.bw.observe(payload.numel() * 4, time.perf_counter() - t0, "probe")
            self.counts["probes"] += 1
        except Exception as e:  # noqa: BLE001
            self._on_fault(self._n, f"probe failed: {str(e).splitlines()[0][:200]}")

    def _on_fault(self, idx: int, msg: str) -> None:
        self.counts["faults"] += 1
        self.events.append({"request": idx, "event": "fault", "detail": msg, "time": time.time()})
        log.warning("request %d: peer failure (%s); running locally, re-join in background", idx, msg)
        self.group.broken()
        self.counts["rejoins"] += 1
        self.group.form(block=False)

    def close(self) -> None:
        self.group.stopping = True
        if self.group.up.is_set():
            try:
                for q in range(1, self.world_size):
                    dist.send(_header(OP_STOP), q)
            except Exception:  # noqa: BLE001
                pass
        _destroy()


# --------------------------------------------------------------------------- worker

def serve_worker(adapter, rank: int, world_size: int, host: str, port: int, *,
                 timeout_s: float = 10.0, idle_timeout_s: float = 3600.0,
                 exchange: str = "pairwise", input_type=torch.Tensor) -> int:
    """Worker loop: join the current generation, serve RUN/PROBE until STOP; re-join
    after a failure. Returns the number of requests served."""
    store = dist.TCPStore(host, port, world_size=None, is_master=False,
                          timeout=_dt.timedelta(seconds=idle_timeout_s))
    served = 0
    failed = -1                 # the last generation this worker failed in: never re-joined
    idle = _dt.timedelta(seconds=idle_timeout_s)
    while True:
        gen = int(store.get("gen").decode())
        if gen == failed:
            time.sleep(0.2)     # rank 0 opens the next generation when it notices
            continue
        store.set(f"ready/g{gen}/{rank}", "1")
        try:
            # rank 0 starts the rendezvous as soon as every worker is ready: a short wait
            dist.init_process_group("gloo", store=dist.PrefixStore(f"g{gen}", store), rank=rank,
                                    world_size=world_size,
                                    timeout=_dt.timedelta(seconds=max(timeout_s, 30.0)))
        except Exception as e:  # noqa: BLE001
            log.info("rank %d: join at generation %d failed (%s)", rank, gen, str(e).splitlines()[0][:120])
            _destroy()
            failed = gen
            continue
        log.info("rank %d joined generation %d", rank, gen)
        try:
            while True:
                h = torch.zeros(HEADER, dtype=torch.int64)
                dist.irecv(h, 0).wait(idle)     # between requests: wait as long as idle_timeout_s
                op = int(h[0])
                if op == OP_STOP:
                    _destroy()
                    return served
                shapes = _shapes(h)
                tensors = [torch.empty(s, dtype=dt) for dt, s in shapes]
                for t in tensors:
                    dist.recv(t, 0)
                if op == OP_PROBE:
                    dist.send(torch.zeros(1), 0)
                    continue
                strategy = list_strategies()[int(h[1])]
                opts = _options(strategy, int(h[2]))
                ctx = DistContext(rank, world_size, torch.device("cpu"), exchange)
                runner = create_strategy(strategy, **opts).apply(adapter, ctx, tensors[0].shape[0])
                with torch.inference_mode():
                    if int(h[ROWS_FLAG]):
                        runner(rows=tensors[0])
                    else:
                        runner(unpack_like(input_type, tensors))
                served += 1
        except Exception as e:  # noqa: BLE001 - rank 0 went away or the group broke
            log.info("rank %d: group generation %d failed (%s); re-joining", rank, gen,
                     str(e).splitlines()[0][:120])
            _destroy()
            failed = gen
