"""The P-partition forward of a strategy in one process, differentiable (training).

    em = EmulatedModel(adapter, create_strategy("prism", cr=4), world_size=2)
    out = em(images)              # out.logits: what the GLOO runtime's rank 0 returns
    loss = F.cross_entropy(out.logits, labels); loss.backward()

Nothing here re-implements a strategy. Each rank is a thread running the strategy's own
`Runner.forward` (its masks, segment-mean matrices, block steps); the only thing that
changes is the transport: the GLOO `Exchanger` is replaced by `LocalExchanger`, which
hands the *same tensor objects* between the rank threads through an in-memory mailbox.
So the result equals the GLOO runtime's for the same weights and inputs (tested, float32
tolerance), and autograd sees one graph across the P partitions: a loss on rank 0's
logits back-propagates through the segment means every peer sent.

Strategies whose messages all go through the Exchanger handed to `block_step` say so
with `emulated = True` (single, voltage, prism, coformer); the weight-splitting strategies
that drive GLOO themselves (tensor_parallel, galaxy, pipeline) are exact and never need
training, and are refused with one line.

Thread safety: the ranks share one adapter and its modules. Adapters keep no per-pass
state on themselves except RoPE positions, which the Llama adapter binds per thread.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from costmodel.formulas import ring_allreduce_bytes
from ..parallel.base import DistContext, Strategy, create_strategy
from ..parallel.exchange import DEFAULT_TIMEOUT_S, Timer


class Mailbox:
    """All-gather of one object per rank among `world` rank threads that take turns.

    Ranks run one at a time, in rank order, between two collectives: rank r computes
    until its next collective, posts its tensor and hands the turn to r + 1; the last
    rank to post completes the round and rank 0 goes on. The turns make a pass
    deterministic (autograd records every node in the same order, so a seeded fine-tune
    gives the same weights twice) and leave every core to torch's own threads. Ranks get
    the posted tensor objects themselves, so gradients flow between them. A rank that
    fails aborts the box (its peers raise instead of waiting); a turn that does not come
    within `timeout_s` raises TimeoutError."""

    def __init__(self, world: int, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.world, self.timeout_s = world, timeout_s
        self.cv = threading.Condition()
        self.turn, self.broken = 0, False
        self.slots: list = [None] * world
        self.rounds: dict = {}          # round -> [every rank's object, readers left]
        self.round_of = [0] * world

    def _wait_turn(self, rank: int) -> None:
        if not self.cv.wait_for(lambda: self.broken or self.turn == rank, timeout=self.timeout_s):
            raise TimeoutError(f"emulated rank {rank}: no turn within {self.timeout_s:g} s")
        if self.broken:
            raise threading.BrokenBarrierError(f"emulated rank {rank}: a peer failed")

    def start(self, rank: int) -> None:
        with self.cv:
            self._wait_turn(rank)

    def finish(self, rank: int) -> None:
        with self.cv:
            self.turn = (rank + 1) % self.world
            self.cv.notify_all()

    def all_gather(self, rank: int, obj) -> list:
        with self.cv:
            rnd = self.round_of[rank]
            self.round_of[rank] += 1
            self.slots[rank] = obj
            if rank == self.world - 1:          # every rank has posted: the round is complete
                self.rounds[rnd] = [list(self.slots), self.world]
            self.turn = (rank + 1) % self.world
            self.cv.notify_all()
            self._wait_turn(rank)
            entry = self.rounds[rnd]
            entry[1] -= 1
            if not entry[1]:
                del self.rounds[rnd]
            return entry[0]

    def abort(self) -> None:
        with self.cv:
            self.broken = True
            self.cv.notify_all()


class LocalExchanger:
    """Exchanger's interface (exchange, all_reduce, gather_to_root, gather_rows) over a
    Mailbox; bytes are counted as the GLOO Exchanger counts them, so an emulated pass
    reports the same comm_bytes as a real one."""

    def __init__(self, box: Mailbox, rank: int, mode: str, timer: Timer):
        self.box, self.rank, self.world, self.mode, self.timer = box, rank, box.world, mode, timer

    def exchange(self, t: torch.Tensor, rows: Sequence[int]) -> list:
        with self.timer.phase("comm") as rec:
            parts = self.box.all_gather(self.rank, t)
            per = t.shape[0] * (max(rows) if self.mode == "allgather" else t.shape[1]) * t.shape[2]
            rec.comm_bytes += per * t.element_size() * (self.world - 1)
        return parts

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        with self.timer.phase("comm") as rec:
            parts = self.box.all_gather(self.rank, t)
            rec.comm_bytes += ring_allreduce_bytes(t.numel(), self.world, t.element_size())
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out

    def gather_to_root(self, part: torch.Tensor):
        with self.timer.phase("comm") as rec:
            parts = self.box.all_gather(self.rank, part)
            if self.rank != 0:
                rec.comm_bytes += part.numel() * part.element_size()
        return parts if self.rank == 0 else None

    def gather_rows(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        return torch.cat(self.box.all_gather(self.rank, x), dim=1)


@dataclass
class EmulatedOutput:
    """logits: rank 0's (per-position heads: every rank's rows, concatenated in row
    order, i.e. the full (B, N, vocab)); features: the full (B, N, d) normed features
    when asked; timings: each rank's Timer summary (comm_bytes as on GLOO)."""

    logits: Optional[torch.Tensor]
    features: Optional[torch.Tensor]
    timings: list


class EmulatedModel:
    """`world_size` ranks of `strategy` on `adapter`, run as threads of this process.

    The per-rank runners (and their prepared `state`: segment-mean matrices, sub-model
    weights) are built once and kept, so a strategy's own state can be trained too.
    `batch` only labels the plans' byte counts; any batch size may be passed."""

    def __init__(self, adapter, strategy, world_size: int, *, partition=None,
                 exchange: str = "pairwise", batch: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S,
                 **options):
        if isinstance(strategy, str):
            strategy = create_strategy(strategy, **options)
        elif options:
            raise ValueError("options go with a strategy name, not a Strategy instance")
        if not isinstance(strategy, Strategy):
            raise ValueError(f"not a strategy: {strategy!r}")
        if not getattr(strategy, "emulated", False):
            from ..parallel.base import list_strategies, strategy_class
            ok = [n for n in list_strategies() if getattr(strategy_class(n), "emulated", False)]
            raise ValueError(f"strategy {strategy.name!r} drives GLOO itself and cannot be emulated "
                             f"in one process; emulated strategies: {ok}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.adapter, self.strategy, self.world_size = adapter, strategy, int(world_size)
        self.exchange, self.timeout_s = exchange, timeout_s
        dev = next(adapter.model.parameters()).device
        self.runners = [strategy.apply(adapter, DistContext(rank=r, world_size=self.world_size,
                                                            device=dev, exchange=exchange,
                                                            partition=partition), batch)
                        for r in range(self.world_size)]
        self._pool = ThreadPoolExecutor(self.world_size, thread_name_prefix="emulated-rank")

    @property
    def plan(self):
        return self.runners[0].plan

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def __call__(self, inputs, *, features: bool = False) -> EmulatedOutput:
        box = Mailbox(self.world_size, self.timeout_s)
        grad, infer = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def rank_main(r: int):
            try:
                box.start(r)
                with torch.inference_mode(infer), torch.set_grad_enabled(grad):
                    run = self.runners[r]
                    res = run.forward(inputs, features=features,
                                      exchanger=lambda timer: LocalExchanger(box, r, self.exchange, timer))
                box.finish(r)
                return res
            except BaseException:
                box.abort()             # peers raise BrokenBarrierError instead of waiting
                raise

        futs = [self._pool.submit(rank_main, r) for r in range(self.world_size)]
        results, errors = [], []
        for f in futs:
            try:
                results.append(f.result())
            except threading.BrokenBarrierError as e:
                errors.append(e)
            except BaseException as e:  # noqa: BLE001 - the first real error wins
                errors.insert(0, e)
        if errors:
            raise errors[0]
        ad = self.adapter
        per_position = (getattr(ad, "head_per_position", False) and not self.strategy.all_rows
                        and self.world_size > 1)
        logits = (torch.cat([res.logits for res in results], dim=1) if per_position
                  else results[0].logits)
        return EmulatedOutput(logits, results[0].features, [res.timing for res in results])
