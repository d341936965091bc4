"""SYNTHETIC perf maps for tests and for exercising the benchmark before testbed data exists.

Never data: every map made here has `source: "synthetic"` and records with
`energy_source: "none"`. The generating physics is deliberately *not* the cost model's
own form (a small-message link inefficiency, an attention-size throughput loss, a
seq_len-dependent overhead), plus log-normal noise, so the residual layer has something
real to learn and the analytical layer cannot fit it exactly.

tensor_parallel / galaxy rows appear only when `axes["strategy"]` names them (the
default grid is unchanged): their link pays per message step (`n_messages`, a ring
all-reduce's 2 (P-1) steps), with tensor_parallel adding a CPU reduction of the bytes
it receives and galaxy hiding a share of its transfer behind compute.
"""
from __future__ import annotations

import math

import numpy as np

from .features import physics
from .formulas import vit_shape
from .perfmap import SCHEMA_VERSION, model_entry, validate_perfmap

DEFAULT_AXES = {"strategy": ("single", "voltage", "prism"), "batch": (1, 2, 4, 8, 16, 32),
                "bw": (200.0, 300.0, 500.0, 700.0, 900.0), "cr": (3.3, 4.95, 9.9),
                "img_size": (128, 224, 256), "world_size": (2, 3)}


def _true_phases(f: dict, rng, noise: float) -> dict:
    """The synthetic ground truth (ms) for physics features f."""
    n_ex, batch = f["n_exchanges"], f["batch"]
    steps = f.get("n_messages", n_ex)
    attn = batch * f["seq_len"] ** 2 / 1e5                    # attention-matrix size proxy
    thr = 60e9 * f["rows"] / (f["rows"] + 80.0) / (1.0 + 0.08 * np.log1p(attn))
    compute = 2.0 + 0.3 * n_ex + f["flops"] / thr * 1e3
    staging = 0.04 * n_ex + f["staged_bytes"] / 2.5e9 * 1e3
    with np.errstate(invalid="ignore", divide="ignore"):
        msg = np.where(n_ex > 0, f["wire_bytes"] / np.maximum(steps, 1), 0.0)
        eff = 0.93 * msg / (msg + 16e3)
        comm = np.where(n_ex > 0, 0.6 * steps + f["wire_bytes"] * 8 / (f["bw"] * 1e6 * eff) * 1e3, 0.0)
        strat = np.asarray(f["strategy"], dtype=object)
        comm = np.where(strat == "tensor_parallel", comm + f["wire_bytes"] / 1.5e9 * 1e3, comm)
        comm = np.where(strat == "galaxy", 0.8 * comm, comm)
    other = 1.0 + 0.15 * batch + 0.004 * f["seq_len"]
    out = {"compute": compute, "staging": staging, "comm": comm, "other": other}
    for k, v in out.items():
        out[k] = v * np.exp(rng.normal(0.0, noise, size=v.shape))
    return out


def synthetic_perfmap(*, seed: int = 0, noise: float = 0.02, axes: dict | None = None,
                      model: str = "vit_small_patch16_224", d: int = 384, heads: int = 6) -> dict:
    """A validated perf-map dict with source 'synthetic' over the grid `axes`."""
    ax = dict(DEFAULT_AXES, **(axes or {}))
    rng = np.random.default_rng(seed)
    shapes = {img: vit_shape(model, img_size=img, d=d, heads=heads) for img in ax["img_size"]}
    configs = []
    for s in ax["strategy"]:
        for img in ax["img_size"]:
            for b in ax["batch"]:
                if s == "single":
                    configs.append((s, img, b, None, None, 1))
                    continue
                for ws in ax["world_size"]:
                    for bw in ax["bw"]:
                        for cr in (ax["cr"] if s == "prism" else (None,)):
                            configs.append((s, img, b, bw, cr, ws))
    records = []
    for img, shape in shapes.items():
        cs = [c for c in configs if c[1] == img]
        ok = []
        for c in cs:   # a cr impossible for this token count is skipped, as a sweep would refuse it
            lp = math.ceil(shape.seq_len / c[5])
            if c[0] != "prism" or 1 <= c[4] <= lp:
                ok.append(c)
        f = physics([c[0] for c in ok], [c[2] for c in ok], [np.nan if c[3] is None else c[3] for c in ok],
                    [np.nan if c[4] is None else c[4] for c in ok], shape.seq_len, [c[5] for c in ok], shape)
        ph = _true_phases(f, rng, noise)
        for i, (s, _, b, bw, cr, ws) in enumerate(ok):
            total = sum(float(ph[k][i]) for k in ph)
            records.append({
                "strategy": s, "model": model, "seq_len": shape.seq_len, "world_size": ws, "batch": b,
                "bw": bw, "bw_measured": None, "cr": cr,
                "m": int(f["m"][i]) if s == "prism" else None, "exchange": "pairwise",
                "latency_ms": {"median": total, "p10": total * (1 - noise), "p90": total * (1 + noise), "n": 5},
                "per_sample_ms": total / b, "compute_ms": float(ph["compute"][i]),
                "staging_ms": float(ph["staging"][i]), "comm_ms": float(ph["comm"][i]),
                "comm_bytes": None, "staged_bytes": None, "energy_j": None,
                "energy_est_j": 12.0 * ws * total / 1e3, "energy_source": "none",
                "energy_model": "synthetic: 12 W per device x latency", "link": None, "error": None})
    d = {"schema_version": SCHEMA_VERSION, "kind": "prism-edge.perfmap", "source": "synthetic",
         "created": f"synthetic seed={seed} noise={noise}", "units": {"latency_ms": "ms", "bw": "Mbit/s"},
         "environment": {"note": "SYNTHETIC: generated by costmodel.synthetic, not measured"},
         "cluster": {"world_sizes": list(ax["world_size"])},
         "models": [model_entry(s) for s in shapes.values()],
         "protocol": {"statistic": "median", "note": "synthetic"},
         "sweep": {"axes": {k: list(v) for k, v in ax.items()}}, "records": records}
    return validate_perfmap(d)
