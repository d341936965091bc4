"""One distributed inference run (`python -m runtime run`): build model and inputs from
the seed, apply the strategy, time `repeats` forward passes, gather every rank's timing.

`run_rank(cfg)` is what each process executes (spawned locally, under torchrun, or in
an emulated-network namespace). It returns the JSON-ready result on rank 0. The CLI
half (add_args / main) builds one flag per strategy option from the registry.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import statistics
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
from costmodel import checks, safeio

from ..models import ModelSpec, build_adapter, family_of, shape_spec
from ..parallel import DistContext, create_strategy, list_strategies
from ..parallel import exchange as xch
from ..errors import UsageError
from .memory import rank_memory, rss_baseline
from .timing import median_timing, slowest_rank, timed_repeats

log = logging.getLogger("runtime")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RunConfig:
    """A resolved `python -m runtime run` invocation."""

    model: str = "vit_tiny_patch16_224"
    strategy: str = "prism"
    world_size: int = 2
    batch: int = 1
    options: dict = field(default_factory=dict)   # the strategy's own (prism: cr or m, ...)
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
    memory: bool = True                  # one extra un-timed forward: measured peaks (measure/memory.py)

    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, img_size=self.img_size, patch_size=self.patch_size,
                         num_classes=self.num_classes, depth=self.depth,
                         checkpoint=self.checkpoint, seed=self.seed, seq_len=self.seq_len,
                         lengths=self.lengths)

    def create_strategy(self):
        return create_strategy(self.strategy, **self.options)


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
    if cfg.repeats < 1 or cfg.warmup < 0:
        raise ValueError(f"repeats={cfg.repeats} must be >= 1 and warmup={cfg.warmup} >= 0")
    if cfg.device not in ("cpu",) and not cfg.device.startswith("cuda"):
        raise ValueError(f"device={cfg.device!r}; allowed: cpu, cuda, cuda:N")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device!r} requested but CUDA is not available here")
    if cfg.checkpoint and not os.path.exists(cfg.checkpoint):
        raise ValueError(f"checkpoint {cfg.checkpoint!r} does not exist")
    checks.positive("timeout", cfg.timeout_s, unit="s")
    checks.count("threads", cfg.threads)
    # outputs: refused now, not after the run (safeio: no file is created by the checks)
    if cfg.save_output:
        safeio.check_writable(cfg.save_output)
    if cfg.trace_dir:
        safeio.check_writable_dir(cfg.trace_dir)
    if cfg.checkpoint and os.path.isfile(cfg.checkpoint):
        from ..models.cards import base_spec, is_card
        from ..models.registry import load_state_dict
        if is_card(cfg.checkpoint):          # a fine-tune card: readable, and fine-tunes this model
            base_spec(cfg.spec(), cfg.checkpoint)
        else:
            load_state_dict(cfg.checkpoint)  # a checkpoint weights_only refuses: one line now
    if (cfg.seq_len is not None or cfg.lengths) and family_of(cfg.model) == "vit":
        raise ValueError(f"--seq-len/--lengths apply to text models (bert-*, gpt2*, "
                         f"all-minilm-l6-v2), not to {cfg.model!r}")
    # shapes from the model definition (meta device: no weights built)
    strat = cfg.create_strategy()
    ad_stub = _ShapeOnly(_shape_of(cfg), family_of(cfg.model))
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
    """What a strategy's plan() may read before any weights exist: shape and family."""

    def __init__(self, shape, family=None):
        self.shape, self.family = shape, family


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
    rss0 = rss_baseline()                    # before the model: the RSS cross-check's baseline
    adapter = build_adapter(cfg.spec(), device)
    inputs = adapter.make_inputs(cfg.batch, cfg.seed, device)
    ctx = DistContext(rank, world_size, device, cfg.exchange, cfg.partition,
                      profile_labels=cfg.trace_dir is not None)
    runner = cfg.create_strategy().apply(adapter, ctx, cfg.batch)

    prof = None
    if cfg.trace_dir:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=acts)
        prof.__enter__()
    lat, timings, res = timed_repeats(runner, inputs, warmup=cfg.warmup, repeats=cfg.repeats,
                                      world_size=world_size, features_last=cfg.features)
    if prof is not None:
        prof.__exit__(None, None, None)
        safeio.ensure_dir(cfg.trace_dir)
        safeio.write_with(os.path.join(cfg.trace_dir, f"trace_rank{rank}.json"),
                          prof.export_chrome_trace, by_path=True)

    mine = {"rank": rank, "latency_ms": lat, "timing": median_timing(timings)}
    if cfg.memory:       # one extra forward after the timed ones: timings untouched
        mine.update(rank_memory(runner, inputs, adapter, res.plan, rank, device, baseline=rss0))
    every = xch.gather_json(mine, rank, world_size)
    if rank != 0:
        return None
    plan = res.plan
    e2e = slowest_rank([r["latency_ms"] for r in every])
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
                   "outside_blocks": r["timing"]["outside_blocks"],
                   **{k: r[k] for k in ("memory_peak_bytes", "memory_peak_predicted_bytes", "memory")
                      if k in r}} for r in every],
    }
    if cfg.memory:       # measured / predicted activations + buffers per device (measure/memory.py)
        out["memory_peak_bytes"] = [r["memory_peak_bytes"] for r in every]
        out["memory_peak_predicted_bytes"] = [r["memory_peak_predicted_bytes"] for r in every]
    out["output_shape"] = list(res.logits.shape)
    if cfg.save_output:
        _save_npy(cfg.save_output, res.logits.float().cpu().numpy())
        out["saved_output"] = cfg.save_output
    if cfg.features and res.features is not None:
        out["_features"] = res.features  # in-process callers only; dropped before JSON
    out["_logits"] = res.logits
    return out


def _save_npy(path: str, arr: np.ndarray) -> None:
    """Atomic .npy write (safeio.write_with: temp file in the same folder, then rename;
    the temp file is removed on every failure)."""
    safeio.write_with(path, lambda f: np.save(f, arr))


# --------------------------------------------------------------------------- CLI: run

def add_strategy_args(p: argparse.ArgumentParser) -> None:
    """--strategy plus one flag per option of every registered strategy (from the
    dataclass fields of runtime/parallel/<name>.py; an option several strategies share,
    such as heads, is one flag)."""
    from ..parallel.base import option_fields

    p.add_argument("--strategy", default="prism",
                   help=f"parallel strategy, one of {', '.join(list_strategies())}")
    seen: dict = {}
    for name in list_strategies():
        for f in option_fields(name):
            seen.setdefault(f.name, (f, []))[1].append(name)
    excl = {}
    for oname, (f, owners) in seen.items():
        md, who = f.metadata, "/".join(owners)
        flag = md.get("flag") or "--" + oname.replace("_", "-")
        kw = {"dest": f"opt_{oname}", "default": None}
        if f.type in (bool, "bool"):
            if f.default is True:
                flag = "--no-" + oname.replace("_", "-")
                kw.update(action="store_const", const=False)
            else:
                kw.update(action="store_const", const=True)
        else:
            kw.update(type=_option_parser(f))
        choices = f" ({' | '.join(md['choices'])})" if md.get("choices") else ""
        kw["help"] = f"{who}: {md.get('help', '')}{choices}"
        target = p
        key = md.get("exclusive") or (oname if oname in {m.metadata.get("exclusive")
                                                         for m, _ in seen.values()} else None)
        if key is not None:
            if key not in excl:        # (setdefault would create an empty group each time)
                excl[key] = p.add_mutually_exclusive_group()
            target = excl[key]
        target.add_argument(flag, *md.get("aliases", ()), **kw)


def _option_parser(f):
    """argparse type of an option: its metadata's `type`, else int / float / str."""
    conv = f.metadata.get("type")
    if conv is not None:            # comma-separated integer lists (heads, cols)
        def parse(s: str):
            try:
                return conv(s.split(","))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{s!r} must be comma-separated integers")
        return parse
    t = f.type if not isinstance(f.type, str) else f.type.replace("Optional[", "").rstrip("]")
    return {"int": int, "float": float, "str": str, int: int, float: float}.get(t, str)


def strategy_options_from_args(a) -> dict:
    """The options given on the command line for the chosen strategy; a flag of another
    strategy raises UsageError naming the strategies it applies to."""
    from ..parallel.base import option_fields

    own = {f.name for f in option_fields(a.strategy)}
    out = {}
    for k, v in vars(a).items():
        if not k.startswith("opt_") or v is None:
            continue
        name = k[4:]
        if name not in own:
            users = [s for s in list_strategies() if name in {f.name for f in option_fields(s)}]
            raise UsageError(f"--{name.replace('_', '-')} applies to {users}, not to {a.strategy!r}")
        out[name] = v
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit_tiny_patch16_224",
                   help="timm ViT (vit_tiny/small/base_patch16_224, deit_*, test_vit) or a text model "
                        "(bert-tiny, bert-base, gpt2-tiny, gpt2, all-minilm-l6-v2)")
    add_strategy_args(p)
    p.add_argument("--world-size", type=checks.arg_count(), default=None,
                   help="devices P (ranks); default 1 for single, else 2")
    p.add_argument("--batch", type=checks.arg_count(), default=1)
    p.add_argument("--partition", help="uneven token split, comma separated, e.g. 120,77")
    p.add_argument("--exchange", default="pairwise", help=" | ".join(xch.EXCHANGES))
    p.add_argument("--seed", type=int, default=0, help="weights and inputs follow from it")
    p.add_argument("--img-size", type=checks.arg_count())
    p.add_argument("--patch-size", type=checks.arg_count())
    p.add_argument("--depth", type=checks.arg_count(), help="override the number of blocks")
    p.add_argument("--num-classes", type=checks.arg_count())
    p.add_argument("--checkpoint", help="local weights (.safetensors or torch state dict); "
                   "BERT/GPT-2: a local from_pretrained folder")
    p.add_argument("--seq-len", type=checks.arg_count(2), help="text models (bert-*, gpt2*): tokens N")
    p.add_argument("--lengths", help="BERT padding: valid tokens per sample, cycled, e.g. 32,20")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=checks.arg_count(), default=1, help="torch threads per rank")
    p.add_argument("--pin", action="store_true", help="pin each rank to its own core")
    p.add_argument("--warmup", type=checks.arg_count(0), default=1)
    p.add_argument("--repeats", type=checks.arg_count(), default=1)
    p.add_argument("--timeout", type=checks.arg_positive("s"), default=60.0,
                   help="process-group timeout in seconds (JSON: timeout_s)")
    p.add_argument("--trace", dest="trace_dir", help="write torch.profiler Chrome traces here")
    p.add_argument("--save-output", help="write rank 0's logits as .npy")
    p.add_argument("--master-addr", default="127.0.0.1")


def _ints(flag: str, v: Optional[str]) -> Optional[tuple]:
    if not v:
        return None
    try:
        return tuple(int(s) for s in v.split(","))
    except ValueError:
        raise UsageError(f"--{flag} {v!r} must be comma-separated integers")


def config_from_args(a) -> RunConfig:
    options = strategy_options_from_args(a)
    ws = a.world_size
    if ws is None:
        from costmodel.strategies import get_formula
        ws = 2 if get_formula(a.strategy).distributed else 1
    return RunConfig(
        model=a.model, strategy=a.strategy, world_size=ws, batch=a.batch, options=options,
        partition=_ints("partition", a.partition), exchange=a.exchange, seed=a.seed,
        img_size=a.img_size, patch_size=a.patch_size, depth=a.depth, num_classes=a.num_classes,
        checkpoint=a.checkpoint, device=a.device, threads=a.threads, pin=a.pin, warmup=a.warmup,
        repeats=a.repeats, timeout_s=a.timeout, trace_dir=a.trace_dir, save_output=a.save_output,
        seq_len=a.seq_len, lengths=_ints("lengths", a.lengths))


def main(a, argv_tail) -> int:
    from ..launch import launch, self_argv

    try:
        cfg = config_from_args(a)
    except ValueError as e:
        raise UsageError(str(e))
    env_rank = os.environ.get("RANK")
    if env_rank is None:
        try:
            validate(cfg)
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise UsageError(str(e))
    if env_rank is not None:                         # torchrun or our own launcher
        rank, ws = int(env_rank), int(os.environ["WORLD_SIZE"])
        if ws != cfg.world_size:
            raise UsageError(f"WORLD_SIZE={ws} from the launcher but --world-size {cfg.world_size}")
        if ws > 1:
            xch.init_process_group(rank, ws, timeout_s=cfg.timeout_s)
        try:
            res = run_rank(cfg, rank, ws)
        finally:
            xch.destroy()
        if res is not None:
            print(json.dumps(public(res)))
        sys.stdout.flush()
        sys.stderr.flush()
        # skip interpreter teardown: gloo threads may std::terminate in static destructors
        os._exit(0)
    if cfg.world_size == 1:
        print(json.dumps(public(run_rank(cfg, 0, 1))))
        return 0
    log.info("spawning %d ranks on %s", cfg.world_size, a.master_addr)
    out = launch(self_argv(argv_tail), cfg.world_size, master_addr=a.master_addr,
                 timeout_s=cfg.timeout_s * (cfg.warmup + cfg.repeats + 2) + 120)
    sys.stdout.write(out)
    return 0


def public(res: dict) -> dict:
    """A run_rank result without its in-process-only entries (tensors)."""
    return {k: v for k, v in res.items() if not k.startswith("_")}
