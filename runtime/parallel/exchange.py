"""Process groups, the per-block feature exchange over GLOO, and its timing.

GLOO moves CPU tensors only. When the model sits on a CUDA device every exchanged
tensor is copied device->host before and host->device after the collective; that
*staging* is timed apart from the network *communication* (the device is
synchronised before each clock read), as the Jetson paper measures it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.distributed as dist

EXCHANGES = ("pairwise", "allgather")
PHASES = ("compute", "staging", "comm")
DEFAULT_TIMEOUT_S = 60.0


def init_process_group(rank: int, world_size: int, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                       master_addr: Optional[str] = None, master_port: Optional[int] = None) -> None:
    """GLOO process group from env (torchrun) or explicit address; always with a timeout
    so that a dead peer makes a collective fail instead of hang."""
    if master_addr:
        os.environ["MASTER_ADDR"] = master_addr
    if master_port:
        os.environ["MASTER_PORT"] = str(master_port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=_dt.timedelta(seconds=timeout_s))


def destroy() -> None:
    """Tear the group down once every rank is done with it: a barrier first, so no peer
    is still sending while sockets close (closing under traffic can abort gloo's
    threads at exit)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a dead peer: tear down anyway
            pass
        dist.destroy_process_group()


@dataclass
class BlockTiming:
    """One block on one rank. Times in ms, bytes sent by this rank."""

    compute_ms: float = 0.0
    staging_ms: float = 0.0
    comm_ms: float = 0.0
    comm_bytes: int = 0
    staged_bytes: int = 0


@dataclass
class Timer:
    """Accumulates phase times per block; optional torch.profiler labels per phase."""

    device: torch.device
    label: bool = False
    blocks: list = field(default_factory=list)
    extra: BlockTiming = field(default_factory=BlockTiming)   # embedding, head
    _cur: Optional[BlockTiming] = None

    def start_block(self) -> None:
        self._cur = BlockTiming()
        self.blocks.append(self._cur)

    def end_blocks(self) -> None:
        self._cur = None

    def enter_block(self, i: int) -> None:
        """Charge the following phases to block i, creating blocks up to i (strategies
        that run only some blocks, or out of order: pipeline)."""
        while len(self.blocks) <= i:
            self.blocks.append(BlockTiming())
        self._cur = self.blocks[i]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        tgt = self._cur if self._cur is not None else self.extra
        rec = (torch.profiler.record_function(f"block{len(self.blocks) - 1}/{name}"
                                              if self._cur is not None else name)
               if self.label else contextlib.nullcontext())
        self._sync()
        t0 = time.perf_counter()
        with rec:
            yield tgt
            self._sync()
        setattr(tgt, f"{name}_ms", getattr(tgt, f"{name}_ms") + (time.perf_counter() - t0) * 1e3)

    def summary(self) -> dict:
        tot = {f"{p}_ms": sum(getattr(b, f"{p}_ms") for b in self.blocks) + getattr(self.extra, f"{p}_ms")
               for p in PHASES}
        tot["comm_bytes"] = sum(b.comm_bytes for b in self.blocks) + self.extra.comm_bytes
        tot["staged_bytes"] = sum(b.staged_bytes for b in self.blocks) + self.extra.staged_bytes
        return {
            "totals": tot,
            "blocks": [b.__dict__.copy() for b in self.blocks],
            "outside_blocks": self.extra.__dict__.copy(),
        }


class Exchanger:
    """Exchange one tensor per rank with every other rank, per block.

    `exchange(t, rows)` sends this rank's (B, rows[rank], d) tensor and returns the list
    of every rank's tensor (own entry is `t` itself). Modes:
      - "pairwise": irecv from every peer posted before isend to every peer (no
        head-of-line blocking behind one slow pair; the default),
      - "allgather": stock dist.all_gather on tensors padded to the largest rows.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, mode: str = "pairwise",
                 timer: Optional[Timer] = None):
        if mode not in EXCHANGES:
            raise ValueError(f"unknown exchange {mode!r}; known: {list(EXCHANGES)}")
        self.rank, self.world, self.device, self.mode = rank, world_size, device, mode
        self.timer = timer or Timer(device)
        self.on_accel = device.type != "cpu"

    def _to_host(self, t: torch.Tensor) -> torch.Tensor:
        if self.on_accel:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=torch.cuda.is_available())
            host.copy_(t, non_blocking=True)
            return host
        return t.contiguous()

    def exchange(self, t: torch.Tensor, rows: Sequence[int]) -> list:
        B, _, d = t.shape
        with self.timer.phase("staging") as rec:
            host = self._to_host(t)
            if self.on_accel:
                rec.staged_bytes += host.numel() * host.element_size()
        with self.timer.phase("comm") as rec:
            if self.mode == "pairwise":
                got = self._pairwise(host, rows, B, d)
                rec.comm_bytes += host.numel() * host.element_size() * (self.world - 1)
            else:
                got, sent = self._allgather(host, rows, B, d)
                rec.comm_bytes += sent * (self.world - 1)
        out = []
        with self.timer.phase("staging") as rec:
            for q, g in enumerate(got):
                if q == self.rank:
                    out.append(t)
                else:
                    if self.on_accel:
                        rec.staged_bytes += g.numel() * g.element_size()
                    out.append(g.to(self.device, non_blocking=True) if self.on_accel else g)
        return out

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of every rank's `t` (same shape on all ranks), GLOO's ring all-reduce;
        bytes counted: the ring's 2 (P-1)/P share of t per rank."""
        from costmodel.formulas import ring_allreduce_bytes

        with self.timer.phase("staging") as rec:
            host = t.contiguous().to("cpu") if self.on_accel else t.contiguous().clone()
            if self.on_accel:
                rec.staged_bytes += host.numel() * host.element_size()
        with self.timer.phase("comm") as rec:
            dist.all_reduce(host)
            rec.comm_bytes += ring_allreduce_bytes(host.numel(), self.world, host.element_size())
        with self.timer.phase("staging") as rec:
            if self.on_accel:
                rec.staged_bytes += host.numel() * host.element_size()
                return host.to(self.device)
        return host

    def gather_to_root(self, part: torch.Tensor):
        """Every rank's (B, k, d) `part` on rank 0 (list by rank), None elsewhere
        (parallel/pool.py: a head that pools over every row)."""
        from .pool import gather_partials

        return gather_partials(part, self.rank, self.world, self.device, self.timer)

    def gather_rows(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """The full (B, N, d) sequence from every rank's rows, on every rank (parity
        checks and `features=True`; not part of the timed inference)."""
        return gather_rows_to_all(x, sizes, self.rank)

    def _pairwise(self, host, rows, B, d) -> list:
        bufs = [None] * self.world
        reqs = []
        for q in range(self.world):
            if q != self.rank:
                bufs[q] = torch.empty(B, rows[q], d, dtype=host.dtype)
                reqs.append(dist.irecv(bufs[q], src=q))
        for q in range(self.world):
            if q != self.rank:
                reqs.append(dist.isend(host, dst=q))
        for r in reqs:
            r.wait()
        bufs[self.rank] = host
        return bufs

    def _allgather(self, host, rows, B, d):
        mx = max(rows)
        if host.shape[1] < mx:
            pad = torch.zeros(B, mx - host.shape[1], d, dtype=host.dtype)
            host = torch.cat([host, pad], dim=1)
        bufs = [torch.empty(B, mx, d, dtype=host.dtype) for _ in range(self.world)]
        dist.all_gather(bufs, host)
        return [b[:, :rows[q]] for q, b in enumerate(bufs)], host.numel() * host.element_size()


def gather_json(obj, rank: int, world_size: int) -> Optional[list]:
    """Every rank's JSON-serialisable `obj`, returned on all ranks (no pickle on the
    wire: the payload is UTF-8 JSON in a uint8 tensor)."""
    if world_size == 1 or not dist.is_initialized():
        return [obj]
    data = json.dumps(obj).encode()
    n = torch.tensor([len(data)], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size)]
    dist.all_gather(sizes, n)
    mx = int(max(s.item() for s in sizes))
    buf = torch.zeros(mx, dtype=torch.uint8)
    buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    outs = [torch.zeros(mx, dtype=torch.uint8) for _ in range(world_size)]
    dist.all_gather(outs, buf)
    return [json.loads(bytes(o[: int(s.item())].tolist()).decode()) for o, s in zip(outs, sizes)]


def gather_rows_to_all(x: torch.Tensor, sizes: Sequence[int], rank: int) -> torch.Tensor:
    """Reassemble the full (B, N, d) sequence from every rank's rows (used for parity
    checks and `--features`; not part of the timed inference)."""
    if not dist.is_initialized():
        return x
    ex = Exchanger(rank, len(sizes), x.device, "allgather", Timer(x.device))
    return torch.cat(ex.exchange(x, sizes), dim=1)
