"""`python -m runtime <command>`: JSON on stdout, logs on stderr, exit 2 on bad input.

Commands register themselves in COMMANDS (name -> (add_arguments, main)), so the
measurement layer adds `profile` and `testbed` without touching `run`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger("runtime")
COMMANDS: dict = {}


def command(name: str, help: str):
    def deco(fn_pair):
        COMMANDS[name] = (help, *fn_pair)
        return fn_pair
    return deco


class UsageError(ValueError):
    """Bad input: printed as one line, exit code 2."""


# --------------------------------------------------------------------------- run

def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit_tiny_patch16_224",
                   help="timm ViT name (vit_tiny/small/base_patch16_224, deit_*, test_vit)")
    p.add_argument("--strategy", default="prism", help="single | voltage | prism")
    p.add_argument("--world-size", type=int, default=2, help="devices P (ranks)")
    p.add_argument("--batch", type=int, default=1)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cr", type=float, help="prism compression rate L_p/m, in [1, L_p]")
    g.add_argument("--m", "--segment-means", dest="m", type=int,
                   help="prism segment means per device, in [1, L_p] (under torchrun write --segment-means: torchrun would take --m as its own --module)")
    p.add_argument("--no-log-bias", action="store_true", help="prism: plain softmax over means")
    p.add_argument("--averaged", default="output", help="prism: output | ln1")
    p.add_argument("--partition", help="uneven token split, comma separated, e.g. 120,77")
    p.add_argument("--exchange", default="pairwise", help="pairwise | allgather")
    p.add_argument("--seed", type=int, default=0, help="weights and inputs follow from it")
    p.add_argument("--img-size", type=int)
    p.add_argument("--patch-size", type=int)
    p.add_argument("--depth", type=int, help="override the number of blocks")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--checkpoint", help="local weights (.safetensors or torch state dict); "
                   "BERT/GPT-2: a local from_pretrained folder")
    p.add_argument("--seq-len", type=int, help="text models (bert-*, gpt2*): tokens N")
    p.add_argument("--lengths", help="BERT padding: valid tokens per sample, cycled, e.g. 32,20")
    p.add_argument("--heads", help="tensor_parallel/galaxy: heads per device, e.g. 4,2")
    p.add_argument("--cols", help="tensor_parallel/galaxy: MLP columns per device, e.g. 1024,512")
    p.add_argument("--collective", default="native", help="tensor_parallel: native | pairwise")
    p.add_argument("--tiles", type=int, default=1, help="galaxy: row tiles for overlap")
    p.add_argument("--no-overlap", action="store_true", help="galaxy: no comm/compute overlap")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--pin", action="store_true", help="pin each rank to its own core")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0, help="process-group timeout, s")
    p.add_argument("--trace", dest="trace_dir", help="write torch.profiler Chrome traces here")
    p.add_argument("--save-output", help="write rank 0's logits as .npy")
    p.add_argument("--master-addr", default="127.0.0.1")


def config_from_args(a):
    from .run import RunConfig

    part = None
    if a.partition:
        try:
            part = tuple(int(s) for s in a.partition.split(","))
        except ValueError:
            raise UsageError(f"--partition {a.partition!r} must be comma-separated integers")
    lengths = None
    if a.lengths:
        try:
            lengths = tuple(int(s) for s in a.lengths.split(","))
        except ValueError:
            raise UsageError(f"--lengths {a.lengths!r} must be comma-separated integers")
    splits = {}
    for k in ("heads", "cols"):
        v = getattr(a, k)
        if v:
            try:
                splits[k] = tuple(int(s) for s in v.split(","))
            except ValueError:
                raise UsageError(f"--{k} {v!r} must be comma-separated integers")
    return RunConfig(
        collective=a.collective, tiles=a.tiles, overlap=not a.no_overlap, **splits,
        model=a.model, strategy=a.strategy, world_size=a.world_size, batch=a.batch, cr=a.cr,
        m=a.m, log_bias=not a.no_log_bias, averaged=a.averaged, partition=part,
        exchange=a.exchange, seed=a.seed, img_size=a.img_size, patch_size=a.patch_size,
        depth=a.depth, num_classes=a.num_classes, checkpoint=a.checkpoint, device=a.device,
        threads=a.threads, pin=a.pin, warmup=a.warmup, repeats=a.repeats, timeout_s=a.timeout,
        trace_dir=a.trace_dir, save_output=a.save_output, seq_len=a.seq_len, lengths=lengths)


def run_main(a, argv_tail) -> int:
    from . import exchange as xch
    from .launch import launch, self_argv
    from .run import run_rank, validate

    cfg = config_from_args(a)
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
            print(json.dumps(_public(res)))
        sys.stdout.flush()
        sys.stderr.flush()
        # skip interpreter teardown: gloo threads may std::terminate in static destructors
        os._exit(0)
    if cfg.world_size == 1:
        print(json.dumps(_public(run_rank(cfg, 0, 1))))
        return 0
    log.info("spawning %d ranks on %s", cfg.world_size, a.master_addr)
    out = launch(self_argv(argv_tail), cfg.world_size, master_addr=a.master_addr,
                 timeout_s=cfg.timeout_s * (cfg.warmup + cfg.repeats + 2) + 120)
    sys.stdout.write(out)
    return 0


def _public(res: dict) -> dict:
    return {k: v for k, v in res.items() if not k.startswith("_")}


command("run", "one distributed inference run (JSON result on stdout)")((add_run_args, run_main))


# --------------------------------------------------------------------------- main

def _load_optional_commands() -> None:
    """Commands of other modules (profile, testbed, adaptive) if they are installed."""
    import importlib

    for mod in ("runtime.profile", "runtime.cluster", "runtime.testbed", "runtime.demo",
                "runtime.hostcheck"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("PRISM_EDGE_LOG", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    _load_optional_commands()
    ap = argparse.ArgumentParser(prog="python -m runtime",
                                 description="prism-edge distributed inference runtime")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, (hlp, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=hlp))
    a = ap.parse_args(argv)
    try:
        return COMMANDS[a.cmd][2](a, argv) or 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line to the user, details in the log
        from .launch import LaunchError
        if isinstance(e, LaunchError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
