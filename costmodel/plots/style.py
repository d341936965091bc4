"""Figure style shared by every plot: display names, colours, markers and hatches per
strategy and phase, the rc context, the Figure factory, PNG writing and axis helpers."""
from __future__ import annotations

from pathlib import Path

from ..evaluate import COMPARED
from ..perfmap import atomic_write_bytes

STRATEGIES = COMPARED    # the strategies the figures draw (the display dicts below know them)
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
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 9.5, "figure.titlesize": 13,
         "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "hatch.linewidth": 0.8}


def rc_style():
    import matplotlib

    return matplotlib.rc_context(STYLE)


def new_figure(**kw):
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kw)

def save_figure(fig, path, *, dpi: int = 110) -> Path:
    """Write a Figure as PNG atomically (perfmap.atomic_write_bytes: a killed writer never
    leaves half an image). Returns the path."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)

def slice_text(sel: dict, *, strategies=("voltage", "prism")) -> str:
    parts = [f"{sel['model']}, N = {sel['seq_len']} tokens, P = {sel['world_size']}"]
    parts.append("link rate not stated" if sel["bw"] is None else f"bw = {sel['bw']:g} Mbit/s")
    if sel.get("cr") is not None and "prism" in strategies:
        parts.append(f"Prism CR {sel['cr']:g}")
    return ", ".join(parts)

def log2_batch_axis(ax, batches):
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batches), [str(int(b)) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size (samples)")

def log_ticks(ax, which: str = "y"):
    """Plain-number ticks (50, 100, 200, ...) on a log axis instead of 10^k."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in ((ax.xaxis, ax.yaxis) if which == "both" else (ax.yaxis,)):
        lo, hi = axis.get_view_interval()
        wide = lo > 0 and hi / lo > 30          # fewer ticks when they would collide
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if wide else (1.0, 2.0, 3.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())

def interval_level(model) -> float:
    return float((getattr(model, "interval_", None) or {}).get("level", 0.8))

MODE_COLOR = {"single": "#7F7F7F", "voltage": "#D65F5F", "prism(cr=3.3)": "#9ECAE1",
              "prism(cr=4.95)": "#4292C6", "prism(cr=9.9)": "#08519C"}
_FALLBACK = ["#FDAE6B", "#E6550D", "#A1D99B", "#31A354", "#BCBDDC", "#756BB1"]


def mode_color(label, i):
    return MODE_COLOR.get(label, _FALLBACK[i % len(_FALLBACK)])


def mode_name(label: str) -> str:
    """'prism(cr=9.9)' -> 'Prism CR 9.9', 'single' -> 'single device' (for legends)."""
    if label.startswith("prism(cr=") and label.endswith(")"):
        return f"Prism CR {label[9:-1]}"
    return NAME.get(label, label)
