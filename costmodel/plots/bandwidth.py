"""Figure 3: per-sample latency vs link rate from a fitted CostModel, measured points,
and the Prism / single crossover."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..evaluate import as_perfmap, mode_of, same_value, bandwidth_sweep, default_bws
from ..perfmap import record_latency_ms
from .style import COLOR, MARKER, NAME, STRATEGIES, new_figure, interval_level, log_ticks, rc_style


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
    pm = None if perfmap is None else as_perfmap(perfmap)
    if cr is None:
        crs = sorted({float(r["cr"]) for r in pm.usable() if r.get("cr")}) if pm is not None else []
        cr = crs[-1] if crs else 9.9
    bws = default_bws(model) if bws is None else np.asarray(bws, float)
    reference_bw = reference_bw if reference_bw is not None else _claim_bw(pm)
    sweeps = [bandwidth_sweep(model, batch=b, bws=bws, cr=cr, seq_len=seq_len, world_size=world_size,
                              model_name=model_name) for b in batches]
    with rc_style():
        fig = new_figure(figsize=(max(8.0, 3.7 * len(batches) + 0.6), 5.0))
        axes = fig.subplots(1, len(batches), sharey=True, squeeze=False)[0]
        for ax, sw in zip(axes, sweeps):
            for s in ("voltage", "prism", "single"):
                lab = {"single": "single device", "voltage": "Voltage", "prism": f"Prism CR {cr:g}"}[s]
                ax.plot(bws, sw["per_sample_ms"][s], color=COLOR[s], lw=2.2, label=f"{lab} ({model_label})")
                if s == "prism":
                    ax.fill_between(bws, sw["lo"][s], sw["hi"][s], color=COLOR[s], alpha=0.15, lw=0,
                                    label=f"Prism {int(round(100 * interval_level(model)))} % interval")
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
            log_ticks(ax)
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


def _measured_bw_points(ax, pm, batch, cr, seq_len, world_size, model_name=None):
    recs = [r for r in pm.usable() if r["batch"] == batch and (seq_len is None or r["seq_len"] == seq_len)
            and (model_name is None or r["model"] == model_name)]
    if seq_len is None and recs:
        n = mode_of(r["seq_len"] for r in recs)
        recs = [r for r in recs if r["seq_len"] == n]
    for s in STRATEGIES:
        rs = [r for r in recs if r["strategy"] == s and (s == "single" or r["world_size"] == world_size)
              and (s != "prism" or same_value(r.get("cr"), cr))]
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
