"""One distributed inference run on one rank: build model and inputs from the seed,
apply the strategy, warm up, time `repeats` forward passes, gather every rank's timing.

`run_rank(cfg)` is what each process executes (spawned locally, under torchrun, or in
an emulated-network namespace). It returns the JSON-ready result on rank 0.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch

from . import exchange as xch
from .models import ModelSpec, build_adapter, family_of, shape_spec
from .strategies import DistContext, create_strategy, list_strategies

log = logging.getLogger("runtime")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RunConfig:
    """A resolved `python -m runtime run` invocation."""

    model: str = "vit_tiny_patch16_224"
    strategy: str = "prism"
    world_size: int = 2
    batch: int = 1
    cr: Optional[float] = None
    m: Optional[int] = None
    log_bias: bool = True
    averaged: str = "output"
    partition: Optional[tuple] = None
    exchange: str = "pairwise"
    seed: int = 0
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    depth: Optional[int] = None
    num_classes: Optional[int] = None
    checkpoint: Optional[str] = None
    device: str = "cpu"
    threads: int = 1
    pin: bool = False
    warmup: int = 1
    repeats: int = 1
    timeout_s: float = xch.DEFAULT_TIMEOUT_S
    trace_dir: Optional[str] = None
    save_output: Optional[str] = None
    features: bool = False
    seq_len: Optional[int] = None        # text models (BERT, GPT-2): tokens N
    lengths: Optional[tuple] = None      # BERT: valid tokens per sample, cycled (padding)
    heads: Optional[tuple] = None        # tensor_parallel / galaxy: heads per device
    cols: Optional[tuple] = None         # tensor_parallel / galaxy: MLP columns per device
    collective: str = "native"           # tensor_parallel: native (gloo ring) | pairwise
    tiles: int = 1                       # galaxy: row tiles for comm/compute overlap
    overlap: bool = True                 # galaxy: overlap communication with computation

    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, img_size=self.img_size, patch_size=self.patch_size,
                         num_classes=self.num_classes, depth=self.depth,
                         checkpoint=self.checkpoint, seed=self.seed, seq_len=self.seq_len,
                         lengths=self.lengths)

    def strategy_options(self) -> dict:
        if self.strategy == "prism":
            return dict(cr=self.cr, m=self.m, log_bias=self.log_bias, averaged=self.averaged)
        if self.strategy == "tensor_parallel":
            return dict(heads=self.heads, cols=self.cols, collective=self.collective)
        if self.strategy == "galaxy":
            return dict(heads=self.heads, cols=self.cols, tiles=self.tiles, overlap=self.overlap)
        return {}


def validate(cfg: RunConfig) -> None:
    """Every argument checked before any process starts; raises ValueError (one line)."""
    if cfg.strategy not in list_strategies():
        raise ValueError(f"unknown strategy {cfg.strategy!r}; known: {list_strategies()}")
    if cfg.batch < 1:
        raise ValueError(f"batch={cfg.batch} must be >= 1")
    if cfg.world_size < 1:
        raise ValueError(f"world_size={cfg.world_size} must be >= 1")
    if cfg.strategy == "single" and cfg.world_size != 1:
        raise ValueError(f"strategy 'single' runs on one device; world_size={cfg.world_size} must be 1")
    if cfg.strategy not in ("tensor_parallel", "galaxy") and (cfg.heads or cfg.cols):
        raise ValueError(f"--heads/--cols apply to tensor_parallel and galaxy, not to {cfg.strategy!r}")
    if cfg.strategy != "prism" and (cfg.cr is not None or cfg.m is not None):
        raise ValueError(f"--cr/--m apply to prism only, not to {cfg.strategy!r}")
    if cfg.strategy == "prism" and (cfg.cr is None) == (cfg.m is None):
        raise ValueError("prism needs exactly one of --cr or --m")
    if cfg.repeats < 1 or cfg.warmup < 0:
        raise ValueError(f"repeats={cfg.repeats} must be >= 1 and warmup={cfg.warmup} >= 0")
    if cfg.device not in ("cpu",) and not cfg.device.startswith("cuda"):
        raise ValueError(f"device={cfg.device!r}; allowed: cpu, cuda, cuda:N")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device!r} requested but CUDA is not available here")
    if cfg.checkpoint and not os.path.exists(cfg.checkpoint):
        raise ValueError(f"checkpoint {cfg.checkpoint!r} does not exist")
    if (cfg.seq_len is not None or cfg.lengths) and family_of(cfg.model) == "timm":
        raise ValueError(f"--seq-len/--lengths apply to text models (bert-*, gpt2*, "
                         f"all-minilm-l6-v2), not to {cfg.model!r}")
    # shapes from the model definition (meta device: no weights built)
    strat = create_strategy(cfg.strategy, **cfg.strategy_options())
    ad_stub = _ShapeOnly(_shape_of(cfg))
    plan = strat.plan(ad_stub, DistContext(world_size=cfg.world_size, partition=cfg.partition,
                                           exchange=cfg.exchange), cfg.batch)
    if cfg.lengths:
        lens = [cfg.lengths[b % len(cfg.lengths)] for b in range(cfg.batch)]
        starts = [sum(plan.sizes[:q]) for q in range(len(plan.sizes))]
        idle = [q for q in range(len(plan.sizes)) if all(n_ <= starts[q] for n_ in lens)]
        if idle:
            raise ValueError(f"partition {list(plan.sizes)} gives device(s) {idle} only padding "
                             f"for every sample (lengths {lens}); lower --seq-len or set --partition")


class _ShapeOnly:
    def __init__(self, shape):
        self.shape = shape


def _shape_of(cfg: RunConfig):
    with torch.device("meta"):
        return build_adapter(shape_spec(cfg.spec()), device="meta").shape


def _setup_threads(cfg: RunConfig, rank: int) -> None:
    torch.set_num_threads(cfg.threads)
    if cfg.pin and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[rank % len(cpus)]})


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=float), q))


def run_rank(cfg: RunConfig, rank: int = 0, world_size: int = 1) -> Optional[dict]:
    """Execute one run on this rank; returns the result dict on rank 0 (None elsewhere).
    The process group must already be initialised when world_size > 1."""
    _setup_threads(cfg, rank)
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    adapter = build_adapter(cfg.spec(), device)
    inputs = adapter.make_inputs(cfg.batch, cfg.seed, device)
    ctx = DistContext(rank, world_size, device, cfg.exchange, cfg.partition,
                      profile_labels=cfg.trace_dir is not None)
    runner = create_strategy(cfg.strategy, **cfg.strategy_options()).apply(adapter, ctx, cfg.batch)

    for _ in range(cfg.warmup):
        runner(inputs)
    lat, timings, res = [], [], None
    prof = None
    if cfg.trace_dir:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=acts)
        prof.__enter__()
    for i in range(cfg.repeats):
        if world_size > 1:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        res = runner(inputs, features=cfg.features and i == cfg.repeats - 1)
        lat.append((time.perf_counter() - t0) * 1e3)
        timings.append(res.timing)
    if prof is not None:
        prof.__exit__(None, None, None)
        os.makedirs(cfg.trace_dir, exist_ok=True)
        prof.export_chrome_trace(os.path.join(cfg.trace_dir, f"trace_rank{rank}.json"))

    mine = {"rank": rank, "latency_ms": lat, "timing": _median_timing(timings)}
    every = xch.gather_json(mine, rank, world_size)
    if rank != 0:
        return None
    plan = res.plan
    # end-to-end latency of a repeat = slowest rank
    e2e = [max(r["latency_ms"][i] for r in every) for i in range(cfg.repeats)]
    out = {
        "schema_version": SCHEMA_VERSION,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "strategy": cfg.strategy, "model": cfg.model, "seq_len": plan.shape.seq_len,
        "world_size": world_size, "batch": cfg.batch, "partition": list(plan.sizes),
        "m": plan.m, "cr": plan.cr, "exchange": cfg.exchange, "device": str(device),
        "latency_ms": {"median": statistics.median(e2e), "p10": _pct(e2e, 10),
                       "p90": _pct(e2e, 90), "n": len(e2e), "samples": e2e},
        "per_sample_ms": statistics.median(e2e) / cfg.batch,
        "analytical": plan.to_dict(),
        "ranks": [{"rank": r["rank"], **r["timing"]["totals"], "blocks": r["timing"]["blocks"],
                   "outside_blocks": r["timing"]["outside_blocks"]} for r in every],
    }
    out["output_shape"] = list(res.logits.shape)
    if cfg.save_output:
        _save_npy(cfg.save_output, res.logits.float().cpu().numpy())
        out["saved_output"] = cfg.save_output
    if cfg.features and res.features is not None:
        out["_features"] = res.features  # in-process callers only; dropped before JSON
    out["_logits"] = res.logits
    return out


def _median_timing(timings: list) -> dict:
    """Per-phase medians over repeats (per block and totals) for one rank."""
    if len(timings) == 1:
        return timings[0]
    med = lambda xs: float(statistics.median(xs))  # noqa: E731
    tot = {k: med([t["totals"][k] for t in timings]) for k in timings[0]["totals"]}
    blocks = [{k: med([t["blocks"][i][k] for t in timings]) for k in timings[0]["blocks"][i]}
              for i in range(len(timings[0]["blocks"]))]
    ob = {k: med([t["outside_blocks"][k] for t in timings]) for k in timings[0]["outside_blocks"]}
    return {"totals": tot, "blocks": blocks, "outside_blocks": ob}


def _save_npy(path: str, arr: np.ndarray) -> None:
    """Atomic .npy write (temp file in the same folder, then rename)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)
