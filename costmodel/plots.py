"""Figures of perf maps and cost-model predictions (matplotlib only, torch-free).

Each `plot_*` function takes package objects (a PerfMap, a fitted CostModel) and returns a
matplotlib `Figure` (object-oriented API, no pyplot state, so it works headless and in
notebooks); `save_figure` writes it as a PNG atomically. Nothing here re-derives a formula:
measured numbers come from the perf map's records, predicted ones from
`CostModel.predict` / `DecisionTable`. The small `*_table` / `*_gains` / `crossover_bw`
helpers return the numbers behind each figure so notebooks can print and check them.

    pm = load_perfmap("data/perfmaps/jetson_orin_nano_paper.json")
    save_figure(plot_breakdown(pm), "out/breakdown.png")
    save_figure(plot_bandwidth(load_profile(), perfmap=pm), "out/bandwidth.png")

`python -m costmodel plot all --out DIR [--perfmap MAP]` writes the standard set.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .perfmap import PerfMap, atomic_write_bytes, axis_values, load_perfmap, record_latency_ms

STRATEGIES = ("single", "voltage", "prism")
PHASES = ("compute_ms", "staging_ms", "comm_ms", "other_ms")
PHASE_LABEL = {"compute_ms": "compute", "staging_ms": "CPU-GPU staging",
               "comm_ms": "communication", "other_ms": "other (unattributed)"}
PHASE_COLOR = {"compute_ms": "#4878CF", "staging_ms": "#EE854A", "comm_ms": "#6ACC64",
               "other_ms": "#B8B8B8"}
NAME = {"single": "single device", "voltage": "Voltage", "prism": "Prism"}
SHORT = {"single": "S", "voltage": "V", "prism": "P"}
HATCH = {"single": "", "voltage": "///", "prism": ".."}
COLOR = {"single": "#333333", "voltage": "#D65F5F", "prism": "#4878CF", "adaptive": "#2CA02C"}
MARKER = {"single": "o", "voltage": "s", "prism": "^"}
FIGURES = ("breakdown", "per_sample", "bandwidth", "validation", "decision")
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 9.5, "figure.titlesize": 13,
         "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "hatch.linewidth": 0.8}


def _rc():
    import matplotlib

    return matplotlib.rc_context(STYLE)


def _figure(**kw):
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kw)


# ----------------------------------------------------------------------------- files

def data_dir() -> Path:
    """The repository's data/ folder (PRISM_EDGE_DATA overrides it)."""
    env = os.environ.get("PRISM_EDGE_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def testbed_maps(data: Optional[Path] = None) -> list:
    """Emulated-testbed perf maps: data/perfmaps/testbed_*.json, sorted. The environment
    variable PRISM_EDGE_TESTBED_MAP (paths joined by os.pathsep) replaces the glob, so a
    notebook can be pointed at any measured map; its value 'none' means no testbed map."""
    env = os.environ.get("PRISM_EDGE_TESTBED_MAP")
    if env == "none":          # force the no-testbed path (tests, or to skip those figures)
        return []
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return sorted(Path(data or data_dir()).glob("perfmaps/testbed_*.json"))


def save_figure(fig, path, *, dpi: int = 110) -> Path:
    """Write a Figure as PNG atomically (perfmap.atomic_write_bytes: a killed writer never
    leaves half an image). Returns the path."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


# ----------------------------------------------------------------------------- measured data

def _as_perfmap(pm) -> PerfMap:
    return pm if isinstance(pm, PerfMap) else load_perfmap(pm)


def _mode(values):
    c = Counter(v for v in values if v is not None)
    return c.most_common(1)[0][0] if c else None


def select_slice(pm, *, model=None, seq_len=None, world_size=None, bw="max", cr="max") -> dict:
    """Resolve which slice of a perf map a figure shows: model and seq_len (default the
    most frequent), world_size (default the smallest > 1), bw in Mbit/s (a number, None
    for an unshaped link, or 'max' / 'min' of the slice's distributed records), Prism cr
    ('max' / 'min' or a number). Returns the resolved dict."""
    pm = _as_perfmap(pm)
    recs = pm.usable()
    if not recs:
        raise ValueError("perf map has no usable records (all failed or excluded)")
    model = model or _mode(r["model"] for r in recs)
    recs = [r for r in recs if r["model"] == model]
    if not recs:
        raise ValueError(f"model {model!r} is not in the perf map")
    seq_len = seq_len or _mode(r["seq_len"] for r in recs)
    recs = [r for r in recs if r["seq_len"] == seq_len]
    dist = [r for r in recs if r["strategy"] != "single"]
    if world_size is None:
        ws = sorted({r["world_size"] for r in dist})
        world_size = ws[0] if ws else 2
    dist = [r for r in dist if r["world_size"] == world_size]
    if bw in ("max", "min"):
        bws = sorted({float(r["bw"]) for r in dist if r.get("bw") is not None})
        bw = (bws[-1] if bw == "max" else bws[0]) if bws else None
    if cr in ("max", "min"):
        crs = sorted({float(r["cr"]) for r in dist if r["strategy"] == "prism" and r.get("cr") is not None
                      and _same(r.get("bw"), bw)})
        cr = (crs[-1] if cr == "max" else crs[0]) if crs else None
    return {"model": model, "seq_len": seq_len, "world_size": world_size, "bw": bw, "cr": cr}


def _same(a, b, tol=1e-6) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


def _energy(r):
    if r.get("energy_j") is not None:
        return float(r["energy_j"]), "measured"
    if r.get("energy_est_j") is not None:
        return float(r["energy_est_j"]), "estimated"
    return np.nan, None


def measured_table(pm, **select) -> tuple:
    """Measured rows of one slice (see select_slice), per strategy, sorted by batch:
    {strategy: {"batch", "latency_ms", "per_sample_ms", "compute_ms", "staging_ms",
    "comm_ms", "other_ms" (latency minus the three phases, >= 0), "energy_j" (J per batch,
    NaN when absent), "energy_kind" ('measured', 'estimated' or None per row)}}, and the
    resolved selection. Where two records share a batch, the one with more repeats is kept."""
    pm = _as_perfmap(pm)
    sel = select_slice(pm, **select)
    out = {}
    for s in STRATEGIES:
        rows = {}
        for r in pm.usable():
            if r["strategy"] != s or r["model"] != sel["model"] or r["seq_len"] != sel["seq_len"]:
                continue
            if s != "single":
                if r["world_size"] != sel["world_size"] or not _same(r.get("bw"), sel["bw"]):
                    continue
                if s == "prism" and not _same(r.get("cr"), sel["cr"]):
                    continue
            n = (r.get("latency_ms") or {}).get("n") or 0
            if r["batch"] not in rows or n > rows[r["batch"]][0]:
                rows[r["batch"]] = (n, r)
        if not rows:
            continue
        recs = [rows[b][1] for b in sorted(rows)]
        lat = np.array([record_latency_ms(r) for r in recs], float)
        ph = {p: np.array([np.nan if r.get(p) is None else r[p] for r in recs], float)
              for p in PHASES[:3]}
        other = lat - ph["compute_ms"] - ph["staging_ms"] - ph["comm_ms"]
        en = [_energy(r) for r in recs]
        batch = np.array([r["batch"] for r in recs], int)
        out[s] = {"batch": batch, "latency_ms": lat, "per_sample_ms": lat / batch, **ph,
                  "other_ms": np.where(np.isfinite(other), np.maximum(other, 0.0), np.nan),
                  "energy_j": np.array([e for e, _ in en], float),
                  "energy_kind": [k for _, k in en]}
    if not out:
        raise ValueError(f"no usable records in the slice {sel}")
    return out, sel


def adaptive_choice(table: dict) -> dict:
    """{batch: strategy} with the lowest measured batch latency among the strategies that
    have that batch (the profiling-driven policy on a perf map)."""
    best = {}
    for s, t in table.items():
        for b, lat in zip(t["batch"], t["latency_ms"]):
            b = int(b)
            if np.isfinite(lat) and (b not in best or lat < best[b][1]):
                best[b] = (s, lat)
    return {b: best[b][0] for b in sorted(best)}


def _slice_text(sel: dict, *, strategies=("voltage", "prism")) -> str:
    parts = [f"{sel['model']}, N = {sel['seq_len']} tokens, P = {sel['world_size']}"]
    parts.append("link rate not stated" if sel["bw"] is None else f"bw = {sel['bw']:g} Mbit/s")
    if sel.get("cr") is not None and "prism" in strategies:
        parts.append(f"Prism CR {sel['cr']:g}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- 1: breakdown

def plot_breakdown(pm, *, per_sample: bool = True, title: Optional[str] = None, **select):
    """Stacked compute / staging / communication (/ other) bars per batch for single,
    Voltage and Prism, measured; a star marks the adaptive choice (fastest measured
    strategy at that batch). per_sample divides by the batch (ms per sample), which keeps
    batch 1 and batch 32 readable on one axis. `select` goes to select_slice."""
    table, sel = measured_table(pm, **select)
    strategies = [s for s in STRATEGIES if s in table]
    choice = adaptive_choice(table)
    batches = sorted({int(b) for t in table.values() for b in t["batch"]})
    with _rc():
        fig = _figure(figsize=(9.6, 5.4))
        ax = fig.add_subplot()
        width = 0.8 / len(strategies)
        minor_x, minor_lab = [], []
        star_x, star_y = [], []
        any_other = any(np.nansum(t["other_ms"]) > 0.01 * np.nansum(t["latency_ms"]) for t in table.values())
        phases = PHASES if any_other else PHASES[:3]
        for i, s in enumerate(strategies):
            t = table[s]
            x = np.array([batches.index(int(b)) for b in t["batch"]], float) + (i - (len(strategies) - 1) / 2) * width
            div = t["batch"] if per_sample else np.ones_like(t["batch"])
            bottom = np.zeros(len(x))
            for p in phases:
                h = np.nan_to_num(t[p]) / div
                ax.bar(x, h, width * 0.92, bottom=bottom, color=PHASE_COLOR[p], hatch=HATCH[s],
                       edgecolor="white", linewidth=0.6)
                bottom = bottom + h
            minor_x += list(x)
            minor_lab += [SHORT[s]] * len(x)
            for xx, b, top in zip(x, t["batch"], bottom):
                if choice.get(int(b)) == s:
                    star_x.append(xx)
                    star_y.append(top)
        ymax = max(max(star_y, default=0), *(np.nanmax((t["latency_ms"] / (t["batch"] if per_sample else 1)))
                                             for t in table.values()))
        ax.plot(star_x, np.array(star_y) + 0.035 * ymax, ls="none", marker="*", ms=15, color="gold",
                mec="black", mew=0.8, zorder=5)
        ax.set_ylim(0, ymax * 1.12)
        # bar letters as the axis ticks, batch labels on a second axis below them (minor
        # ticks would vanish where they coincide with the group centres)
        ax.set_xticks(minor_x, minor_lab)
        ax.tick_params(axis="x", length=0, labelsize=9)
        sec = ax.secondary_xaxis("bottom")
        sec.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        sec.tick_params(axis="x", pad=18, length=0)
        sec.spines["bottom"].set_visible(False)
        ax.grid(axis="x", visible=False)
        ax.set_ylabel("latency per sample (ms)" if per_sample else "batch latency (ms)")
        sec.set_xlabel("batch size (samples); bars: S = single device, V = Voltage, P = Prism")
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=PHASE_COLOR[p], label=PHASE_LABEL[p]) for p in phases]
        handles += [Patch(facecolor="white", edgecolor="#555555", hatch=HATCH[s] * 2,
                          label=NAME[s] + (f" (CR {sel['cr']:g})" if s == "prism" and sel.get("cr") else ""))
                    for s in strategies]
        handles.append(Line2D([], [], ls="none", marker="*", ms=13, color="gold", mec="black",
                              label="adaptive choice (fastest measured)"))
        ax.legend(handles=handles, loc="upper right", ncol=2, framealpha=0.9)
        ax.set_title((title or "Latency breakdown vs batch size") + "\n" + _slice_text(sel),
                     loc="left", fontsize=11.5)
    return fig


# ----------------------------------------------------------------------------- 2: per sample

def adaptive_gains(pm, *, model=None, **select) -> dict:
    """Per batch: per-sample latency (ms) and energy (J) of single, Voltage, Prism and the
    adaptive choice, measured; where a measured energy is missing and a fitted CostModel is
    given, its prediction fills the gap (flagged in `energy_source`). Gains of the adaptive
    choice in %: latency and energy vs Voltage, latency and energy vs single device."""
    table, sel = measured_table(pm, **select)
    choice = adaptive_choice(table)
    batches = np.array(sorted(choice), int)
    out = {"batch": batches, "adaptive_mode": [choice[int(b)] for b in batches], "selection": sel,
           "latency_ms": {}, "energy_j": {}, "energy_source": {}}
    for s in STRATEGIES:
        lat = np.full(len(batches), np.nan)
        en = np.full(len(batches), np.nan)
        src = [None] * len(batches)
        t = table.get(s)
        if t is not None:
            for j, b in enumerate(batches):
                k = np.flatnonzero(t["batch"] == b)
                if k.size:
                    lat[j] = t["per_sample_ms"][k[0]]
                    en[j] = t["energy_j"][k[0]] / b
                    src[j] = t["energy_kind"][k[0]]
        if model is not None and (np.isnan(en).any() or t is None):
            miss = np.isnan(en)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = model.predict(batches[miss], sel["bw"] if sel["bw"] is not None else _unshaped(model),
                                  sel["cr"], strategy=s, seq_len=sel["seq_len"],
                                  world_size=1 if s == "single" else sel["world_size"], warn=False)
            pe = np.asarray(p["energy_j"], float) / batches[miss]
            en[miss] = pe
            for j in np.flatnonzero(miss):
                src[j] = "model" if np.isfinite(en[j]) else None
        out["latency_ms"][s], out["energy_j"][s], out["energy_source"][s] = lat, en, src
    lat_a = np.array([out["latency_ms"][m][j] for j, m in enumerate(out["adaptive_mode"])])
    en_a = np.array([out["energy_j"][m][j] for j, m in enumerate(out["adaptive_mode"])])
    out["latency_ms"]["adaptive"], out["energy_j"]["adaptive"] = lat_a, en_a
    out["energy_source"]["adaptive"] = [out["energy_source"][m][j] for j, m in enumerate(out["adaptive_mode"])]

    def gain(ref, new):
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * (ref - new) / ref

    out["gain_pct"] = {
        "latency_vs_voltage": gain(out["latency_ms"]["voltage"], lat_a),
        "energy_vs_voltage": gain(out["energy_j"]["voltage"], en_a),
        "latency_vs_single": gain(out["latency_ms"]["single"], lat_a),
        "energy_vs_single": gain(out["energy_j"]["single"], en_a),
    }
    es = out["energy_source"]
    out["gain_from_model"] = {   # True where an operand is a cost-model estimate, not data
        "latency_vs_voltage": np.zeros(len(batches), bool),
        "latency_vs_single": np.zeros(len(batches), bool),
        "energy_vs_voltage": np.array([es["voltage"][j] == "model" or es["adaptive"][j] == "model"
                                       for j in range(len(batches))]),
        "energy_vs_single": np.array([es["single"][j] == "model" or es["adaptive"][j] == "model"
                                      for j in range(len(batches))]),
    }
    return out


def _unshaped(model):
    bw = (getattr(model, "training_", None) or {}).get("unshaped_bw")
    return float(bw) if bw else np.nan


def _log2_batch_axis(ax, batches):
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batches), [str(int(b)) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size (samples)")


def plot_per_sample(pm, *, model=None, title: Optional[str] = None, **select):
    """Per-sample latency (ms) and energy (J) vs batch for single, Voltage and the adaptive
    choice (Prism shown thin), plus the adaptive gains in %. Energies the perf map lacks
    are filled from `model` (a fitted CostModel) and drawn with open markers."""
    g = adaptive_gains(pm, model=model, **select)
    b = g["batch"]
    kinds = {k for v in g["energy_source"].values() for k in v if k}
    en_label = "energy per sample (J)"
    en_note = " (estimated: power model, no sensor)" if kinds <= {"estimated", "model", None} and "estimated" in kinds else ""
    with _rc():
        fig = _figure(figsize=(10.4, 7.8))
        gs = fig.add_gridspec(2, 2, height_ratios=[1.15, 1])
        ax_l, ax_e, ax_g = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, :])
        for ax, key, ylabel in ((ax_l, "latency_ms", "latency per sample (ms)"), (ax_e, "energy_j", en_label)):
            for s in ("single", "voltage", "prism"):
                y = g[key][s]
                if not np.isfinite(y).any():
                    continue
                lw, alpha = (1.2, 0.7) if s == "prism" else (1.8, 1.0)
                ax.plot(b, y, color=COLOR[s], lw=lw, alpha=alpha, ls="-" if s != "prism" else "--",
                        label=NAME[s] + (f" (CR {g['selection']['cr']:g})" if s == "prism" else ""))
                src = g["energy_source"][s] if key == "energy_j" else ["measured"] * len(b)
                filled = np.array([k != "model" for k in src])
                ax.plot(b[filled], y[filled], ls="none", marker=MARKER[s], color=COLOR[s], ms=5, alpha=alpha)
                if (~filled).any():
                    ax.plot(b[~filled], y[~filled], ls="none", marker=MARKER[s], mfc="white",
                            color=COLOR[s], ms=6, alpha=alpha)
            ya = g[key]["adaptive"]
            ax.plot(b, ya, color=COLOR["adaptive"], lw=4, alpha=0.35, label="adaptive choice", zorder=3)
            for s in STRATEGIES:
                m = np.array([mm == s for mm in g["adaptive_mode"]])
                if m.any():
                    ax.plot(b[m], ya[m], ls="none", marker=MARKER[s], ms=10, mfc=COLOR["adaptive"],
                            mec="black", zorder=4, label=f"adaptive = {NAME[s]}")
            ax.set_ylim(0, None)
            ax.set_ylabel(ylabel)
            _log2_batch_axis(ax, b)
        ax_l.set_title("(a) latency per sample", loc="left")
        ax_e.set_title("(b) energy per sample" + en_note, loc="left")
        ax_l.legend(loc="upper right", ncol=1, framealpha=0.9)
        if any(k == "model" for v in g["energy_source"].values() for k in v):
            from matplotlib.lines import Line2D

            ax_e.legend(handles=[Line2D([], [], ls="none", marker="o", mfc="white", color="#333333",
                                        label="open marker: cost-model estimate\n(no measured energy)")],
                        loc="upper right", framealpha=0.9)
        # (c) gains
        series = [("latency_vs_voltage", "latency vs Voltage", "#D65F5F", ""),
                  ("energy_vs_voltage", "energy vs Voltage", "#D65F5F", "//"),
                  ("latency_vs_single", "latency vs single device", "#555555", ""),
                  ("energy_vs_single", "energy vs single device", "#555555", "//")]
        series = [s for s in series if np.isfinite(g["gain_pct"][s[0]]).any()]
        w = 0.8 / max(1, len(series))
        x0 = np.arange(len(b))
        for i, (k, lab, col, hatch) in enumerate(series):
            v = g["gain_pct"][k]
            x = x0 + (i - (len(series) - 1) / 2) * w
            ax_g.bar(x, np.nan_to_num(v), w * 0.92, color=col, alpha=0.85 if not hatch else 0.45,
                     hatch=hatch, edgecolor="white", label=lab)
            for xx, vv, est in zip(x, v, g["gain_from_model"][k]):
                if np.isfinite(vv):
                    ax_g.text(xx, vv + (1.5 if vv >= 0 else -1.5), f"{vv:.1f}" + ("*" if est else ""),
                              ha="center", va="bottom" if vv >= 0 else "top", fontsize=8.5,
                              style="italic" if est else "normal")
        ax_g.axhline(0, color="black", lw=0.8)
        ax_g.set_xticks(x0, [f"{int(bb)}\n({SHORT[m]})" for bb, m in zip(b, g["adaptive_mode"])])
        ax_g.set_xlabel("batch size (samples) and the adaptive choice: S = single device, P = Prism, V = Voltage")
        ax_g.set_ylabel("gain of adaptive (%)")
        vals = np.concatenate([g["gain_pct"][k] for k, *_ in series]) if series else np.zeros(1)
        lo = min(0.0, np.nanmin(vals)) if np.isfinite(vals).any() else 0.0
        hi = max(10.0, np.nanmax(vals)) if np.isfinite(vals).any() else 10.0
        ax_g.set_ylim(lo * 1.25 - 2 if lo < 0 else 0, hi * 1.5)   # headroom for the legend
        if any(g["gain_from_model"][k][np.isfinite(g["gain_pct"][k])].any() for k, *_ in series):
            from matplotlib.patches import Patch

            hs, ls_ = ax_g.get_legend_handles_labels()
            hs.append(Patch(facecolor="none", edgecolor="none"))
            ls_.append("* uses a cost-model energy (not measured)")
            ax_g.legend(hs, ls_, loc="upper center", ncol=3, framealpha=0.9)
        else:
            ax_g.legend(loc="upper center", ncol=4, framealpha=0.9)
        ax_g.set_title("(c) gain of the adaptive choice, % (higher is better; numbers on bars)", loc="left")
        ax_g.grid(axis="x", visible=False)
        fig.suptitle((title or "Per-sample latency and energy vs batch: adaptive vs Voltage vs single")
                     + "\n" + _slice_text(g["selection"]), fontsize=11.5)
    return fig


def _log_ticks(ax, which: str = "y"):
    """Plain-number ticks (50, 100, 200, ...) on a log axis instead of 10^k."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in ((ax.xaxis, ax.yaxis) if which == "both" else (ax.yaxis,)):
        lo, hi = axis.get_view_interval()
        wide = lo > 0 and hi / lo > 30          # fewer ticks when they would collide
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if wide else (1.0, 2.0, 3.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


# ----------------------------------------------------------------------------- 3: bandwidth

def crossover_bw(bws, a, b) -> Optional[float]:
    """The bandwidth (Mbit/s) above which curve `a` stays at or below curve `b` on the
    sampled grid (linear interpolation at the last sign change), i.e. where distributing
    starts to pay for good; None when `a` is above `b` at the top of the grid or below it
    everywhere (no crossover in range)."""
    bws, d = np.asarray(bws, float), np.asarray(a, float) - np.asarray(b, float)
    ok = np.isfinite(d)
    bws, d = bws[ok], d[ok]
    if d.size < 2 or d[-1] > 0:
        return None
    above = np.flatnonzero(d > 0)
    if above.size == 0:
        return None
    i = int(above[-1])
    return float(bws[i] + (bws[i + 1] - bws[i]) * d[i] / (d[i] - d[i + 1]))


def bandwidth_sweep(model, *, batch: int, bws=None, cr: float = 9.9, seq_len=None, world_size: int = 2,
                    model_name=None) -> dict:
    """Predicted per-sample latency (ms, with the interval) of single, Voltage and Prism at
    `cr` over `bws` (Mbit/s, default 200-900 every 5), and the Prism/single and
    Voltage/single crossover bandwidths (None if none in range)."""
    bws = np.arange(200.0, 900.1, 5.0) if bws is None else np.asarray(bws, float)
    out = {"bw": bws, "batch": batch, "cr": cr, "per_sample_ms": {}, "lo": {}, "hi": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s, c in (("single", None), ("voltage", None), ("prism", cr)):
            p = model.predict(batch, bws, c, strategy=s, seq_len=seq_len,
                              world_size=1 if s == "single" else world_size, model=model_name, warn=False)
            out["per_sample_ms"][s] = np.broadcast_to(p["per_sample_ms"], bws.shape).astype(float)
            out["lo"][s] = np.broadcast_to(p["latency_lo_ms"] / batch, bws.shape).astype(float)
            out["hi"][s] = np.broadcast_to(p["latency_hi_ms"] / batch, bws.shape).astype(float)
    out["crossover_bw"] = {s: crossover_bw(bws, out["per_sample_ms"][s], out["per_sample_ms"]["single"])
                           for s in ("prism", "voltage")}
    return out


def default_bws(model, n: int = 141) -> np.ndarray:
    """The bw grid (Mbit/s) of the bandwidth figure: the model's fitted bw range when it
    has one, else the paper's 200-900 sweep."""
    rng = (getattr(model, "ranges_", None) or {}).get("bw")
    lo, hi = (rng if rng and rng[1] > rng[0] else (200.0, 900.0))
    return np.linspace(lo, hi, n)


def _claim_bw(pm) -> Optional[float]:
    for c in (pm.meta.get("claims") or []) if pm is not None else []:
        if c.get("kind") == "bw_crossover" and c.get("bw"):
            return float(c["bw"])
    return None


def plot_bandwidth(model, *, batches: Sequence[int] = (8, 16, 32), bws=None, cr: Optional[float] = None,
                   perfmap=None, reference_bw: Optional[float] = None, seq_len=None, world_size: int = 2,
                   title: Optional[str] = None, model_label: str = "cost model", model_name=None):
    """Per-sample latency vs link rate (Mbit/s) for single, Voltage and Prism, one panel per
    batch, from a fitted CostModel (lines, Prism's interval shaded), with the Prism/single
    crossover found and annotated. perfmap adds its measured points (same seq_len, world
    size and cr); reference_bw (default: a bw_crossover claim in perfmap) draws a dotted
    reference. bws default: the model's fitted bw range if it has one, else 200-900."""
    pm = None if perfmap is None else _as_perfmap(perfmap)
    if cr is None:
        crs = sorted({float(r["cr"]) for r in pm.usable() if r.get("cr")}) if pm is not None else []
        cr = crs[-1] if crs else 9.9
    bws = default_bws(model) if bws is None else np.asarray(bws, float)
    reference_bw = reference_bw if reference_bw is not None else _claim_bw(pm)
    sweeps = [bandwidth_sweep(model, batch=b, bws=bws, cr=cr, seq_len=seq_len, world_size=world_size,
                              model_name=model_name) for b in batches]
    with _rc():
        fig = _figure(figsize=(max(8.0, 3.7 * len(batches) + 0.6), 5.0))
        axes = fig.subplots(1, len(batches), sharey=True, squeeze=False)[0]
        for ax, sw in zip(axes, sweeps):
            for s in ("voltage", "prism", "single"):
                lab = {"single": "single device", "voltage": "Voltage", "prism": f"Prism CR {cr:g}"}[s]
                ax.plot(bws, sw["per_sample_ms"][s], color=COLOR[s], lw=2.2, label=f"{lab} ({model_label})")
                if s == "prism":
                    ax.fill_between(bws, sw["lo"][s], sw["hi"][s], color=COLOR[s], alpha=0.15, lw=0,
                                    label=f"Prism {int(round(100 * _level(model)))} % interval")
            if pm is not None:
                _measured_bw_points(ax, pm, sw["batch"], cr, seq_len, world_size, model_name)
            x = sw["crossover_bw"]["prism"]
            if x is not None:
                y = float(np.interp(x, bws, sw["per_sample_ms"]["single"]))
                ax.axvline(x, color=COLOR["prism"], ls="--", lw=1.2)
                ax.annotate(f"crossover\n{x:.0f} Mbit/s", (x, y), xytext=(8, 30), textcoords="offset points",
                            fontsize=10, color=COLOR["prism"], fontweight="bold",
                            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85),
                            arrowprops=dict(arrowstyle="->", color=COLOR["prism"]))
            note = ""
            if x is None:     # in the panel title: a text box inside would cover data
                faster = sw["per_sample_ms"]["prism"][-1] < sw["per_sample_ms"]["single"][-1]
                note = "\nno crossover: Prism " + ("faster" if faster else "slower") + " everywhere"
            if reference_bw is not None and bws[0] <= reference_bw <= bws[-1]:
                ax.axvline(reference_bw, color="#888888", ls=":", lw=1.6,
                           label=f"paper: crossover near {reference_bw:g} Mbit/s")
            ax.set_yscale("log")
            _log_ticks(ax)
            ax.set_title(f"batch {sw['batch']}" + note, loc="left", fontsize=11 if not note else 10)
            ax.set_xlabel("link bandwidth (Mbit/s)")
            pad = 0.03 * (bws[-1] - bws[0])      # measured points at the ends stay visible
            ax.set_xlim(bws[0] - pad, bws[-1] + pad)
        axes[0].set_ylabel("latency per sample (ms, log scale)")
        h, lab = axes[0].get_legend_handles_labels()
        seen = {}
        for ax in axes:
            for hh, ll in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(ll, hh)
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center",
                   ncol=min(4, len(seen)), framealpha=0.9)
        head = title or "Bandwidth sweep: when does distributing pay?"
        rng = (getattr(model, "ranges_", None) or {}).get("bw")
        if rng and (bws[0] < rng[0] - 1e-6 or bws[-1] > rng[1] + 1e-6):
            fitted = f"{rng[0]:g} Mbit/s" if rng[0] == rng[1] else f"{rng[0]:g}-{rng[1]:g} Mbit/s"
            head += f"\nlines extrapolate in bw: the model was fitted at {fitted}"
        fig.suptitle(head, x=0.01, ha="left")
    return fig


def _level(model) -> float:
    return float((getattr(model, "interval_", None) or {}).get("level", 0.8))


def _measured_bw_points(ax, pm, batch, cr, seq_len, world_size, model_name=None):
    recs = [r for r in pm.usable() if r["batch"] == batch and (seq_len is None or r["seq_len"] == seq_len)
            and (model_name is None or r["model"] == model_name)]
    if seq_len is None and recs:
        n = _mode(r["seq_len"] for r in recs)
        recs = [r for r in recs if r["seq_len"] == n]
    for s in STRATEGIES:
        rs = [r for r in recs if r["strategy"] == s and (s == "single" or r["world_size"] == world_size)
              and (s != "prism" or _same(r.get("cr"), cr))]
        if not rs:
            continue
        if s == "single":
            y = np.median([record_latency_ms(r) / r["batch"] for r in rs])
            ax.axhline(y, color=COLOR[s], ls=":", lw=1.2, label="single device (measured)")
            continue
        rs = [r for r in rs if r.get("bw") is not None]
        if rs:
            ax.plot([r["bw"] for r in rs], [record_latency_ms(r) / r["batch"] for r in rs], ls="none",
                    marker=MARKER[s], ms=8, mfc="white", mec=COLOR[s], mew=1.8,
                    label=f"{NAME[s]} (measured)")


# ----------------------------------------------------------------------------- 4: validation

def _predict_records(cm, recs, unshaped_bw=None) -> dict:
    out = {k: np.full(len(recs), np.nan) for k in ("latency_ms", "latency_lo_ms", "latency_hi_ms")}
    names = np.array([r["model"] for r in recs], dtype=object)
    for name in np.unique(names):
        idx = np.flatnonzero(names == name)
        rs = [recs[i] for i in idx]
        bw = [r["bw"] if r.get("bw") is not None else (unshaped_bw if r["strategy"] != "single" else None)
              for r in rs]
        p = cm.predict(np.array([r["batch"] for r in rs]),
                       np.array([np.nan if v is None else v for v in bw], float),
                       np.array([np.nan if r.get("cr") is None else r["cr"] for r in rs], float),
                       strategy=np.array([r["strategy"] for r in rs], dtype=object),
                       seq_len=np.array([r["seq_len"] for r in rs]),
                       world_size=np.array([r["world_size"] for r in rs]), model=name, warn=False)
        for k in out:
            out[k][idx] = p[k]
    return out


def leave_one_value_out(pm, *, axes: Sequence[str] = ("batch", "bw", "cr", "seq_len", "world_size"),
                        **cm_kwargs) -> dict:
    """Held-out validation: for each axis with >= 2 values, for each value, fit a CostModel
    (cm_kwargs: its settings, e.g. unshaped_bw, cv_folds) on the map without that value and
    predict the rows that have it. Rows an axis does not apply to (single's bw and cr, the
    world size 1 of single) stay in training. Returns row arrays: axis, value, strategy,
    batch, measured_ms, predicted_ms, lo_ms, hi_ms (batch latency, ms) and `skipped`
    ([axis, value, reason] for folds that could not be fitted)."""
    from .model import CostModel

    pm = _as_perfmap(pm)
    recs = [r for r in pm.usable(breakdown=True) if r["strategy"] in STRATEGIES]
    cols = {k: [] for k in ("axis", "value", "strategy", "batch", "measured_ms", "predicted_ms", "lo_ms", "hi_ms")}
    skipped = []
    for ax in axes:
        vals = axis_values(recs, ax)
        if len(vals) < 2:
            continue
        for v in vals:
            test = [r for r in recs if r.get(ax) == v]
            train = [r for r in recs if r.get(ax) != v]
            if len(train) < 6 or not test:
                skipped.append([ax, v, f"{len(train)} training rows"])
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cm = CostModel(**cm_kwargs).fit(PerfMap(meta=dict(pm.meta), records=train))
            except ValueError as e:
                skipped.append([ax, v, str(e).splitlines()[0]])
                continue
            p = _predict_records(cm, test, cm_kwargs.get("unshaped_bw"))
            cols["axis"] += [ax] * len(test)
            cols["value"] += [v] * len(test)
            cols["strategy"] += [r["strategy"] for r in test]
            cols["batch"] += [r["batch"] for r in test]
            cols["measured_ms"] += [record_latency_ms(r) for r in test]
            cols["predicted_ms"] += list(p["latency_ms"])
            cols["lo_ms"] += list(p["latency_lo_ms"])
            cols["hi_ms"] += list(p["latency_hi_ms"])
    out = {k: np.array(v, dtype=object if k in ("axis", "strategy", "value") else float) for k, v in cols.items()}
    out["skipped"] = skipped
    return out


def validation_summary(res: dict) -> dict:
    """Per held-out axis: n, median / P90 absolute % error of batch latency, and the share
    of measured values inside the prediction interval."""
    out = {}
    for ax in dict.fromkeys(res["axis"]):
        m = res["axis"] == ax
        ape = np.abs(res["predicted_ms"][m] / res["measured_ms"][m] - 1) * 100
        inside = (res["measured_ms"][m] >= res["lo_ms"][m]) & (res["measured_ms"][m] <= res["hi_ms"][m])
        out[str(ax)] = {"n": int(m.sum()), "values": len(set(res["value"][m])),
                        "median_ape": float(np.median(ape)), "p90_ape": float(np.percentile(ape, 90)),
                        "coverage": float(inside.mean())}
    return out


AXIS_COLOR = {"batch": "#4878CF", "bw": "#D65F5F", "cr": "#6ACC64", "seq_len": "#B47CC7",
              "world_size": "#C4AD66"}
AXIS_LABEL = {"batch": "batch", "bw": "bw (Mbit/s)", "cr": "CR", "seq_len": "seq_len N",
              "world_size": "world size P"}


def plot_validation(res: dict, *, title: Optional[str] = None, level: Optional[float] = None):
    """(a) predicted vs measured batch latency (ms) on held-out rows, with the prediction
    interval as error bars; (b) absolute % error per held-out axis with median, P90 and
    interval coverage. `res` comes from leave_one_value_out."""
    if len(res["axis"]) == 0:
        raise ValueError("no held-out predictions: the perf map has no axis with >= 2 values "
                         "that leaves >= 6 training rows")
    summ = validation_summary(res)
    axes_present = list(summ)
    with _rc():
        fig = _figure(figsize=(11.0, 5.2))
        a1, a2 = fig.subplots(1, 2, width_ratios=[1.1, 1])
        y, p = res["measured_ms"], res["predicted_ms"]
        lo_all, hi_all = np.nanmin([y.min(), p.min(), res["lo_ms"].min()]), np.nanmax([y.max(), p.max(), res["hi_ms"].max()])
        line = np.array([lo_all * 0.8, hi_all * 1.25])
        a1.fill_between(line, line * 0.9, line * 1.1, color="#999999", alpha=0.2, lw=0, label="within ±10 %")
        a1.plot(line, line, color="black", lw=1, label="predicted = measured")
        for ax_name in axes_present:
            for s in STRATEGIES:
                m = (res["axis"] == ax_name) & (res["strategy"] == s)
                if not m.any():
                    continue
                err = np.vstack([np.maximum(p[m] - res["lo_ms"][m], 0), np.maximum(res["hi_ms"][m] - p[m], 0)])
                a1.errorbar(y[m], p[m], yerr=err, ls="none", marker=MARKER[s], ms=6, color=AXIS_COLOR.get(ax_name),
                            mec="black", mew=0.5, elinewidth=1, capsize=2, alpha=0.85)
        from matplotlib.lines import Line2D

        h1, l1 = a1.get_legend_handles_labels()
        h1 += [Line2D([], [], ls="none", marker="s", ms=8, color=AXIS_COLOR.get(a), label=f"held out: {AXIS_LABEL.get(a, a)}")
               for a in axes_present]
        h1 += [Line2D([], [], ls="none", marker=MARKER[s], ms=7, color="#777777", label=NAME[s])
               for s in STRATEGIES if (res["strategy"] == s).any()]
        a1.legend(handles=h1, loc="upper left", fontsize=9, framealpha=0.9)
        a1.set_xscale("log")
        a1.set_yscale("log")
        a1.set_xlim(*line)
        a1.set_ylim(*line)
        _log_ticks(a1, "both")
        a1.set_xlabel("measured batch latency (ms)")
        a1.set_ylabel("predicted batch latency (ms)")
        lv = f"{int(round(100 * level))} % " if level else ""
        a1.set_title(f"(a) held-out predictions, bars: {lv}interval", loc="left")

        rng = np.random.default_rng(0)
        for i, ax_name in enumerate(axes_present):
            m = res["axis"] == ax_name
            ape = np.abs(p[m] / y[m] - 1) * 100
            jit = i + rng.uniform(-0.2, 0.2, m.sum())
            for s in STRATEGIES:
                k = res["strategy"][m] == s
                if k.any():
                    a2.scatter(jit[k], ape[k], s=30, marker=MARKER[s], color=AXIS_COLOR.get(ax_name),
                               edgecolor="black", linewidth=0.4, alpha=0.85, zorder=3)
            sm = summ[ax_name]
            a2.plot([i - 0.3, i + 0.3], [sm["median_ape"]] * 2, color="black", lw=2.2, zorder=4)
            a2.plot([i - 0.3, i + 0.3], [sm["p90_ape"]] * 2, color="black", lw=1.2, ls="--", zorder=4)
        top = max(max(v["p90_ape"] for v in summ.values()), np.nanmax(np.abs(p / y - 1) * 100))
        for i, ax_name in enumerate(axes_present):
            sm = summ[ax_name]
            a2.text(i, top * 1.08, f"med {sm['median_ape']:.1f} %\nP90 {sm['p90_ape']:.1f} %\n"
                    f"in interval {100 * sm['coverage']:.0f} %", ha="center", va="bottom", fontsize=9)
        a2.set_ylim(0, top * 1.45 + 1)
        a2.set_xlim(-0.6, len(axes_present) - 0.4)
        a2.set_xticks(range(len(axes_present)),
                      [f"{AXIS_LABEL.get(a, a)}\n{summ[a]['values']} values\n{summ[a]['n']} rows" for a in axes_present],
                      fontsize=9.5)
        a2.grid(axis="x", visible=False)
        a2.set_xlabel("axis held out (leave one value out)")
        a2.set_ylabel("absolute error of batch latency (%)")
        a2.legend(handles=[Line2D([], [], color="black", lw=2.2, label="median"),
                           Line2D([], [], color="black", lw=1.2, ls="--", label="P90")],
                  loc="upper right", fontsize=9)
        a2.set_title("(b) error by held-out axis", loc="left")
        fig.suptitle(title or "Cost-model validation on held-out configurations", x=0.01, ha="left")
    return fig


# ----------------------------------------------------------------------------- 5: decision map

def decision_grid(model, *, seq_len=None, batches=tuple(range(1, 33)), bws=None, objective="latency",
                  world_size: int = 2, perfmap=None, candidates=None, max_cr=None, model_name=None) -> dict:
    """The DecisionTable over a batch x bw grid: the chosen label per cell (`best`, index
    into `labels`), the gain of the choice over single device in % (`gain_single_pct`,
    0 where single is chosen; None if single is not a candidate) and over the runner-up
    (`margin_pct`), and whether the model extrapolates on seq_len."""
    from .decision import DEFAULT_CANDIDATES, DecisionTable

    bws = np.arange(50.0, 1000.1, 10.0) if bws is None else np.asarray(bws, float)
    dt = DecisionTable(model, perfmap=perfmap, candidates=candidates or DEFAULT_CANDIDATES,
                       objective=objective, seq_len=seq_len, world_size=world_size,
                       batches=batches, bws=bws, max_cr=max_cr, model_name=model_name)
    key = dt.latency if objective == "latency" else (dt.energy if objective == "energy" else dt.score)
    best_v = np.take_along_axis(key, dt.best[None], 0)[0]
    gain = None
    if "single" in dt.labels:
        ref = key[dt.labels.index("single")]
        gain = 100.0 * (ref - best_v) / ref
    rng = (getattr(model, "ranges_", None) or {}).get("seq_len")
    n = seq_len if seq_len is not None else next(
        m["seq_len"] for m in model.models_ if model_name in (None, m["name"]))
    extrap = bool(rng and not (rng[0] - 1e-9 <= n <= rng[1] + 1e-9))
    return {"table": dt, "labels": dt.labels, "best": dt.best, "batch": dt.batches, "bw": dt.bws,
            "gain_single_pct": gain, "margin_pct": 100.0 * dt.margin, "seq_len": n,
            "extrapolated": extrap, "objective": objective}


MODE_COLOR = {"single": "#7F7F7F", "voltage": "#D65F5F", "prism(cr=3.3)": "#9ECAE1",
              "prism(cr=4.95)": "#4292C6", "prism(cr=9.9)": "#08519C"}
_FALLBACK = ["#FDAE6B", "#E6550D", "#A1D99B", "#31A354", "#BCBDDC", "#756BB1"]


def _mode_color(label, i):
    return MODE_COLOR.get(label, _FALLBACK[i % len(_FALLBACK)])


def mode_name(label: str) -> str:
    """'prism(cr=9.9)' -> 'Prism CR 9.9', 'single' -> 'single device' (for legends)."""
    if label.startswith("prism(cr=") and label.endswith(")"):
        return f"Prism CR {label[9:-1]}"
    return NAME.get(label, label)


def plot_decision_map(model, *, seq_lens: Sequence[int], batches=tuple(range(1, 33)), bws=None,
                      objective="latency", world_size: int = 2, perfmap=None, candidates=None,
                      title: Optional[str] = None, model_name=None):
    """Per sequence length: the mode the DecisionTable chooses over (batch, bw) and the
    gain of that choice over single device (%), with the single/distributed boundary."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    grids = [decision_grid(model, seq_len=n, batches=batches, bws=bws, objective=objective,
                           world_size=world_size, perfmap=perfmap, candidates=candidates,
                           model_name=model_name) for n in seq_lens]
    labels = grids[0]["labels"]
    colors = [_mode_color(lab, i) for i, lab in enumerate(labels)]
    cmap, norm = ListedColormap(colors), BoundaryNorm(np.arange(len(labels) + 1) - 0.5, len(labels))
    with _rc():
        fig = _figure(figsize=(11.0, 3.9 * len(grids) + 0.9))
        axs = fig.subplots(len(grids), 2, squeeze=False)
        used = sorted({int(i) for g in grids for i in np.unique(g["best"])})
        gmax = max(float(np.nanmax(g["gain_single_pct"])) if g["gain_single_pct"] is not None
                   else float(np.nanmax(g["margin_pct"])) for g in grids)
        gmax = max(5.0, np.ceil(gmax / 5) * 5)
        for row, g in zip(axs, grids):
            b, w = g["batch"], g["bw"]
            ext = [b[0] - 0.5, b[-1] + 0.5, w[0] - (w[1] - w[0]) / 2, w[-1] + (w[-1] - w[-2]) / 2]
            a, c = row
            a.imshow(g["best"].T, origin="lower", aspect="auto", extent=ext, cmap=cmap, norm=norm,
                     interpolation="nearest")
            gain = g["gain_single_pct"] if g["gain_single_pct"] is not None else g["margin_pct"]
            im = c.imshow(gain.T, origin="lower", aspect="auto", extent=ext, cmap="viridis",
                          vmin=0, vmax=gmax, interpolation="nearest")
            if "single" in g["labels"]:
                dist = (g["best"] != g["labels"].index("single")).astype(float)
                if 0 < dist.mean() < 1:
                    for ax in (a, c):
                        ax.contour(b, w, dist.T, levels=[0.5], colors="white" if ax is c else "black",
                                   linewidths=1.6)
            levels = [v for v in (10, 20, 30, 40, 50) if v < np.nanmax(gain)]
            if levels:
                cs = c.contour(b, w, gain.T, levels=levels, colors="white", linewidths=0.7, linestyles=":")
                c.clabel(cs, fmt="%d %%", fontsize=8.5)
            ext_note = " (extrapolated)" if g["extrapolated"] else ""
            a.set_title(f"chosen mode, N = {g['seq_len']} tokens{ext_note}", loc="left")
            c.set_title(("latency" if objective == "latency" else str(objective)) +
                        (" gain over single device (%)" if g["gain_single_pct"] is not None
                         else " gain over runner-up (%)") + f", N = {g['seq_len']}", loc="left")
            for ax in (a, c):
                ax.set_xlabel("batch size (samples)")
                ax.set_ylabel("link bandwidth (Mbit/s)")
                ax.grid(False)
            cb = fig.colorbar(im, ax=c, shrink=0.95)
            cb.set_label("gain (%)")
        fig.legend(handles=[Patch(facecolor=colors[i], label=mode_name(labels[i])) for i in used]
                   + ([Patch(facecolor="none", edgecolor="black", label="single | distributed boundary")]
                      if "single" in labels else []),
                   loc="outside lower center", ncol=len(used) + 1, framealpha=0.95)
        head = title or f"Decision map ({objective}): which mode to run, and what it gains"
        rng = (getattr(model, "ranges_", None) or {}).get("bw")
        w = grids[0]["bw"]
        if rng and (w[0] < rng[0] - 1e-6 or w[-1] > rng[1] + 1e-6):
            fitted = f"{rng[0]:g} Mbit/s" if rng[0] == rng[1] else f"{rng[0]:g}-{rng[1]:g} Mbit/s"
            head += f"\nthe model was fitted at {fitted}: other bandwidths are extrapolated"
        fig.suptitle(head, x=0.01, ha="left")
    return fig


# ----------------------------------------------------------------------------- standard set

def _matching_profile(path: Path):
    """A shipped profile fitted on this perf map file (by file name), or None."""
    from .api import list_profiles, load_profile

    for name in list_profiles():
        cm = load_profile(name)
        src = (getattr(cm, "profile_", None) or {}).get("perfmap")
        if src and Path(src).name == Path(path).name:
            return cm, name
    return None


PLOTTED_STRATEGIES = ("single", "voltage", "prism")   # what the standard figures compare


def standard_figures(perfmap, out_dir, *, model=None, name: Optional[str] = None,
                     which: Sequence[str] = FIGURES, unshaped_bw: Optional[float] = None,
                     batches: Optional[Sequence[int]] = None, quick: bool = True) -> dict:
    """Write the standard figures of one perf map as `<name>_<figure>.png` in out_dir.

    model: a fitted CostModel for the model-based figures (bandwidth, decision, and energy
    gaps); default: the shipped profile fitted on this map, else a CostModel fitted on it
    (`quick`: 3 folds, 60 trees). Returns {"figures": {figure: path}, "crossover_bw":
    {batch: Mbit/s or None}, "validation": summary, "model": where the model came from};
    a map with none of PLOTTED_STRATEGIES' records gives {"figures": {}, "skipped": why}."""
    from .model import CostModel

    path = Path(perfmap)
    pm = load_perfmap(path)
    name = name or path.stem
    unknown = [w for w in which if w not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; known: {list(FIGURES)}")
    if not any(r["strategy"] in PLOTTED_STRATEGIES for r in pm.usable()):
        # e.g. a tensor_parallel / galaxy-only sweep: these figures compare other strategies
        return {"figures": {}, "skipped": f"{path.name} has no {'/'.join(PLOTTED_STRATEGIES)} records"}
    quick_kw = dict(cv_folds=3, residual_estimators=60) if quick else {}
    src = "given"
    if model is None:
        hit = _matching_profile(path)
        if hit is not None:
            model, src = hit[0], f"profile {hit[1]}"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = CostModel(unshaped_bw=unshaped_bw, **quick_kw).fit(pm)
            src = f"fitted on {path.name}"
    if unshaped_bw is None:
        unshaped_bw = (getattr(model, "training_", None) or {}).get("unshaped_bw")
    label = "transcribed paper figures" if pm.source == "transcribed" else f"{pm.source} perf map"
    out = {"figures": {}, "model": src, "perfmap": str(path)}
    sel = select_slice(pm)
    if batches is None:
        batches = sorted({r["batch"] for r in pm.usable() if r["strategy"] != "single"})[-3:]
    for fig_name in which:
        if fig_name == "breakdown":
            fig = plot_breakdown(pm, title=f"Latency breakdown vs batch ({label}: {path.name})")
        elif fig_name == "per_sample":
            fig = plot_per_sample(pm, model=model, title=f"Adaptive vs Voltage vs single ({label})")
        elif fig_name == "bandwidth":
            fig = plot_bandwidth(model, perfmap=pm, batches=batches, seq_len=sel["seq_len"], cr=_cr_of(pm, sel),
                                 model_name=sel["model"],
                                 world_size=sel["world_size"],
                                 title=f"Bandwidth sweep, cost model ({src})",
                                 model_label="model")
            out["crossover_bw"] = {int(b): bandwidth_sweep(model, batch=b, cr=_cr_of(pm, sel), bws=default_bws(model),
                                                           model_name=sel["model"],
                                                           seq_len=sel["seq_len"],
                                                           world_size=sel["world_size"])["crossover_bw"]["prism"]
                                   for b in batches}
        elif fig_name == "validation":
            res = leave_one_value_out(pm, unshaped_bw=unshaped_bw, **quick_kw)
            if len(res["axis"]) == 0:
                out.setdefault("skipped", {})[fig_name] = "no axis with >= 2 values to hold out"
                continue
            out["validation"] = validation_summary(res)
            fig = plot_validation(res, level=_level(model),
                                  title=f"Cost-model validation, leave one value out ({path.name})")
        else:
            ns = sorted({r["seq_len"] for r in pm.usable() if r["model"] == sel["model"]})
            seq_lens = ns[:1] + ns[-1:] if len(ns) >= 2 else [ns[0], longer_seq_len(ns[0])]
            fig = plot_decision_map(model, seq_lens=seq_lens, world_size=sel["world_size"], model_name=sel["model"],
                                    batches=tuple(range(1, int(max(32, max(batches))) + 1)),
                                    title=f"Decision map, cost model ({src})")
        out["figures"][fig_name] = str(save_figure(fig, Path(out_dir) / f"{name}_{fig_name}.png"))
    return out


def _cr_of(pm, sel):
    return sel["cr"] if sel.get("cr") is not None else 9.9


def longer_seq_len(n: int) -> int:
    """A ViT token count about 3x longer than n (image side x sqrt(3), patch 16): 197 -> 577."""
    side = round(((n - 1) ** 0.5) * 3 ** 0.5)
    return int(side * side + 1)


# ----------------------------------------------------------------------------- CLI

def add_cli(sub) -> None:
    """Register `plot` on the costmodel CLI's subparsers."""
    p = sub.add_parser("plot", help="write the standard figures of a perf map as PNGs")
    p.add_argument("figures", nargs="*", default=["all"],
                   help=f"which: all (default) or any of {', '.join(FIGURES)}")
    p.add_argument("--perfmap", action="append", default=None,
                   help="perf map JSON (repeatable; default: the Jetson paper map)")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--profile", default=None, help="shipped profile for the model-based figures")
    g.add_argument("--model", default=None, help="cost-model JSON for the model-based figures")
    p.add_argument("--name", default=None, help="file-name prefix (default: the perf map's stem)")
    p.add_argument("--unshaped-bw", type=float, default=None,
                   help="Mbit/s assumed for records with bw null when a model is fitted here")


def run_cli(a) -> dict:
    """`python -m costmodel plot [FIGURE ...] --out DIR [--perfmap MAP ...]`."""
    which = list(FIGURES) if not a.figures or "all" in a.figures else a.figures
    model = None
    if a.model:
        from .model import CostModel

        model = CostModel.load(a.model)
    elif a.profile:
        from .api import load_profile

        model = load_profile(a.profile)
    maps = a.perfmap or [str(data_dir() / "perfmaps" / "jetson_orin_nano_paper.json")]
    if a.name and len(maps) > 1:
        raise ValueError("--name applies to one --perfmap; drop it to name files by each map's stem")
    try:
        return {"out": a.out, "maps": [standard_figures(m, a.out, model=model, name=a.name, which=which,
                                                        unshaped_bw=a.unshaped_bw) for m in maps]}
    except OSError as e:   # e.g. an unwritable --out: one line, exit 2
        raise ValueError(f"cannot write figures to {a.out}: {e.strerror or e}") from None
