"""Figures 1 and 2: the measured latency breakdown per batch, and per-sample latency and
energy with the adaptive choice's gains."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..evaluate import adaptive_choice, adaptive_gains, measured_table
from .style import (COLOR, HATCH, MARKER, NAME, PHASE_COLOR, PHASE_LABEL, PHASES, SHORT, STRATEGIES,
                    new_figure, log2_batch_axis, rc_style, slice_text)


def plot_breakdown(pm, *, per_sample: bool = True, title: Optional[str] = None, **select):
    """Stacked compute / staging / communication (/ other) bars per batch for single,
    Voltage and Prism, measured; a star marks the adaptive choice (fastest measured
    strategy at that batch). per_sample divides by the batch (ms per sample), which keeps
    batch 1 and batch 32 readable on one axis. `select` goes to select_slice."""
    table, sel = measured_table(pm, **select)
    strategies = [s for s in STRATEGIES if s in table]
    choice = adaptive_choice(table)
    batches = sorted({int(b) for t in table.values() for b in t["batch"]})
    with rc_style():
        fig = new_figure(figsize=(9.6, 5.4))
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
        ax.set_title((title or "Latency breakdown vs batch size") + "\n" + slice_text(sel),
                     loc="left", fontsize=11.5)
    return fig


def plot_per_sample(pm, *, model=None, title: Optional[str] = None, **select):
    """Per-sample latency (ms) and energy (J) vs batch for single, Voltage and the adaptive
    choice (Prism shown thin), plus the adaptive gains in %. Energies the perf map lacks
    are filled from `model` (a fitted CostModel) and drawn with open markers."""
    g = adaptive_gains(pm, model=model, **select)
    b = g["batch"]
    kinds = {k for v in g["energy_source"].values() for k in v if k}
    en_label = "energy per sample (J)"
    en_note = " (estimated: power model, no sensor)" if kinds <= {"estimated", "model", None} and "estimated" in kinds else ""
    with rc_style():
        fig = new_figure(figsize=(10.4, 7.8))
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
            log2_batch_axis(ax, b)
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
                     + "\n" + slice_text(g["selection"]), fontsize=11.5)
    return fig
