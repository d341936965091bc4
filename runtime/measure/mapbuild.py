"""A perf map from a sweep's raw rows: one record per configuration (passes combined),
the environment, the cluster and link description, the protocol (docs/perfmap.md)."""
from __future__ import annotations

import os
import platform
import statistics

from costmodel.perfmap import PHASES as PHASE_KEYS, model_entry
from costmodel.strategies import get_formula
from .rawlog import now
from .spec import model_shape


def combine_passes(rows: list) -> dict:
    """One perf-map record from the rows of one configuration's passes: latency median
    = the median of the passes' medians (p10 / p90 over every repeat of every pass),
    phases and energy = medians over passes, `passes` = each pass's latency median and
    their spread, and each pass's phase times (compute_ms / staging_ms / comm_ms lists,
    for the per-phase floor in costmodel/noise.py). Rows with an error are left out while
    at least one pass measured."""
    import numpy as np

    good = [r for r in rows if not r.get("error")]
    if len(rows) == 1 or not good:
        out = dict(rows[-1])
        out["key"] = out["key"].split("#pass")[0]
        return out
    meds = [r["latency_ms"]["median"] for r in good]
    med = float(statistics.median(meds))
    rep = min(good, key=lambda r: abs(r["latency_ms"]["median"] - med))   # ranks, blocks, link
    out = dict(rep)
    out["key"] = rep["key"].split("#pass")[0]
    samples = [v for r in good for v in r["latency_ms"]["samples"]]
    p10, p90 = np.percentile(samples, [10, 90])          # as run_group does for one pass
    out["latency_ms"] = {"median": med, "p10": float(p10), "p90": float(p90), "n": len(samples),
                         "samples": samples}
    out["per_sample_ms"] = med / rep["batch"]
    for k in PHASE_KEYS:
        out[k] = float(statistics.median(r[k] for r in good))
    for k in ("energy_j", "energy_est_j"):
        vals = [r.get(k) for r in good]
        out[k] = float(statistics.median(vals)) if all(v is not None for v in vals) else None
    out["wall_s"] = round(sum(r.get("wall_s", 0.0) for r in rows), 4)
    foreign = [r["host_foreign_cpu_pct"] for r in good if r.get("host_foreign_cpu_pct") is not None]
    if foreign:
        out["host_foreign_cpu_pct"] = max(foreign)
    out["passes"] = {"n": len(good), "n_errors": len(rows) - len(good),
                     "latency_median_ms": [round(m, 4) for m in meds],
                     "spread_pct": round((max(meds) / min(meds) - 1) * 100, 2),
                     **{k: [None if r.get(k) is None else round(r[k], 4) for r in good] for k in PHASE_KEYS}}
    return out


def environment(link_emulation) -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "python": platform.python_version(),
            "kernel": platform.release(), "os": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "gpu": gpu, "link_emulation": link_emulation}


def _checks_from(records: list) -> list:
    seen, out = set(), []
    for r in records:
        k = (r["world_size"], r.get("bw"))
        if r.get("bw") is not None and k not in seen and r.get("bw_measured") is not None:
            seen.add(k)
            out.append({"world_size": r["world_size"], "bw": r["bw"], "bw_measured": r["bw_measured"]})
    return out


def build_map(sweep) -> dict:
    """The perf map of a Sweep (driver.py) from its raw log: records, models, environment,
    cluster, protocol and sweep sections (schema: costmodel/perfmap.schema.json)."""
    sp = sweep.spec
    by_base: dict = {}          # the configuration -> its rows, one per pass measured
    for c in sweep.configs:
        row = sweep.raw.rows.get(c.key)
        if row is not None:
            by_base.setdefault(c.base_key, []).append(
                {k: v for k, v in row.items() if k not in ("created",)})
    records = [combine_passes(rows) for rows in by_base.values()]
    models, seen = [], set()
    for m in sp.models:
        for i in sp.img_sizes:
            sh = model_shape(sp, m, i)
            if (sh.name, sh.seq_len) not in seen:
                seen.add((sh.name, sh.seq_len))
                models.append({**model_entry(sh), "img_size": i})
    for r in records:      # error rows written before the token count was known
        if r.get("seq_len") is None:
            r["seq_len"] = model_shape(sp, r["model"], r["img_size"]).seq_len
    links = {str(k): v for k, v in sorted(sweep.links.items())}
    if not links:     # everything was resumed: take the link description from the rows
        for r in records:
            if r.get("link") and str(r["world_size"]) not in links:
                links[str(r["world_size"])] = {k: v for k, v in r["link"].items()
                                               if k not in ("bw", "bw_requested", "bw_measured",
                                                            "shaper_rate_mbit", "bw_measured_bytes")}
    checks = sweep.link_checks or _checks_from(records)
    ncores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ws_all = sorted({r["world_size"] for r in records} | set(sp.world_sizes if sp.distributed() else ())
                    | ({1} if sp.local() else set()))
    mode = sweep.mode or "none"
    d = {
        "schema_version": 1, "kind": "prism-edge.perfmap", "source": "measured",
        "created": now(),
        "units": {"latency_ms": "ms", "per_sample_ms": "ms", "compute_ms": "ms",
                  "staging_ms": "ms", "comm_ms": "ms", "bw": "Mbit/s (TCP payload)",
                  "bw_measured": "Mbit/s", "energy_j": "J", "energy_est_j": "J",
                  "comm_bytes": "bytes", "staged_bytes": "bytes", "wall_s": "s",
                  "duration_s": "s"},
        "environment": environment(links),
        "cluster": {"world_sizes": ws_all,
                    "devices": f"P ranks as processes on one host ({ncores} usable cores), "
                               "one core and one torch thread per rank"
                               + (" (cores shared when P > cores)" if max(ws_all) > (ncores or 1) else ""),
                    "link": {"netns": "veth + bridge in network namespaces, tc tbf both directions",
                             "unshare": "veth + bridge in unprivileged user+net namespaces, tc tbf both directions",
                             "loopback": "loopback, UNSHAPED (bw null)",
                             "none": "no link (single only)"}.get(mode, mode),
                    "testbed_mode": mode, "link_checks": checks},
        "models": models,
        "protocol": {**sp.protocol(), **({"passes": sp.passes, "passes_rule":
                     "the whole grid measured `passes` times in turn; a record's median is the "
                     "median of its passes' medians"} if sp.passes > 1 else {}),
                     "pinning": "one core per rank (taskset), rank r -> core r mod cores",
                     "latency": "per repeat, the slowest rank's time for one batch after a barrier",
                     "phases": "rank 0 per-phase totals, median over repeats",
                     "energy": f"meter={sp.meter}; estimate power model={sp.power_model}",
                     "single": "one process, no link, pinned to core 0"},
        "sweep": {"axes": {"strategy": list(sp.strategies), "model": list(sp.models),
                           "batch": list(sp.batches),
                           "bw": list(sp.bws) if mode not in ("loopback",) else [None],
                           "cr": list(sp.crs) if any(get_formula(s).compresses for s in sp.strategies) else [],
                           "img_size": list(sp.img_sizes),
                           "seq_len": sorted({m["seq_len"] for m in models}),
                           "world_size": ws_all},
                  "n_configs": len({c.base_key for c in sweep.configs}), "n_records": len(records),
                  "n_errors": sum(1 for r in records if r.get("error")),
                  "duration_s": round(sum(r.get("wall_s", 0.0) for r in records), 2),
                  "duration_note": "sum of the wall time attributed to each record (set-up, "
                                   "rate checks, launches and measurement), over all sessions",
                  "raw": os.path.basename(sweep.raw_path)},
        "records": records,
    }
    if sweep.host_checks:
        d["cluster"]["host_check"] = dict(sweep.host_checks)
    if sweep.overrides:      # another launcher (measure/cluster.py) describes its devices
        for section, fields in sweep.overrides.items():
            d[section].update(fields)
    return d

