"""The standard figure set of a perf map (`standard_figures`) and the `plot` subcommand
of `python -m costmodel`."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

from ..evaluate import (COMPARED, bandwidth_sweep, data_dir, default_bws, leave_one_value_out,
                        longer_seq_len, select_slice, validation_summary)
from ..perfmap import load_perfmap
from .bandwidth import plot_bandwidth
from .breakdown import plot_breakdown, plot_per_sample
from .decision import plot_decision_map
from .style import interval_level, save_figure
from .validation import plot_validation

FIGURES = ("breakdown", "per_sample", "bandwidth", "validation", "decision")
PLOTTED_STRATEGIES = COMPARED   # what the standard figures compare


def _matching_profile(path: Path):
    """A shipped profile fitted on this perf map file (by file name), or None."""
    from ..api import list_profiles, load_profile

    for name in list_profiles():
        cm = load_profile(name)
        src = (getattr(cm, "profile_", None) or {}).get("perfmap")
        if src and Path(src).name == Path(path).name:
            return cm, name
    return None


def standard_figures(perfmap, out_dir, *, model=None, name: Optional[str] = None,
                     which: Sequence[str] = FIGURES, unshaped_bw: Optional[float] = None,
                     batches: Optional[Sequence[int]] = None, quick: bool = True) -> dict:
    """Write the standard figures of one perf map as `<name>_<figure>.png` in out_dir.

    model: a fitted CostModel for the model-based figures (bandwidth, decision, and energy
    gaps); default: the shipped profile fitted on this map, else a CostModel fitted on it
    (`quick`: 3 folds, 60 trees). Returns {"figures": {figure: path}, "crossover_bw":
    {batch: Mbit/s or None}, "validation": summary, "model": where the model came from};
    a map with none of PLOTTED_STRATEGIES' records gives {"figures": {}, "skipped": why}."""
    from ..model import CostModel

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
            fig = plot_validation(res, level=interval_level(model),
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
        from ..model import CostModel

        model = CostModel.load(a.model)
    elif a.profile:
        from ..api import load_profile

        model = load_profile(a.profile)
    maps = a.perfmap or [str(data_dir() / "perfmaps" / "jetson_orin_nano_paper.json")]
    if a.name and len(maps) > 1:
        raise ValueError("--name applies to one --perfmap; drop it to name files by each map's stem")
    try:
        return {"out": a.out, "maps": [standard_figures(m, a.out, model=model, name=a.name, which=which,
                                                        unshaped_bw=a.unshaped_bw) for m in maps]}
    except OSError as e:   # e.g. an unwritable --out: one line, exit 2
        raise ValueError(f"cannot write figures to {a.out}: {e.strerror or e}") from None
