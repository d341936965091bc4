"""Figure 5: the decision map (evaluate.decision_grid): which mode to run over (batch, bw),
and what it gains."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..evaluate import decision_grid
from .style import new_figure, mode_color, rc_style, mode_name


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
    colors = [mode_color(lab, i) for i, lab in enumerate(labels)]
    cmap, norm = ListedColormap(colors), BoundaryNorm(np.arange(len(labels) + 1) - 0.5, len(labels))
    with rc_style():
        fig = new_figure(figsize=(11.0, 3.9 * len(grids) + 0.9))
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
