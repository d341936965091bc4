"""Figure 4: held-out validation (evaluate.leave_one_value_out) as predicted vs measured,
and the error per held-out axis."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..evaluate import validation_summary
from .style import MARKER, NAME, STRATEGIES, new_figure, log_ticks, rc_style

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
    with rc_style():
        fig = new_figure(figsize=(11.0, 5.2))
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
        log_ticks(a1, "both")
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
