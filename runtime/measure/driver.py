"""Profiling sweeps on the emulated network -> a perf map (docs/perfmap.md).

    python -m runtime profile --model vit_tiny_patch16_224 --strategy single,voltage,prism \\
        --batch 1,2,4 --bw 200,500 --cr 3.3,9.9 --img-size 96,224 --world-size 2 \\
        --out data/perfmaps/x.json

Speed: ranks are started once per group (model, world_size, bw), not per configuration.
The parent sets the rate with tc, measures it with a bulk transfer, then launches
`python -m runtime profile-worker --plan PLAN.json` (worker.py) in the namespaces; the
ranks build the model once per img_size and loop over the group's configurations,
printing one JSON row per configuration. `single` is measured once per (model,
img_size, batch) on one process, outside the emulated network.

Durability: rows go to the raw log (rawlog.py) as they are measured; the perf map is
written at the end, atomically, from it (mapbuild.py). For `--out map.json` the raw log
is `map.raw.jsonl` (the out path without its extension, plus .raw.jsonl).
A configuration that fails becomes a row with its `error`; the sweep goes on.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Optional

from costmodel import checks, safeio

from ..errors import UsageError
from .mapbuild import build_map
from .rawlog import RawLog, now
from .spec import DEFAULT_CRS, ORDERS, SweepSpec, expand, model_shape, orderer
from .worker import error_row, group_plan

log = logging.getLogger("runtime.profile")


class Sweep:
    """Runs a SweepSpec, appending rows to `raw_path` and writing the perf map `out`.

    Public API (this file's `run` and measure/cluster.py's torchrun driver use it):
    prepare(mode=...) -> pending() -> start_progress(n) / record(row, link, bw) for each
    measured row -> finish() -> write_map(). `links`, `link_checks` and `overrides`
    describe the link and devices in the map."""

    def __init__(self, spec: SweepSpec, out: str, raw_path: Optional[str] = None,
                 prefix: str = "pe", progress: bool = True, host_check: bool = False):
        self.spec, self.out = spec, out
        self.host_check = host_check   # run measure.hostcheck before and after the sweep
        self.host_checks: dict = {}
        self.raw_path = raw_path or (os.path.splitext(out)[0] + ".raw.jsonl")
        self.prefix, self.progress = prefix, progress
        self.links: dict = {}         # world_size -> testbed link (without the rate)
        self.link_checks: list = []
        self.overrides: dict = {}     # section -> fields replacing build_map's defaults
        self.mode: Optional[str] = None   # testbed mode, "cluster", or None (single only)
        self.configs: list = []
        self.raw: Optional[RawLog] = None
        self._bar = None
        self._t_last = time.monotonic()

    # ---------------------------------------------------------------- preparation
    def prepare(self, mode: Optional[str] = None, protocol_extra: Optional[dict] = None) -> None:
        """Validate everything that can be checked before a process starts: axes, token
        counts, namespace permissions, the raw log's protocol. Raises ValueError.
        mode: None resolves the spec's testbed; "cluster": real devices (profile-cluster)
        with the link shaped (or not) by that driver; protocol_extra: fields the raw log's
        protocol adds (a resumed log must match them)."""
        from ..netem.testbed import TestbedError, resolve_mode

        self.mode = mode
        if mode is None and self.spec.distributed():
            try:
                self.mode = resolve_mode(self.spec.testbed)
            except TestbedError as e:
                raise ValueError(str(e)) from None
        self.configs = expand(self.spec, shaped=self.mode != "loopback")
        keys = [c.key for c in self.configs]
        assert len(keys) == len(set(keys)), "duplicate configuration keys"
        if os.path.isdir(self.out):
            raise ValueError(f"--out {self.out} is a directory; give a .json file path")
        # every output is checked before anything is measured (the map is written at the
        # very end of the sweep); the checks create nothing
        for path in (self.out, self.raw_path, self.raw_path + ".ranks.log"):
            safeio.check_writable(path)
        self.raw = RawLog(self.raw_path, {**self.spec.protocol(), **(protocol_extra or {})})

    def pending(self) -> list:
        return [c for c in self.configs if c.key not in self.raw.rows]

    # ---------------------------------------------------------------- running
    def start_progress(self, total: int, desc: str = "profile") -> None:
        """A progress bar over `total` configurations (when progress is on); the wall time
        attributed to the next recorded row starts now."""
        self._t_last = time.monotonic()
        self._bar = None
        if self.progress and total:
            from tqdm import tqdm
            self._bar = tqdm(total=total, file=sys.stderr, unit="cfg", dynamic_ncols=True,
                             desc=desc, smoothing=0.1)

    def finish(self) -> None:
        """Close the raw log and the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.raw.close()

    def run(self) -> dict:
        from ..netem.testbed import cleanup_stale

        if self.mode == "netns":
            cleanup_stale(self.prefix)      # left by a SIGKILLed earlier run of this sweep
        todo = self.pending()
        done0 = len(self.configs) - len(todo)
        if done0:
            log.info("resuming: %d of %d configurations already in %s", done0, len(self.configs), self.raw_path)
        self.start_progress(len(todo))
        stderr_log = safeio.open_append(self.raw_path + ".ranks.log", "ab")
        tmpdir = tempfile.mkdtemp(prefix="pe-profile-")
        if self.host_check and todo:
            self._host_check("before")
        try:
            for k in sorted({c.pass_no for c in todo}):
                if self.spec.passes > 1:
                    log.info("pass %d of %d", k, self.spec.passes)
                self._run_configs([c for c in todo if c.pass_no == k], tmpdir, stderr_log)
            if self.host_check and todo:
                self._host_check("after")
        finally:
            stderr_log.close()
            self.finish()
            for fn in os.listdir(tmpdir):
                os.unlink(os.path.join(tmpdir, fn))
            os.rmdir(tmpdir)
        return self.write_map()

    def _run_configs(self, todo: list, tmpdir: str, stderr_log) -> None:
        """Measure `todo` (one pass): single first, then one emulated network per world
        size, its rates in turn (rate checked before each), the groups of each rate. With
        order "shuffled" the rates, the groups and each group's configurations run in a
        random order seeded by (seed, pass), so that an effect of a configuration's place
        in the pass (e.g. right after a re-shape) falls on different ones in each pass."""
        from ..netem.testbed import Testbed

        shuffle = orderer(self.spec, todo[0].pass_no if todo else 1)
        groups = {}
        for c in todo:
            groups.setdefault(c.group, []).append(c)
        groups = {g: shuffle(cs) for g, cs in shuffle(list(groups.items()))}
        singles = [g for g in groups if g[1] == 1]
        for g in singles:
            self._run_group(g, groups[g], None, tmpdir, stderr_log)
        by_ws = {}
        for g in groups:
            if g[1] > 1:
                by_ws.setdefault(g[1], []).append(g)
        for ws, gs in by_ws.items():
            bws = shuffle(sorted({g[2] for g in gs}, key=lambda v: -1 if v is None else v))
            first_bw = bws[0] if bws[0] is not None else None
            with Testbed(ws, first_bw, delay_ms=self.spec.delay_ms, mode=self.mode,
                         prefix=self.prefix) as tb:
                for bw in bws:
                    if bw is not None:
                        tb.set_bw(bw)
                        try:
                            mbps = round(tb.measure_bw(), 3)
                        except Exception as e:  # noqa: BLE001 - rows say the rate is unverified
                            log.error("P=%d bw=%g Mbit/s: rate check failed: %s", ws, bw, e)
                            mbps, tb.link["bw_check_error"] = None, f"{type(e).__name__}: {e}"
                        self.link_checks.append({"world_size": ws, "bw": bw, "bw_measured": mbps})
                        log.info("P=%d bw=%g Mbit/s: measured %s Mbit/s", ws, bw, mbps)
                    link = dict(tb.link)
                    self.links[ws] = {k: v for k, v in link.items()
                                      if k not in ("bw", "bw_requested", "bw_measured",
                                                   "shaper_rate_mbit", "bw_measured_bytes",
                                                   "bw_check_error")}
                    for g in [g for g in gs if g[2] == bw]:
                        self._run_group(g, groups[g], tb, tmpdir, stderr_log)

    def _host_check(self, when: str) -> None:
        """Compute stability of the cores the ranks are pinned to (measure/hostcheck.py),
        kept in the map's cluster.host_check; a failure is logged, not fatal."""
        from .hostcheck import HostCheckError, host_check, usable_cores

        cores = usable_cores()[:max(c.world_size for c in self.configs)]
        try:
            res = host_check(cores, iters=50, rounds=1)
        except HostCheckError as e:
            log.error("host check %s the sweep failed: %s", when, e)
            return
        self.host_checks[when] = res
        log.info("host check %s the sweep: slowdown %.1f %%, concurrent spread %.1f %%", when,
                 res["summary"]["max_slowdown_pct"], res["summary"]["max_concurrent_spread_pct"])

    def record(self, row: dict, link: Optional[dict], bw) -> None:
        """Append one measured row (with its link, rate and the wall time since the last)."""
        t = time.monotonic()
        row["wall_s"] = round(t - self._t_last, 4)
        self._t_last = t
        row["bw"] = bw
        row["bw_measured"] = link.get("bw_measured") if link else None
        row["link"] = link
        row["created"] = now()
        self.raw.append(row)
        if self._bar is not None:
            self._bar.update(1)

    def _run_group(self, g, configs: list, tb, tmpdir: str, stderr_log) -> None:
        from ..launch import launch, self_argv

        model, ws, bw = g
        link = dict(tb.link) if tb is not None else None
        if link is not None and link.get("bw") is None:
            bw = None             # loopback: unshaped, recorded as such
        remaining = list(configs)
        attempts, failed_in_a_row = {}, 0   # each configuration gets two launches
        while remaining:
            plan = group_plan(self.spec, model, ws, remaining)
            path = os.path.join(tmpdir, f"plan-{abs(hash(g))}.json")
            with open(path, "w") as f:
                json.dump(plan, f)
            wanted = {c.key for c in remaining}
            got = []
            state = {"open": True}

            def on_line(line: str) -> None:
                if not state["open"]:
                    return
                try:
                    row = json.loads(line)
                except ValueError:
                    log.warning("rank 0 printed a non-JSON line: %r", line[:200])
                    return
                if not isinstance(row, dict) or row.get("key") not in wanted or row["key"] in got:
                    return
                got.append(row["key"])
                self.record(row, link, bw)

            argv = self_argv(["profile-worker", "--plan", path])
            n = len(remaining)
            reps = max(self.spec.repeats, self.spec.max_repeats or 0)
            budget = 120 + self.spec.timeout_s * n * (self.spec.warmup + reps + 1)
            err = None
            try:
                if tb is None:
                    launch(argv, 1, timeout_s=budget, stderr=stderr_log, on_stdout_line=on_line,
                           wrap=_pin_wrap, env_per_rank=lambda r: {"OMP_NUM_THREADS": "1"})
                else:
                    tb.launch(argv, budget, stderr=stderr_log, on_stdout_line=on_line)
            except Exception as e:  # noqa: BLE001 - a failed group is rows with errors, not the end
                log.debug("group %s failed", g, exc_info=True)
                err = f"{type(e).__name__}: {e}"
            finally:
                state["open"] = False
            remaining = [c for c in remaining if c.key not in got]
            if not remaining:
                if err is not None:   # every row is in; a rank then failed on its way out
                    log.warning("group %s: all rows measured, then: %s", g, err)
                return
            if err is None:
                err = "ranks exited without measuring this configuration"
            err += _tail(self.raw_path + ".ranks.log")
            if got:
                failed_in_a_row = 0
            c = remaining[0]      # the configuration that was running when it failed
            attempts[c.key] = attempts.get(c.key, 0) + 1
            if attempts[c.key] < 2:
                log.warning("%s: ranks failed (%s); retrying once", c.key, err)
                continue
            failed_in_a_row += 1
            give_up = failed_in_a_row >= 3
            for c in (remaining if give_up else remaining[:1]):
                log.warning("%s failed: %s", c.key, err)
                self.record(error_row({"key": c.key, "strategy": c.strategy, "batch": c.batch,
                                         "cr": c.cr, "img_size": c.img_size},
                                        {"model": model, "world_size": ws, "exchange": self.spec.exchange},
                                        err if not give_up else f"group abandoned after 3 failed "
                                        f"configurations in a row: {err}", self._seq_len(model, c.img_size)),
                             link, bw)
            if give_up:
                return
            remaining = remaining[1:]

    def _seq_len(self, model: str, img: int) -> int:
        return model_shape(self.spec, model, img).seq_len

    def build_map(self) -> dict:
        return build_map(self)

    def write_map(self) -> dict:
        from costmodel.perfmap import save_perfmap

        missing = [c.key for c in self.configs if c.key not in self.raw.rows]
        if missing:
            raise RuntimeError(f"{len(missing)} configurations have no row (first: {missing[0]})")
        d = build_map(self)
        save_perfmap(d, self.out)
        return d


def _pin_wrap(rank: int, argv: list) -> list:
    import shutil

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", str(cpus[rank % len(cpus)])] + argv
    return argv


def _tail(path: str, n: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            t = f.read().decode(errors="replace").strip().splitlines()
        return f" | ranks' stderr: {t[-1][:200]}" if t else ""
    except OSError:
        return ""



# --------------------------------------------------------------------------- CLI

def _list(kind, name):
    def parse(s: str):
        out = []
        for tok in s.split(","):
            tok = tok.strip()
            if not tok:
                continue
            try:
                out.append(kind(tok))
            except ValueError:
                raise ValueError(f"--{name} value {tok!r} is not a{'n integer' if kind is int else ' number'}")
            if kind is float and not math.isfinite(out[-1]):
                checks.positive(f"--{name}", out[-1])   # NaN / inf refused; the spec checks the rest
        return tuple(out)
    return parse


def add_args(p) -> None:
    p.add_argument("--model", "--models", dest="models", default="vit_tiny_patch16_224",
                   help="comma-separated timm ViT names")
    from ..parallel import list_strategies

    p.add_argument("--strategy", "--strategies", dest="strategies", default="single,voltage,prism",
                   help=f"comma-separated, of {', '.join(list_strategies())}")
    p.add_argument("--batch", "--batches", dest="batches", default="1")
    p.add_argument("--bw", "--bws", dest="bws", default="300", help="link rates, Mbit/s")
    p.add_argument("--cr", "--crs", dest="crs", default=",".join(f"{c:g}" for c in DEFAULT_CRS),
                   help="prism compression rates L_p/m")
    p.add_argument("--img-size", "--img-sizes", dest="img_sizes", default="224",
                   help="token counts via image size: seq_len = (img/patch)^2 + 1")
    p.add_argument("--world-size", "--world-sizes", dest="world_sizes", default="2",
                   help="devices P for voltage/prism")
    p.add_argument("--depth", type=checks.arg_count(), help="override the number of blocks (tiny test models)")
    p.add_argument("--patch-size", type=checks.arg_count())
    p.add_argument("--exchange", default="pairwise", help="pairwise | allgather")
    p.add_argument("--warmup", type=checks.arg_count(0), default=1)
    p.add_argument("--repeats", type=checks.arg_count(), default=5, help="timed repeats per configuration (at least)")
    p.add_argument("--max-repeats", type=checks.arg_count(), default=None,
                   help="adaptive: repeat up to this many times until the median is precise (--target-se)")
    p.add_argument("--target-se", type=checks.arg_positive(), default=0.02,
                   help="adaptive repeats stop at this robust relative standard error of the median")
    p.add_argument("--repeat-budget", type=checks.arg_positive("s"), default=20.0,
                   help="adaptive repeats: seconds of repeats per configuration at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--delay", type=checks.arg_nonnegative("ms"), default=0.0, help="one-way delay, ms (netem where available)")
    p.add_argument("--testbed", default="auto", help="auto | netns | unshare | loopback")
    p.add_argument("--timeout", type=checks.arg_positive("s"), default=120.0, help="process-group timeout, s")
    p.add_argument("--blocks", action="store_true", help="keep rank 0's per-block breakdown")
    p.add_argument("--memory", action="store_true",
                   help="one extra un-timed forward per configuration: measured / predicted per-device peaks")
    p.add_argument("--meter", default="auto", help="energy meter: auto | jtop | ina3221 | rapl | none")
    p.add_argument("--power-model", default="cpu-host-assumed", help="power model of energy_est_j")
    p.add_argument("--out", required=True, help="perf map JSON to write")
    p.add_argument("--raw", help="raw JSONL (default: the --out path with .raw.jsonl for .json, e.g. map.raw.jsonl); resumed when it exists")
    p.add_argument("--prefix", default="pe", help="namespace name prefix")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--passes", type=checks.arg_count(), default=1,
                   help="measure the whole grid this many times in turn; a record's median is the "
                        "median of its passes' medians (a host or link that drifts over minutes)")
    p.add_argument("--order", default="grid", choices=ORDERS,
                   help="grid: every pass in the grid's order; shuffled: each pass in its own "
                        "seeded random order of rates, groups and configurations")
    p.add_argument("--host-check", action="store_true",
                   help="before and after the sweep, time a fixed workload on the ranks' cores alone "
                        "and together (python -m runtime host-check); stored in cluster.host_check")


def spec_from_args(a) -> SweepSpec:
    return SweepSpec(
        models=tuple(s.strip() for s in a.models.split(",") if s.strip()),
        strategies=tuple(s.strip() for s in a.strategies.split(",") if s.strip()),
        batches=_list(int, "batch")(a.batches), bws=_list(float, "bw")(a.bws),
        crs=_list(float, "cr")(a.crs), img_sizes=_list(int, "img-size")(a.img_sizes),
        world_sizes=_list(int, "world-size")(a.world_sizes), depth=a.depth,
        patch_size=a.patch_size, exchange=a.exchange, warmup=a.warmup, repeats=a.repeats,
        max_repeats=a.max_repeats, target_rel_se=a.target_se, repeat_budget_s=a.repeat_budget,
        seed=a.seed, device=a.device, delay_ms=a.delay, testbed=a.testbed, timeout_s=a.timeout,
        blocks=a.blocks, memory=a.memory, meter=a.meter, power_model=a.power_model, passes=a.passes,
        order=a.order)


def main(a, argv_tail) -> int:
    from costmodel.power import POWER_MODELS

    try:
        spec = spec_from_args(a)
        if a.meter not in ("auto", "jtop", "ina3221", "rapl", "none"):
            raise ValueError(f"--meter {a.meter!r}; allowed: auto, jtop, ina3221, rapl, none")
        if a.power_model not in POWER_MODELS:
            raise ValueError(f"--power-model {a.power_model!r}; allowed: {sorted(POWER_MODELS)}")
        sweep = Sweep(spec, a.out, a.raw, prefix=a.prefix, progress=not a.no_progress,
                      host_check=a.host_check)
        sweep.prepare()
    except ValueError as e:
        raise UsageError(str(e))
    from ..netem.testbed import TestbedError

    try:
        d = sweep.run()
    except KeyboardInterrupt:
        print(f"error: interrupted; {len(sweep.raw.rows)} rows are kept in {sweep.raw_path}: "
              "run the same command again to resume", file=sys.stderr)
        return 130
    except TestbedError as e:
        print(f"error: emulated network: {e} (rows so far are kept in {sweep.raw_path})", file=sys.stderr)
        return 1
    s = d["sweep"]
    print(json.dumps({"out": a.out, "raw": sweep.raw_path, "n_records": s["n_records"],
                      "n_errors": s["n_errors"], "duration_s": s["duration_s"],
                      "link_checks": d["cluster"]["link_checks"]}))
    return 0


