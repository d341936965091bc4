"""The CUDA path on a real GPU (issue 18): one prepared script for a lent GPU machine.

    python benchmarks/gpu_staging.py --out DIR                 # the GPU run (~4-8 min, H200 + 16 cores)
    python benchmarks/gpu_staging.py --out DIR --device cpu --quick --testbed loopback
                                                              # dry run (tests/test_gpu_staging.py)

Steps (docs/gpu.md), each with its own timeout inside a global budget (--budget); a step
that fails or times out is recorded in steps.json and the next one runs:

  env       torch / CUDA build / driver / GPU name, nvidia-smi, required packages, a smoke
            matmul on the device (--device cpu: recorded as a dry run)
  micro     raw staging copies (device->pinned host, pageable host->device, the
            Exchanger's own pattern) per size, fitted as fixed ms + ms per MB (GPU only)
  parity    `python -m runtime run --strategy single --save-output` on the device (and on
            the CPU as a reference when the device is a GPU), then voltage, tensor_parallel,
            prism at m = L_p (cr 1) and prism cr 9.9 on 2 ranks sharing the device (GLOO on
            loopback) through the same run_rank path, in one launch; logits compared with
            numpy (atol = rtol = 1e-4, as tests/test_runtime_parity.py)
  testbed   `python -m runtime testbed check` in netns mode (root, tc tbf) and on loopback
  sweep     `python -m runtime profile --blocks --device D`: ViT-B/16 (random weights),
            batch 1..32 x single / voltage / prism cr 3.3, 4.95, 9.9 x the link rates on
            the netns testbed when its check passed (else loopback) -> perfmap.json
  fit       `python -m costmodel fit`, `validate` (in-sample) and `evaluate held-out`
  staging   least squares of per-block staging_ms on staged MB (fixed ms per exchange,
            ms per MB) beside the Jetson fit (costmodel/profiles/jetson-orin-nano.json)
  summary   summary.md

Everything lands under --out (env.json, parity.json, testbed.json, perfmap.json,
profile.json, validate.json, held_out.json, staging_micro.json, staging_fit.json,
steps.json, summary.md, logs/). The exit code is 0 when every step that ran passed,
1 when one failed (its output is still there), 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.abspath(__file__)
PY = sys.executable

REQUIRED = ("torch", "numpy", "timm", "jsonschema", "scikit-learn")
OPTIONAL = ("tqdm", "transformers", "safetensors", "matplotlib", "jsonschema-specifications",
            "referencing", "rpds-py", "attrs")
TOL = {"atol": 1e-4, "rtol": 1e-4}
PRISM_CR = 9.9
GRIDS = {
    "full": {"model": "vit_base_patch16_224", "img_size": 224, "depth": None,
             "batches": (1, 2, 4, 8, 16, 32), "bws": (200.0, 1000.0), "crs": (3.3, 4.95, 9.9),
             "warmup": 2, "repeats": 4, "parity_batch": 4, "pg_timeout": 120.0, "budget": 480.0},
    # L_p = 19 at img 96 (N = 37), so that cr 9.9 is valid
    "quick": {"model": "test_vit", "img_size": 96, "depth": 2, "batches": (1, 2), "bws": (200.0,),
              "crs": (3.3, 4.95, 9.9), "warmup": 1, "repeats": 2, "parity_batch": 2,
              "pg_timeout": 60.0, "budget": 300.0},
}
JETSON_PROFILE = os.path.join(ROOT, "costmodel", "profiles", "jetson-orin-nano.json")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _clean(x):
    """JSON-safe: non-finite floats become null."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _dump(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=1, default=str, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# =========================================================================== the steps' runner

class Bench:
    """Runs steps in order under one global deadline; records each in steps.json."""

    def __init__(self, a):
        self.a = a
        self.out = os.path.abspath(a.out)
        self.logs = os.path.join(self.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        os.makedirs(os.path.join(self.out, "parity"), exist_ok=True)
        self.grid = dict(GRIDS["quick" if a.quick else "full"])
        if getattr(a, "bws", None):
            self.grid["bws"] = tuple(float(x) for x in a.bws.split(",") if x.strip())
        self.budget = a.budget if a.budget is not None else self.grid["budget"]
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.budget
        self.steps: list = []
        self.state: dict = {}
        self.env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        PYTHONUNBUFFERED="1", PRISM_EDGE_LOG=os.environ.get("PRISM_EDGE_LOG", "INFO"))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _save_steps(self) -> None:
        _dump(os.path.join(self.out, "steps.json"),
              {"started": self.state.get("started"), "budget_s": self.budget,
               "elapsed_s": round(time.monotonic() - self.t0, 2), "steps": self.steps})

    def step(self, name: str, fn, *, min_s: float = 5.0, needs_device: bool = False) -> None:
        """Run fn() -> (status, info dict); exceptions become status 'failed'."""
        rec = {"step": name, "status": None, "seconds": None, "started": _now()}
        t = time.monotonic()
        if needs_device and self.state.get("no_gpu"):
            rec.update(status="skipped", reason=f"no usable GPU (env: {self.state['no_gpu']})")
        elif self.left() < min_s:
            rec.update(status="skipped", reason=f"global budget of {self.budget:.0f} s exhausted")
        else:
            try:
                status, info = fn()
                rec["status"] = status
                rec.update(info or {})
            except Exception as e:  # noqa: BLE001 - one broken step must not stop the rest
                rec.update(status="failed", error=f"{type(e).__name__}: {e}")
        rec["seconds"] = round(time.monotonic() - t, 2)
        self.steps.append(rec)
        self._save_steps()
        print(f"[gpu_staging] {name}: {rec['status']} ({rec['seconds']} s)"
              + (f" - {rec.get('error') or rec.get('reason')}" if rec.get("error") or rec.get("reason") else ""),
              file=sys.stderr, flush=True)

    def sh(self, name: str, argv: list, timeout_s: float) -> dict:
        """Run argv (cwd = repository root) with stdout/stderr in logs/NAME.{out,err};
        on timeout: SIGINT to its process group (the launchers tear their ranks and
        namespaces down), SIGKILL 15 s later."""
        timeout_s = max(1.0, min(timeout_s, self.left()))
        out_p, err_p = os.path.join(self.logs, f"{name}.out"), os.path.join(self.logs, f"{name}.err")
        t = time.monotonic()
        with open(out_p, "wb") as fo, open(err_p, "wb") as fe:
            fe.write(("$ " + " ".join(argv) + "\n").encode())
            fe.flush()
            p = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=fo, stderr=fe,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            timed_out = False
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 10)):
                    try:
                        os.killpg(p.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        p.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        with open(out_p, "rb") as f:
            stdout = f.read().decode(errors="replace")
        with open(err_p, "rb") as f:
            tail = f.read().decode(errors="replace").strip().splitlines()[-3:]
        return {"cmd": " ".join(argv), "rc": p.returncode, "timed_out": timed_out,
                "timeout_s": round(timeout_s, 1), "seconds": round(time.monotonic() - t, 2),
                "stdout": stdout, "stderr_tail": tail, "log": os.path.relpath(err_p, self.out)}

    @staticmethod
    def last_json(text: str):
        """The JSON object a command printed: its whole stdout, else its last line that is one."""
        for chunk in [text] + list(reversed(text.strip().splitlines())):
            try:
                obj = json.loads(chunk)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
        return None

    def model_args(self, img: bool = True) -> list:
        g = self.grid
        out = ["--model", g["model"]]
        if img and g["img_size"]:
            out += ["--img-size", str(g["img_size"])]
        if g["depth"]:
            out += ["--depth", str(g["depth"])]
        return out


def _brief(r: dict) -> dict:
    """A sub-command's record without its stdout."""
    return {k: v for k, v in r.items() if k != "stdout"}


# =========================================================================== step: env

def _packages() -> dict:
    out = {}
    for n in REQUIRED + OPTIONAL:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def probe_env(device: str) -> dict:
    """(sub-command `_env`) what torch sees; a smoke matmul on the device."""
    import torch

    t = {"version": torch.__version__, "cuda_build": torch.version.cuda,
         "cuda_available": torch.cuda.is_available(),
         "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         "tf32": {"matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                  "cudnn": bool(torch.backends.cudnn.allow_tf32)},
         "num_threads": torch.get_num_threads(), "devices": []}
    for i in range(t["device_count"]):
        p = torch.cuda.get_device_properties(i)
        t["devices"].append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                             "total_memory_gib": round(p.total_memory / 2**30, 2),
                             "multi_processor_count": p.multi_processor_count})
    smoke = None
    if device.startswith("cuda"):
        smoke = {"device": device, "ok": False}
        try:
            d = torch.device(device)
            a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
            ref = a @ a
            t0 = time.perf_counter()
            got = (a.to(d) @ a.to(d)).cpu()
            torch.cuda.synchronize(d)
            smoke.update(ok=True, first_call_ms=round((time.perf_counter() - t0) * 1e3, 2),
                         max_abs_diff_vs_cpu=float((got - ref).abs().max()))
        except Exception as e:  # noqa: BLE001
            smoke["error"] = f"{type(e).__name__}: {e}"
    return {"torch": t, "smoke": smoke}


def step_env(b: Bench):
    a = b.a
    dry = a.device == "cpu"
    env = {"created": _now(), "dry_run": dry,
           "dry_run_note": ("--device cpu: a dry run of the prepared script; nothing is staged "
                            "and no GPU number in it means anything") if dry else None,
           "device_requested": a.device, "quick": a.quick, "grid": b.grid,
           "python": platform.python_version(), "executable": PY, "platform": platform.platform(),
           "kernel": platform.release(), "cpu_count": os.cpu_count(),
           "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "is_root": hasattr(os, "geteuid") and os.geteuid() == 0,
           "tools": {t: shutil.which(t) for t in ("nvidia-smi", "ip", "tc", "taskset", "unshare", "nsenter")},
           "packages": _packages(), "repo_commit": None, "nvidia_smi": None}
    env["missing_required"] = [n for n in REQUIRED if env["packages"].get(n) is None]
    try:
        env["repo_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    if env["tools"]["nvidia-smi"]:
        smi = {}
        for key, argv in (("full", ["nvidia-smi"]),
                          ("query", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                                     "pcie.link.gen.current,pcie.link.width.current,clocks.max.sm",
                                     "--format=csv,noheader"])):
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                smi[key] = (p.stdout or p.stderr).strip()
            except (OSError, subprocess.SubprocessError) as e:
                smi[key] = f"error: {e}"
        with open(os.path.join(b.logs, "nvidia-smi.txt"), "w") as f:
            f.write(smi.get("full", "") + "\n")
        q = smi.get("query", "").splitlines()
        if q and not q[0].startswith("error"):
            parts = [s.strip() for s in q[0].split(",")]
            keys = ("name", "driver_version", "memory_total", "pcie_gen", "pcie_width", "sm_clock_max")
            smi["parsed"] = dict(zip(keys, parts))
        env["nvidia_smi"] = {k: v for k, v in smi.items() if k != "full"}
    r = b.sh("env_probe", [PY, SCRIPT, "_env", "--device", a.device], 120)
    probe = b.last_json(r["stdout"]) if r["rc"] == 0 else None
    env["probe"] = probe if probe is not None else {"error": _brief(r)}
    tinfo = (probe or {}).get("torch", {})
    env["gpu"] = (tinfo.get("devices") or [{}])[0].get("name")
    env["driver"] = ((env.get("nvidia_smi") or {}).get("parsed") or {}).get("driver_version")
    b.state["env"] = env
    _dump(os.path.join(b.out, "env.json"), env)
    problems = []
    if env["missing_required"]:
        problems.append(f"missing packages {env['missing_required']} (docs/gpu.md: carry them as wheels)")
    if probe is None:
        problems.append("torch probe failed: " + " | ".join(r["stderr_tail"]))
    elif not dry:
        if not tinfo.get("cuda_available"):
            problems.append(f"torch {tinfo.get('version')} (CUDA build {tinfo.get('cuda_build')}) "
                            "sees no GPU")
        elif not (probe.get("smoke") or {}).get("ok"):
            problems.append(f"smoke matmul failed: {(probe.get('smoke') or {}).get('error')}")
    info = {"dry_run": dry, "torch": tinfo.get("version"), "cuda_build": tinfo.get("cuda_build"),
            "cuda_available": tinfo.get("cuda_available"), "gpu": env["gpu"], "driver": env["driver"]}
    if not dry and not (tinfo.get("cuda_available") and (probe.get("smoke") or {}).get("ok")):
        b.state["no_gpu"] = "; ".join(problems)     # the device steps are skipped, not run to fail
    if problems:
        return "failed", {**info, "error": "; ".join(problems)}
    return "ok", info


# =========================================================================== step: micro

MICRO_MB = (0.004, 0.016, 0.064, 0.25, 1.0, 4.0, 16.0, 64.0)


def _linfit(x, y) -> dict:
    """Ordinary least squares y = fixed + slope * x; slope None when x has no spread."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n == 0:
        return {"n": 0}
    if n < 2 or np.ptp(x) <= 0:
        return {"n": n, "fixed_ms": float(np.mean(y)), "ms_per_mb": None, "mb_per_s": None,
                "r2": None, "note": "no spread in staged MB: only the fixed time is fitted"}
    A = np.stack([np.ones(n), x], 1)
    (c0, c1), *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = A @ np.array([c0, c1])
    ss = float(np.sum((y - y.mean()) ** 2))
    return {"n": n, "fixed_ms": float(c0), "ms_per_mb": float(c1),
            "mb_per_s": float(1e3 / c1) if c1 > 0 else None,
            "r2": float(1 - np.sum((y - pred) ** 2) / ss) if ss > 0 else None,
            "x_range_mb": [float(x.min()), float(x.max())]}


def micro_bench(device: str, reps: int = 20) -> dict:
    """(sub-command `_micro`) staging copies timed as runtime/parallel/exchange.py's Timer
    does (device synchronised before each clock read), median of `reps` per size."""
    import statistics

    import torch

    d = torch.device(device)
    sync = lambda: torch.cuda.synchronize(d)  # noqa: E731

    def timed(fn):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    rows = []
    for mb in MICRO_MB:
        n = max(1, int(mb * 1e6 / 4))
        t = torch.randn(n, device=d)
        pinned = torch.empty(n, pin_memory=True)
        pageable = torch.empty(n)

        def exchanger_like():   # Exchanger.exchange, P = 2: own rows out, the peer's rows in
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            sync()
            pageable.to(d, non_blocking=True)

        kinds = {"d2h_pinned": lambda: pinned.copy_(t, non_blocking=True),
                 "d2h_pageable": lambda: pageable.copy_(t),
                 "h2d_pinned": lambda: pinned.to(d, non_blocking=True),
                 "h2d_pageable": lambda: pageable.to(d, non_blocking=True),
                 "exchanger_like": exchanger_like}
        row = {"mb": n * 4 / 1e6}
        for k, fn in kinds.items():
            row[k + "_ms"] = timed(fn)
        row["exchanger_like_staged_mb"] = 2 * n * 4 / 1e6
        rows.append(row)
        del t, pinned, pageable
    fits = {k: _linfit([r["mb"] * (2 if k == "exchanger_like" else 1) for r in rows],
                       [r[k + "_ms"] for r in rows])
            for k in ("d2h_pinned", "d2h_pageable", "h2d_pinned", "h2d_pageable", "exchanger_like")}
    return {"device": device, "reps": reps, "statistic": "median", "rows": rows, "fits": fits,
            "note": "exchanger_like's MB is the staged MB (out + in), as staged_bytes counts it"}


def step_micro(b: Bench):
    path = os.path.join(b.out, "staging_micro.json")
    if b.a.device == "cpu":
        _dump(path, {"skipped": "dry run (--device cpu): nothing to stage"})
        return "skipped", {"reason": "dry run (--device cpu)"}
    r = b.sh("staging_micro", [PY, SCRIPT, "_micro", "--device", b.a.device], 120)
    res = b.last_json(r["stdout"]) if r["rc"] == 0 else None
    if res is None:
        _dump(path, {"error": _brief(r)})
        return "failed", {"error": f"rc={r['rc']} timed_out={r['timed_out']}: " + " | ".join(r["stderr_tail"])}
    _dump(path, res)
    b.state["micro"] = res
    f = res["fits"]["exchanger_like"]
    return "ok", {"exchanger_like_mb_per_s": f.get("mb_per_s"), "exchanger_like_fixed_ms": f.get("fixed_ms")}


# =========================================================================== step: parity

def _parity_configs(b: Bench) -> list:
    g, a = b.grid, b.a
    base = {"model": g["model"], "world_size": 2, "batch": g["parity_batch"], "seed": 0,
            "img_size": g["img_size"], "depth": g["depth"], "device": a.device, "warmup": 1,
            "repeats": 2, "timeout_s": g["pg_timeout"]}
    pdir = os.path.join(b.out, "parity")
    out = []
    for name, strat, opts in (("voltage", "voltage", {}), ("tensor_parallel", "tensor_parallel", {}),
                              ("prism_m_eq_Lp", "prism", {"cr": 1.0}),
                              (f"prism_cr{PRISM_CR:g}", "prism", {"cr": PRISM_CR})):
        out.append({"name": name, "json": os.path.join(pdir, f"{name}.json"),
                    "cfg": {**base, "strategy": strat, "options": opts,
                            "save_output": os.path.join(pdir, f"{name}.npy")}})
    return out


def parity_rank(plan_path: str) -> int:
    """(sub-command `_parity-rank`) one rank: every distributed parity configuration in
    turn through runtime.measure.run.run_rank (what `python -m runtime run` executes)."""
    import ctypes

    from runtime.measure.run import RunConfig, public, run_rank, validate
    from runtime.parallel import exchange as xch

    try:    # die with the launcher (even by SIGKILL): no orphan rank holds the GPU
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: best effort
        pass
    with open(plan_path) as f:
        plan = json.load(f)
    rank, ws = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    xch.init_process_group(rank, ws, timeout_s=plan["timeout_s"])
    try:
        for c in plan["configs"]:
            t0 = time.perf_counter()
            try:
                cfg = RunConfig(**c["cfg"])
                validate(cfg)
                res = run_rank(cfg, rank, ws)
                if rank == 0:
                    _dump(c["json"], {**public(res), "wall_s": round(time.perf_counter() - t0, 3)})
            except Exception as e:  # noqa: BLE001 - recorded; the next configuration runs
                _dump(f"{c['json']}.rank{rank}.error", {"error": f"{type(e).__name__}: {e}"})
    finally:
        xch.destroy()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


def _compare(ref, got) -> dict:
    import numpy as np

    if ref.shape != got.shape:
        return {"shape": list(got.shape), "ref_shape": list(ref.shape), "match": False}
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return {"shape": list(got.shape), "max_abs_diff": float(diff.max()),
            "max_rel_diff": float((diff / (np.abs(ref) + 1e-6)).max()),
            "ref_max_abs": float(np.abs(ref).max()),
            "allclose": bool(np.allclose(got, ref, **TOL)),
            "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean())}


def _run_summary(res: dict) -> dict:
    r0 = (res.get("ranks") or [{}])[0]
    return {"device": res.get("device"), "partition": res.get("partition"), "m": res.get("m"),
            "cr": res.get("cr"), "latency_ms_median": (res.get("latency_ms") or {}).get("median"),
            "rank0": {k: r0.get(k) for k in ("compute_ms", "staging_ms", "comm_ms", "comm_bytes", "staged_bytes")}}


def step_parity(b: Bench):
    import numpy as np

    a, g = b.a, b.grid
    pdir = os.path.join(b.out, "parity")
    for fn in os.listdir(pdir):      # a reused --out: no result of an earlier run is read as this one's
        os.unlink(os.path.join(pdir, fn))
    entries = {}
    common = ["run", *b.model_args(), "--world-size", "1", "--strategy", "single",
              "--batch", str(g["parity_batch"]), "--seed", "0", "--warmup", "1", "--repeats", "2"]
    singles = [("single", a.device, 1)]
    if a.device != "cpu":
        singles.append(("single_cpu", "cpu", max(1, min(8, (os.cpu_count() or 2) // 2))))
    for name, dev, threads in singles:
        npy = os.path.join(pdir, f"{name}.npy")
        r = b.sh(f"parity_{name}", [PY, "-m", "runtime", *common, "--device", dev, "--threads", str(threads),
                                    "--save-output", npy], 240)
        res = b.last_json(r["stdout"]) if r["rc"] == 0 else None
        e = {"strategy": "single", "device": dev, "command": r["cmd"], "seconds": r["seconds"]}
        if res is None or not os.path.exists(npy):
            e["error"] = f"rc={r['rc']} timed_out={r['timed_out']}: " + (r["stderr_tail"] or [""])[-1]
        else:
            e.update(_run_summary(res))
        entries[name] = e
    configs = _parity_configs(b)
    plan = {"timeout_s": g["pg_timeout"], "configs": configs}
    plan_path = os.path.join(pdir, "plan.json")
    _dump(plan_path, plan)
    from runtime.launch import LaunchError, launch

    t = time.monotonic()
    err = None
    budget = max(10.0, min(420.0, b.left() - 5))
    with open(os.path.join(b.logs, "parity_dist.err"), "ab") as fe:
        try:
            launch([PY, SCRIPT, "_parity-rank", "--plan", plan_path], 2, master_addr="127.0.0.1",
                   timeout_s=budget, stderr=fe,
                   env_per_rank=lambda r: {"PYTHONPATH": b.env["PYTHONPATH"], "PYTHONUNBUFFERED": "1",
                                           "PRISM_EDGE_LOG": b.env["PRISM_EDGE_LOG"],
                                           "GLOO_SOCKET_IFNAME": "lo"})
        except (LaunchError, OSError) as e:
            err = f"{type(e).__name__}: {e}"
    dist_s = round(time.monotonic() - t, 2)
    ref = np.load(os.path.join(pdir, "single.npy")) if "error" not in entries["single"] else None
    for c in configs:
        name = c["name"]
        e = {"strategy": c["cfg"]["strategy"], "options": c["cfg"]["options"], "device": a.device,
             "world_size": 2, "batch": c["cfg"]["batch"],
             "command_equivalent": "python -m runtime run " + " ".join(b.model_args()) +
             f" --strategy {c['cfg']['strategy']} --world-size 2 --batch {c['cfg']['batch']} --seed 0"
             f" --device {a.device}" + "".join(f" --{k} {v:g}" for k, v in c["cfg"]["options"].items())}
        res = _load(c["json"])
        errs = [(_load(f"{c['json']}.rank{r}.error") or {}).get("error") for r in range(2)]
        errs = [f"rank {r}: {x}" for r, x in enumerate(errs) if x]
        if res is None or not os.path.exists(c["cfg"]["save_output"]):
            e["error"] = "; ".join(errs) or err or "no result"
        else:
            e.update(_run_summary(res))
            e["seconds"] = res.get("wall_s")
        entries[name] = e
    if ref is not None:
        for name, e in entries.items():
            npy = os.path.join(pdir, f"{name}.npy")
            if name == "single" or "error" in e or not os.path.exists(npy):
                continue
            e["vs_single"] = _compare(ref, np.load(npy))
    expect = {"single_cpu": "reference (GPU vs CPU: kernels differ, reported only)",
              "voltage": "exact", "tensor_parallel": "exact", "prism_m_eq_Lp": "exact",
              f"prism_cr{PRISM_CR:g}": "approximate (max abs diff reported)"}
    failed = []
    for name, e in entries.items():
        e["expect"] = expect.get(name, "reference")
        if "error" in e:
            e["passed"] = False
            failed.append(name)
        elif e["expect"] == "exact":
            e["passed"] = bool(e.get("vs_single", {}).get("allclose"))
            if not e["passed"]:
                failed.append(name)
        else:
            e["passed"] = "vs_single" in e or name == "single"
    pm = entries.get("prism_m_eq_Lp", {})
    if pm.get("partition") and pm.get("m") is not None:
        pm["m_is_Lp"] = pm["m"] == max(pm["partition"])
    out = {"created": _now(), "tolerance": TOL, "reference": "single", "device": a.device,
           "dry_run": a.device == "cpu", "model": g["model"], "img_size": g["img_size"],
           "depth": g["depth"], "batch": g["parity_batch"], "seed": 0,
           "distributed": {"launch": "2 ranks on loopback (GLOO), sharing the device, one launch",
                           "seconds": dist_s, "error": err},
           "entries": entries, "failed": failed}
    _dump(os.path.join(b.out, "parity.json"), out)
    b.state["parity"] = out
    info = {"failed": failed,
            "max_abs_diff": {n: e.get("vs_single", {}).get("max_abs_diff") for n, e in entries.items()
                             if "vs_single" in e}}
    if failed:
        info["error"] = "; ".join(f"{n}: {entries[n].get('error') or 'not within tolerance'}" for n in failed)
        return "failed", info
    return "ok", info


# =========================================================================== step: testbed

def step_testbed(b: Bench):
    res = {}
    modes = []
    if b.a.testbed in ("auto", "netns"):
        modes.append(("netns", 200.0))
    modes.append(("loopback", 1000.0))
    for mode, bw in modes:
        r = b.sh(f"testbed_{mode}", [PY, "-m", "runtime", "testbed", "check", "--mode", mode,
                                     "--bw", f"{bw:g}", "--seconds", "1", "--prefix", "gs"], 90)
        got = b.last_json(r["stdout"]) if r["rc"] == 0 else None
        if got is None:
            res[mode] = {"ok": False, "command": r["cmd"], "rc": r["rc"], "timed_out": r["timed_out"],
                         "error": " | ".join(r["stderr_tail"])}
        else:
            res[mode] = {"ok": True, "command": r["cmd"], **got}
    if b.a.testbed == "loopback":
        res["netns"] = {"ok": False, "skipped": "--testbed loopback"}
    b.state["testbed"] = res
    mode = "loopback"
    if b.a.testbed == "netns" or (b.a.testbed == "auto" and res.get("netns", {}).get("ok")):
        mode = "netns"
    b.state["sweep_mode"] = mode
    _dump(os.path.join(b.out, "testbed.json"), {"created": _now(), "checks": res, "sweep_mode": mode})
    info = {"sweep_mode": mode,
            "netns": {k: res["netns"].get(k) for k in ("ok", "bw", "bw_measured", "error_pct", "error", "skipped")}
            if "netns" in res else None,
            "loopback_mbps": res["loopback"].get("bw_measured")}
    if not res["loopback"]["ok"]:
        return "failed", {**info, "error": "loopback rate check failed: " + res["loopback"].get("error", "")}
    return "ok", info


# =========================================================================== step: sweep

def _sweep_argv(b: Bench, mode: str, out: str, bws, strategies: str) -> list:
    g = b.grid
    return [PY, "-m", "runtime", "profile", *b.model_args(img=False),
            "--img-size", str(g["img_size"]), "--strategy", strategies,
            "--batch", ",".join(str(x) for x in g["batches"]),
            "--bw", ",".join(f"{x:g}" for x in bws),
            "--cr", ",".join(f"{x:g}" for x in g["crs"]), "--world-size", "2", "--blocks",
            "--device", b.a.device, "--testbed", mode, "--warmup", str(g["warmup"]),
            "--repeats", str(g["repeats"]), "--timeout", f"{g['pg_timeout']:g}", "--meter", "none",
            "--prefix", "gs", "--no-progress", "--out", out]


def _sweep_parts(b: Bench, mode: str) -> list:
    """(file name, rates, strategies): on a shaped link the fastest rate first, with single,
    then the slower rates in a map of their own, so that a time-out in the slow part
    still leaves a perf map; on loopback one part (the rate is not applied)."""
    bws = sorted(b.grid["bws"])
    if mode == "loopback":
        return [("perfmap_loopback.json", bws[:1], "single,voltage,prism")]
    parts = [(f"perfmap_bw{bws[-1]:g}.json", bws[-1:], "single,voltage,prism")]
    if len(bws) > 1:
        parts.append(("perfmap_bw" + "_".join(f"{x:g}" for x in bws[:-1]) + ".json", bws[:-1], "voltage,prism"))
    return parts


def _map_ok(path: str):
    """(ok, why, counts): the perf map validates and has error-free distributed rows."""
    from costmodel.perfmap import validate_perfmap

    d = _load(path)
    if d is None:
        return False, "no perf map written", {}
    try:
        validate_perfmap(d)
    except Exception as e:  # noqa: BLE001
        return False, f"perf map invalid: {e}", {}
    recs = d["records"]
    good = [r for r in recs if not r.get("error")]
    counts = {"n_records": len(recs), "n_errors": len(recs) - len(good),
              "n_distributed_ok": sum(1 for r in good if r["world_size"] > 1),
              "testbed_mode": d["cluster"].get("testbed_mode")}
    if not counts["n_distributed_ok"]:
        errs = sorted({str(r.get("error"))[:200] for r in recs if r.get("error")})
        return False, "no distributed record without error: " + "; ".join(errs[:3]), counts
    return True, "", counts


def step_sweep(b: Bench):
    from costmodel.perfmap import merge_perfmaps, save_perfmap

    mode = b.state.get("sweep_mode", "loopback")
    attempts, good = [], []
    plan = [(mode, part) for part in _sweep_parts(b, mode)]
    i = 0
    while i < len(plan):
        m, (fname, bws, strategies) = plan[i]
        i += 1
        if b.left() < 30:
            attempts.append({"mode": m, "map": fname, "skipped": "global budget exhausted"})
            continue
        out = os.path.join(b.out, fname)
        r = b.sh("sweep_" + fname[len("perfmap_"):-len(".json")],
                 _sweep_argv(b, m, out, bws, strategies), 240 if b.a.quick else 330)
        ok, why, counts = _map_ok(out)
        if not ok and r["stderr_tail"]:
            why += (" (timed out)" if r["timed_out"] else "") + f": {r['stderr_tail'][-1][:200]}"
        attempts.append({"mode": m, "map": fname, "bws": list(bws), "strategies": strategies,
                         "command": r["cmd"], "rc": r["rc"], "timed_out": r["timed_out"],
                         "seconds": r["seconds"], "ok": ok, "why": why, **counts,
                         "stderr_tail": None if ok else r["stderr_tail"]})
        if ok:
            good.append(out)
        elif m != "loopback" and not good and i == 1:
            # the shaped testbed failed on its first part: measure on loopback instead
            plan = [(m, plan[0][1]), *(("loopback", p) for p in _sweep_parts(b, "loopback"))]
            i = 1
    b.state["sweep"] = attempts
    path = os.path.join(b.out, "perfmap.json")
    if len(good) == 1:
        shutil.copyfile(good[0], path)
    elif len(good) > 1:
        save_perfmap(merge_perfmaps(*good), path)
    b.state["perfmap"] = path if good else None
    info = {"perfmap": "perfmap.json" if good else None, "parts": [os.path.basename(g) for g in good],
            "attempts": attempts}
    failed = [x for x in attempts if not x.get("ok")]
    if failed:
        return ("partial" if good else "failed"), {**info, "error": "; ".join(f"{x['mode']} {x['map']}: {x.get('why') or x.get('skipped')}"
                                                     for x in failed)}
    return "ok", info


# =========================================================================== step: fit

def _unshaped_bw(b: Bench):
    d = _load(b.state["perfmap"])
    if not any(r.get("bw") is None and r["world_size"] > 1 for r in d["records"]):
        return None
    lb = b.state.get("testbed", {}).get("loopback", {})
    return float(lb.get("bw_measured") or 10000.0)


def step_fit(b: Bench):
    if not b.state.get("perfmap"):
        return "skipped", {"reason": "no perf map"}
    pm = b.state["perfmap"]
    ub = _unshaped_bw(b)
    extra = ["--unshaped-bw", f"{ub:.1f}"] if ub else []
    prof = os.path.join(b.out, "profile.json")
    info = {"unshaped_bw": ub}
    r = b.sh("fit", [PY, "-m", "costmodel", "fit", pm, "--out", prof, "--name", "gpu-staging",
                     "--description", f"benchmarks/gpu_staging.py on {b.state.get('env', {}).get('gpu') or b.a.device}",
                     *extra], 240)
    fit = b.last_json(r["stdout"]) if r["rc"] == 0 else None
    if fit is None or not os.path.exists(prof):
        return "failed", {**info, "error": f"fit rc={r['rc']}: " + " | ".join(r["stderr_tail"])}
    b.state["fit"] = fit
    info["physical_staging"] = (fit.get("physical") or {}).get("staging")
    failed = []
    r = b.sh("validate", [PY, "-m", "costmodel", "validate", "--model", prof, pm], 120)
    v = b.last_json(r["stdout"])
    if v is not None:
        _dump(os.path.join(b.out, "validate.json"), v)
        b.state["validate"] = v
        info["in_sample_latency_mape"] = (v.get("latency") or {}).get("mape")
    else:
        failed.append(f"validate rc={r['rc']}: " + " | ".join(r["stderr_tail"]))
    ho = os.path.join(b.out, "held_out.json")
    r = b.sh("held_out", [PY, "-m", "costmodel", "evaluate", "held-out", pm, "--out", ho, *extra,
                          *(["--quick"] if b.a.quick else [])], 240)
    h = _load(ho)
    if h is None:
        failed.append(f"evaluate held-out rc={r['rc']}: " + " | ".join(r["stderr_tail"]))
    else:
        b.state["held_out"] = h
        info["held_out_axes"] = sorted((h.get("held_out") or {}).keys())
    if failed:
        return "failed", {**info, "error": "; ".join(failed)}
    return "ok", info


# =========================================================================== step: staging fit

def _jetson_reference() -> dict:
    d = _load(JETSON_PROFILE) or {}
    st = (d.get("physical") or {}).get("staging") or {}
    return {"source": os.path.relpath(JETSON_PROFILE, ROOT) + " (physical.staging; docs/costmodel.md)",
            "per_strategy": {g: {"per_exchange_ms": v.get("per_exchange_ms"),
                                 "mb_per_s": v.get("staging_mb_per_s"),
                                 "ms_per_mb": (1e3 / v["staging_mb_per_s"]) if v.get("staging_mb_per_s") else None}
                             for g, v in st.items()},
            "quoted": "179 MB/s (Prism), 464 MB/s + 6.7 ms per exchange (Voltage)"}


def staging_fit(perfmap: dict) -> dict:
    """Per-block least squares staging_ms = fixed + ms_per_mb * staged MB (one exchange a
    block for voltage / prism), per strategy and pooled; and per pass in the cost model's
    form staging = s_exchange * n_exchanges + staged MB * ms_per_mb (no intercept)."""
    import numpy as np

    pts: dict = {}
    passes: dict = {}
    for r in perfmap["records"]:
        if r.get("error") or r["world_size"] < 2 or not r.get("blocks"):
            continue
        for g in (r["strategy"], "*"):
            for blk in r["blocks"]:
                pts.setdefault(g, []).append((blk["staged_bytes"] / 1e6, blk["staging_ms"]))
            passes.setdefault(g, []).append((len(r["blocks"]), r["staged_bytes"] / 1e6, r["staging_ms"]))
    per_block = {g: _linfit([p[0] for p in v], [p[1] for p in v]) for g, v in pts.items()}
    per_pass = {}
    for g, v in passes.items():
        A = np.array([[p[0], p[1]] for p in v], float)
        y = np.array([p[2] for p in v], float)
        if len(v) < 2 or np.ptp(A[:, 1]) <= 0:
            per_pass[g] = {"n": len(v), "per_exchange_ms": float(np.sum(y) / np.sum(A[:, 0])),
                           "ms_per_mb": None, "mb_per_s": None,
                           "note": "no spread in staged MB: only the time per exchange is fitted"}
            continue
        (sex, kmb), *_ = np.linalg.lstsq(A, y, rcond=None)
        per_pass[g] = {"n": len(v), "per_exchange_ms": float(sex), "ms_per_mb": float(kmb),
                       "mb_per_s": float(1e3 / kmb) if kmb > 0 else None}
    return {"per_block": per_block, "per_pass": per_pass}


def step_staging(b: Bench):
    out = {"created": _now(), "device": b.a.device, "dry_run": b.a.device == "cpu",
           "method": "per block: ordinary least squares staging_ms = fixed_ms + ms_per_mb * staged MB "
                     "(staged MB = own rows device->host + peers' rows host->device); per pass: "
                     "staging_ms = per_exchange_ms * blocks + ms_per_mb * staged MB",
           "jetson": _jetson_reference()}
    pm = b.state.get("perfmap")
    if pm:
        out["perfmap"] = os.path.relpath(pm, b.out)
        out["runtime"] = staging_fit(_load(pm))
    else:
        out["runtime"] = None
    if b.state.get("fit"):
        out["costmodel_fit"] = ((b.state["fit"].get("physical") or {}).get("staging"))
    micro = b.state.get("micro")
    if micro:
        out["micro"] = micro["fits"]
    if out["dry_run"]:
        out["note"] = "dry run (--device cpu): nothing is staged; staging_ms is timer overhead only"
    _dump(os.path.join(b.out, "staging_fit.json"), out)
    b.state["staging"] = out
    if out["runtime"] is None:
        return "failed", {"error": "no perf map to fit"}
    pb = out["runtime"]["per_block"].get("*", {})
    return "ok", {"pooled_fixed_ms": pb.get("fixed_ms"), "pooled_mb_per_s": pb.get("mb_per_s")}


# =========================================================================== summary

def _f(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1e-2 and x != 0 else f"{x:.{nd}f}".rstrip("0").rstrip(".")
    return str(x)


def write_summary(b: Bench) -> None:
    s, L = b.state, []
    env = s.get("env") or {}
    probe_t = ((env.get("probe") or {}).get("torch") or {})
    L += ["# GPU staging run (benchmarks/gpu_staging.py)", "",
          f"- created {_now()}, device `{b.a.device}`, grid `{'quick' if b.a.quick else 'full'}`, "
          f"budget {b.budget:.0f} s, elapsed {time.monotonic() - b.t0:.0f} s",
          f"- **dry run**: {env.get('dry_run_note')}" if env.get("dry_run") else "- real device run",
          f"- torch {probe_t.get('version')} (CUDA build {probe_t.get('cuda_build')}), cuda available: "
          f"{probe_t.get('cuda_available')}, GPU: {env.get('gpu')}, driver: {env.get('driver')}",
          f"- python {env.get('python')} ({env.get('executable')}), {env.get('cpu_count')} cores, "
          f"root: {env.get('is_root')}, missing packages: {env.get('missing_required')}", "",
          "## Steps", "", "| step | status | s | note |", "|---|---|---|---|"]
    for st in b.steps:
        note = st.get("error") or st.get("reason") or ""
        L.append(f"| {st['step']} | {st['status']} | {st['seconds']} | {str(note)[:160].replace('|', '/')} |")
    par = s.get("parity")
    if par:
        L += ["", f"## Parity (logits vs single, atol = rtol = {TOL['atol']:g}; "
              f"{par['model']} img {par['img_size']} depth {par['depth']}, batch {par['batch']})", "",
              "| run | device | expect | max abs diff | allclose | top-1 agree | passed | latency ms | staging ms (rank 0) |",
              "|---|---|---|---|---|---|---|---|---|"]
        for n, e in par["entries"].items():
            v = e.get("vs_single", {})
            L.append(f"| {n} | {e.get('device')} | {e.get('expect')} | {_f(v.get('max_abs_diff'))} | "
                     f"{v.get('allclose', '-')} | {_f(v.get('top1_agreement'))} | {e.get('passed')} | "
                     f"{_f(e.get('latency_ms_median'))} | {_f((e.get('rank0') or {}).get('staging_ms'))} |"
                     + (f" error: {e['error'][:120]}" if e.get("error") else ""))
    tb = s.get("testbed")
    if tb:
        L += ["", "## Testbed checks", ""]
        for m, r in tb.items():
            if r.get("ok"):
                req = (r.get("link") or {}).get("bw_requested")
                L.append(f"- {m}: ok, {_f(req)} Mbit/s requested, {_f(r.get('bw_measured'))} Mbit/s measured"
                         + (" (unshaped)" if r.get("bw") is None else f" (shaped, error {_f(r.get('error_pct'))} %)"))
            else:
                L.append(f"- {m}: not used ({r.get('skipped') or r.get('error')})")
        L.append(f"- sweep testbed mode: **{s.get('sweep_mode')}**")
    pm = _load(s["perfmap"]) if s.get("perfmap") else None
    if pm:
        recs = [r for r in pm["records"] if not r.get("error")]
        parts = ", ".join(x["map"] + (" ok" if x.get("ok") else f" FAILED ({x.get('why') or x.get('skipped')})")
                          for x in s.get("sweep") or [])
        L += ["", f"## Perf map ({os.path.relpath(s['perfmap'], b.out)}: {len(pm['records'])} records, "
              f"{len(pm['records']) - len(recs)} errors, link {pm['cluster'].get('testbed_mode')}; "
              f"parts: {parts})", ""]
        batches = sorted({r["batch"] for r in recs})
        L += ["Latency median, ms (staging ms of rank 0 in brackets)", "",
              "| strategy | bw | " + " | ".join(f"B={x}" for x in batches) + " |",
              "|---|---|" + "---|" * len(batches)]
        rows: dict = {}
        for r in recs:
            lab = r["strategy"] + (f" cr {r.get('cr_requested') or r['cr']:g} (L_p/m = {r['cr']:.3g})"
                                   if r["strategy"] == "prism" and r.get("cr") else "")
            rows.setdefault((lab, r.get("bw")), {})[r["batch"]] = r
        for (lab, bw), by in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            L.append(f"| {lab} | {_f(bw)} | " + " | ".join(
                f"{by[x]['latency_ms']['median']:.2f} ({by[x]['staging_ms']:.2f})" if x in by else "-"
                for x in batches) + " |")
    stg = s.get("staging")
    if stg:
        L += ["", "## Staging fit (fixed ms per exchange, MB/s)", "",
              "| source | group | n | fixed ms / exchange | ms per MB | MB/s |", "|---|---|---|---|---|---|"]
        for kind in ("per_block", "per_pass"):
            for g, f in ((stg.get("runtime") or {}).get(kind) or {}).items():
                L.append(f"| runtime {kind} | {g} | {f.get('n')} | "
                         f"{_f(f.get('fixed_ms', f.get('per_exchange_ms')))} | {_f(f.get('ms_per_mb'))} | "
                         f"{_f(f.get('mb_per_s'))} |")
        for g, f in (stg.get("costmodel_fit") or {}).items():
            L.append(f"| costmodel fit | {g} | - | {_f(f.get('per_exchange_ms'))} | - | {_f(f.get('staging_mb_per_s'))} |")
        for g, f in (stg.get("micro") or {}).items():
            L.append(f"| micro copies | {g} | {f.get('n')} | {_f(f.get('fixed_ms'))} | {_f(f.get('ms_per_mb'))} | "
                     f"{_f(f.get('mb_per_s'))} |")
        for g, f in stg["jetson"]["per_strategy"].items():
            L.append(f"| Jetson Orin Nano | {g} | - | {_f(f.get('per_exchange_ms'))} | {_f(f.get('ms_per_mb'))} | "
                     f"{_f(f.get('mb_per_s'))} |")
        if stg.get("note"):
            L += ["", f"Note: {stg['note']}."]
    v = s.get("validate")
    h = (s.get("held_out") or {}).get("held_out")
    if v or h:
        L += ["", "## Cost model on this map", ""]
        if v:
            L.append(f"- in-sample latency MAPE {_f((v.get('latency') or {}).get('mape'))} % "
                     f"(profile.json; validate.json)")
        for ax, res in (h or {}).items():
            hy = ((res.get("hybrid") or {}).get("latency") or {}).get("mape")
            an = ((res.get("analytical") or {}).get("latency") or {}).get("mape")
            L.append(f"- held out along {ax} ({res.get('values')}): latency MAPE hybrid {_f(hy)} %, "
                     f"analytical {_f(an)} %")
    L.append("")
    with open(os.path.join(b.out, "summary.md"), "w") as f:
        f.write("\n".join(L))


# =========================================================================== main

def _parser():
    ap = argparse.ArgumentParser(prog="python benchmarks/gpu_staging.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: a dry run)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny grid: test_vit img 96 depth 2, batch 1,2, one rate (the dry-run test)")
    ap.add_argument("--testbed", default="auto", choices=("auto", "netns", "loopback"),
                    help="auto: netns when its check passes, else loopback")
    ap.add_argument("--bws", default=None, help="link rates of the sweep, Mbit/s, comma separated "
                    "(default 200,1000; --quick 200)")
    ap.add_argument("--budget", type=float, default=None,
                    help="global wall-time budget, s (default 480 full, 300 quick)")
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if ROOT not in sys.path:    # a lent GPU machine runs the working tree without installing it
        sys.path.insert(0, ROOT)
    if argv and argv[0] == "_env":
        print(json.dumps(probe_env(argv[argv.index("--device") + 1]), default=str))
        return 0
    if argv and argv[0] == "_micro":
        print(json.dumps(micro_bench(argv[argv.index("--device") + 1])))
        return 0
    if argv and argv[0] == "_parity-rank":
        return parity_rank(argv[argv.index("--plan") + 1])
    a = _parser().parse_args(argv)
    if a.device != "cpu" and not a.device.startswith("cuda"):
        print(f"error: --device {a.device!r}; allowed: cuda, cuda:N, cpu", file=sys.stderr)
        return 2
    b = Bench(a)
    b.state["started"] = _now()
    b.step("env", lambda: step_env(b), min_s=0)
    b.step("micro", lambda: step_micro(b), needs_device=True)
    b.step("parity", lambda: step_parity(b), min_s=20, needs_device=True)
    b.step("testbed", lambda: step_testbed(b))
    b.step("sweep", lambda: step_sweep(b), min_s=30, needs_device=True)
    b.step("fit", lambda: step_fit(b), min_s=10)
    b.step("staging_fit", lambda: step_staging(b), min_s=0)
    try:
        write_summary(b)
    except Exception as e:  # noqa: BLE001
        with open(os.path.join(b.out, "summary.md"), "w") as f:
            f.write(f"# GPU staging run\n\nsummary failed: {type(e).__name__}: {e}\n\nsee steps.json\n")
    bad = [s["step"] for s in b.steps if s["status"] == "failed"]
    print(json.dumps({"out": b.out, "elapsed_s": round(time.monotonic() - b.t0, 1), "failed": bad,
                      "steps": {s["step"]: s["status"] for s in b.steps}}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
