"""`python -m costmodel fit | predict | validate | report | evaluate | plot | accuracy | decide` — JSON on stdout, logs on stderr.

Exit codes: 0 ok; 1 a check failed (`validate --max-mape`); 2 bad input (one line on
stderr: unreadable or invalid perf map, corrupt model file, impossible query).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

import numpy as np

from .checks import argparse_message, arg_count, arg_nonnegative, arg_positive, arg_within
from .features import QueryError
from .safeio import check_writable


class _Usage(ValueError):
    """A command-line error (argparse's), printed as one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit 2) instead of usage + error."""

    def error(self, message):
        raise _Usage(argparse_message(message))


def debug_enabled(argv=None) -> bool:
    """Tracebacks for unexpected errors: `--debug` or PRISM_EDGE_DEBUG=1."""
    return os.environ.get("PRISM_EDGE_DEBUG", "") not in ("", "0") or "--debug" in (argv or ())


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _model(a):
    from .api import load_profile
    from .model import CostModel

    if getattr(a, "model", None):
        return CostModel.load(a.model), a.model
    return load_profile(a.profile), a.profile or "default"


def cmd_fit(a) -> dict:
    from .model import CostModel
    from .perfmap import load_perfmap, merge_perfmaps

    check_writable(a.out)             # before the fit: a bad --out fails in a moment
    pm = load_perfmap(a.perfmap[0]) if len(a.perfmap) == 1 else merge_perfmaps(*a.perfmap)
    cm = CostModel(unshaped_bw=a.unshaped_bw, residual=not a.no_residual, interval=a.interval)
    cm.fit(pm)
    name = a.name or __import__("pathlib").Path(a.out).stem
    maps = " + ".join(str(p) for p in a.perfmap)
    profile = {"name": name, "perfmap": maps, "perfmap_source": pm.source,
               "description": a.description or f"fitted on {maps} ({pm.source})",
               "command": "python -m costmodel fit " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else None}
    cm.save(a.out, profile=profile)
    print(f"wrote {a.out} ({cm.training_['n_rows']} rows)", file=sys.stderr)
    return {"out": str(a.out), "profile": profile, "training": cm.training_, "cv": cm.cv_,
            "physical": cm.physical_parameters(), "interval": cm.interval_}


def cmd_predict(a) -> dict:
    from .api import predict as api_predict
    from .model import CostModel

    from .strategies import get_formula, list_strategies

    try:
        f = get_formula(a.strategy)
    except ValueError as e:
        raise QueryError(str(e)) from None
    # an argument the strategy does not take is refused, never silently ignored
    if a.cr is not None and not f.compresses:
        raise QueryError(f"--cr applies to {list_strategies(compresses=True)}, not to "
                         f"--strategy {a.strategy}")
    if not f.distributed and a.world_size not in (None, 1):
        raise QueryError(f"--strategy {a.strategy} runs on one device; --world-size "
                         f"{a.world_size} must be 1 (or left out)")
    if a.model:
        cm = CostModel.load(a.model)
        ws = 1 if not f.distributed else (a.world_size or 2)
        p = cm.predict(a.batch, a.bw, a.cr, strategy=a.strategy, seq_len=a.seq_len, world_size=ws)
        return {k: float(v) for k, v in p.items()}
    return api_predict(a.batch, a.bw, a.cr, seq_len=a.seq_len, strategy=a.strategy,
                       world_size=a.world_size, profile=a.profile)


def cmd_validate(a):
    from .noise import PHASE_TARGETS, measurement_floor
    from .perfmap import load_perfmap

    cm, which = _model(a)
    pm = load_perfmap(a.perfmap)
    s = cm.score(pm)
    mape = s["latency"]["mape"]
    out = {"model": which, "perfmap": a.perfmap, **s}
    floor = measurement_floor(pm)     # maps measured in passes: the data's own noise
    if floor.get("n"):
        out["measurement_floor"] = floor
        phases = {ph: measurement_floor(pm, target=ph) for ph in PHASE_TARGETS}
        phases = {ph: f for ph, f in phases.items() if f.get("n")}   # maps whose passes record them
        if phases:
            out["measurement_floor_phases"] = phases
    rc = 0
    if a.max_mape is not None:
        ok = mape is not None and mape <= a.max_mape
        out["check"] = {"max_mape": a.max_mape, "latency_mape": mape, "passed": bool(ok)}
        rc = 0 if ok else 1
    if s["in_sample"]:
        print("note: this perf map is the model's training data; the scores are in-sample",
              file=sys.stderr)
    return out, rc


def cmd_report(a) -> dict:
    cm, which = _model(a)
    return {"model": which, "profile": getattr(cm, "profile_", None), "training": cm.training_,
            "strategies": cm.strategies_, "ranges": cm.ranges_, "physical": cm.physical_parameters(),
            "residual_weight": cm.residual_weight_, "cv": cm.cv_, "interval": cm.interval_}


def build_parser():
    ap = OneLineParser(prog="python -m costmodel", description=__doc__.split("\n")[0])
    ap.add_argument("--debug", action="store_true",
                    help="tracebacks for unexpected errors (also PRISM_EDGE_DEBUG=1)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit a cost model on a perf map and save it as JSON")
    f.add_argument("perfmap", nargs="+", help="perf map(s); several are merged (perfmap.merge_perfmaps)")
    f.add_argument("--out", required=True, help="output JSON (e.g. costmodel/profiles/NAME.json)")
    f.add_argument("--unshaped-bw", type=arg_positive("Mbit/s"), default=None,
                   help="Mbit/s assumed for distributed records with bw null (unthrottled link)")
    f.add_argument("--no-residual", action="store_true", help="calibrated analytical model only")
    f.add_argument("--interval", type=arg_within(0.0, 1.0), default=0.8, help="prediction-interval coverage (0..1)")
    f.add_argument("--name", default=None)
    f.add_argument("--description", default=None)
    for name in ("predict", "validate", "report"):
        p = sub.add_parser(name)
        g = p.add_mutually_exclusive_group()
        g.add_argument("--profile", default=None, help="shipped profile name (list: report --list)")
        g.add_argument("--model", default=None, help="path of a model JSON written by fit")
        if name == "predict":
            p.add_argument("--batch", type=arg_count(), required=True)
            p.add_argument("--bw", type=arg_positive("Mbit/s"), default=None, help="Mbit/s")
            p.add_argument("--cr", type=arg_positive(), default=None,
                           help="compression rate (compressing strategies only)")
            p.add_argument("--strategy", default="prism")
            p.add_argument("--seq-len", type=arg_count(2), default=None)
            p.add_argument("--world-size", type=arg_count(), default=None,
                           help="devices P (default 2; single: 1)")
        if name == "validate":
            p.add_argument("perfmap")
            p.add_argument("--max-mape", type=arg_nonnegative("%"), default=None,
                           help="exit 1 when the latency MAPE (%%) exceeds this")
        if name == "report":
            p.add_argument("--list", action="store_true", help="list the shipped profiles")
    _evaluate_parser(sub)
    _accuracy_parsers(sub)
    from .plots import add_cli as add_plot_cli   # `plot`: figures (costmodel/plots/)
    add_plot_cli(sub)
    return ap




def _accuracy_parsers(sub) -> None:
    a = sub.add_parser("accuracy", help="predicted accuracy of a strategy (data/fidelity tables; docs/accuracy.md)")
    a.add_argument("--model", default=None, help="fidelity model name (list: --list)")
    a.add_argument("--strategy", default="prism")
    a.add_argument("--cr", type=arg_positive(), default=None, help="compression rate (prism)")
    a.add_argument("--k", type=arg_positive(), default=None, help="blocks per aggregation (coformer)")
    a.add_argument("--world-size", type=arg_count(), default=2)
    a.add_argument("--finetuned", action="store_true", help="prefer the fine-tuned rows")
    a.add_argument("--metric", default=None, help="a metric other than the table's primary one")
    a.add_argument("--extrapolate", action="store_true", help="outside the measured range: hold the nearest drop")
    a.add_argument("--list", action="store_true", help="models, metrics and measured series")
    a.add_argument("--held-out", action="store_true", help="leave-one-CR-out error of the interpolation")
    a.add_argument("--interpolation", choices=["log", "linear"], default="log", help="with --held-out")
    a.add_argument("--rows", action="store_true", help="with --held-out: every held-out point too")
    d = sub.add_parser("decide", help="the decision hook for one (batch, bw), with an accuracy budget")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--profile", default=None, help="shipped profile name (list: report --list)")
    g.add_argument("--costmodel", default=None, help="path of a model JSON written by fit")
    d.add_argument("--batch", type=arg_count(), required=True)
    d.add_argument("--bw", type=arg_positive("Mbit/s"), required=True, help="Mbit/s")
    d.add_argument("--candidates", default=None,
                   help="comma list of strategy or strategy:cr, e.g. single,voltage,prism:2,prism:9.9")
    d.add_argument("--max-cr", type=arg_positive(), default=None)
    d.add_argument("--max-accuracy-drop", default=None, help="points (2) or relative (5%%)")
    d.add_argument("--fidelity", default=None, help="model whose accuracy data to use (accuracy --list)")
    d.add_argument("--finetuned", action="store_true", help="the weights are fine-tuned: prefer those rows")
    d.add_argument("--accuracy-metric", default=None)
    d.add_argument("--world-size", type=arg_count(2), default=2)
    d.add_argument("--seq-len", type=arg_count(2), default=None)
    d.add_argument("--objective", choices=["latency", "energy"], default="latency")


def cmd_accuracy(a) -> dict:
    from . import accuracy

    am = accuracy.default_model()
    if a.list:
        series = sorted({(m, s, p, f, knob) for (m, s, p, f, v, knob) in am.series()}, key=repr)
        return {"models": {m: {"metrics": am.metrics(m), "primary": am.primary_metric(m)} for m in am.models()},
                "series": [{"model": m, "strategy": s, "world_size": p, "finetuned": f, "knob": k}
                           for m, s, p, f, k in series],
                "skipped": [f"{w}: {why}" for w, why in am.skipped]}
    if a.held_out:
        res = accuracy.held_out(am, how=a.interpolation)
        return res if a.rows else {k: v for k, v in res.items() if k != "rows"}
    if a.model is None:
        raise QueryError(f"accuracy needs --model (one of {am.models()}), or --list / --held-out")
    return am.predict(a.model, a.strategy, a.world_size, cr=a.cr, k=a.k, finetuned=a.finetuned,
                      metric=a.metric, extrapolate=a.extrapolate)


def _candidates(text):
    out = []
    for item in text.split(","):
        name, _, cr = item.strip().partition(":")
        try:
            out.append((name, float(cr) if cr else None))
        except ValueError:
            raise QueryError(f"--candidates item {item!r}: give strategy or strategy:cr "
                             "(e.g. prism:9.9)") from None
    return out


def cmd_decide(a) -> dict:
    from .api import load_profile
    from .decision import DecisionTable
    from .model import CostModel

    cm = CostModel.load(a.costmodel) if a.costmodel else load_profile(a.profile)
    t = DecisionTable(cm, candidates=_candidates(a.candidates) if a.candidates else None,
                      objective=a.objective, max_cr=a.max_cr, seq_len=a.seq_len, world_size=a.world_size,
                      batches=[a.batch], max_accuracy_drop=a.max_accuracy_drop, fidelity=a.fidelity,
                      finetuned=a.finetuned, accuracy_metric=a.accuracy_metric)
    return {"profile": a.costmodel or a.profile or "default", "batch": a.batch, "bw": a.bw,
            **t.choose(a.batch, a.bw)}


def _evaluate_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="held-out evaluation and the testbed analyses (JSON)")
    es = e.add_subparsers(dest="what", required=True)
    h = es.add_parser("held-out", help="leave one value out per axis: hybrid vs analytical vs random forest")
    h.add_argument("perfmap", nargs="+", help="perf map(s); several are merged")
    h.add_argument("--axes", nargs="+", default=None, help="axes to hold out (default: every axis)")
    h.add_argument("--unshaped-bw", type=arg_positive("Mbit/s"), default=None, help="Mbit/s for distributed rows with bw null")
    h.add_argument("--quick", action="store_true", help="3 folds, 60 trees (default 5, 150)")
    c = es.add_parser("cross-session", help="session B predicted from session A, and decisions (both ways)")
    c.add_argument("maps", nargs=2, metavar="MAP", help="two perf maps of the same grid (vit_tiny rows)")
    c.add_argument("--blend", type=arg_within(0.0, 1.0), nargs="+", default=[],
                   help="weights w in (0, 1) of A's measurement against the model (decisions)")
    p = es.add_parser("protocol-ab", help="the p2 / p2a / p2m measurement protocols compared")
    p.add_argument("--score", nargs="+", choices=["p2", "p2a", "p2m"], default=None,
                   help="score only these maps; the others keep their entries from --out")
    p.add_argument("--data", default=None, help="data folder (default: the repository's data/)")
    x = es.add_parser("extrapolation", help="a profile's error on rows outside its fit (default P = 3)")
    x.add_argument("perfmap", nargs="*", help="maps to score (default testbed_vit_tp3 + testbed_vit_p3)")
    x.add_argument("--profile", default="testbed-vit-tp")
    x.add_argument("--world-size", type=arg_count(2), default=3)
    for q in (h, c, p, x):
        q.add_argument("--out", default=None, help="also write the JSON here (with the command that made it)")


def cmd_evaluate(a, argv) -> dict:
    from . import analysis, evaluate

    if a.what == "held-out":
        from .perfmap import load_perfmap, merge_perfmaps

        pm = load_perfmap(a.perfmap[0]) if len(a.perfmap) == 1 else merge_perfmaps(*a.perfmap)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = evaluate.held_out(pm, unshaped_bw=a.unshaped_bw, quick=a.quick,
                                    axes=tuple(a.axes or evaluate.AXES))
        out = {"perfmap": " + ".join(a.perfmap), "held_out": res}
    elif a.what == "cross-session":
        out = analysis.cross_session(*a.maps, blend=a.blend)
    elif a.what == "protocol-ab":
        from pathlib import Path

        last = json.loads(Path(a.out).read_text()) if a.score and a.out and Path(a.out).exists() else None
        out = analysis.protocol_ab(a.data, score=a.score, last=last)
    else:
        maps = a.perfmap or [str(evaluate.data_dir() / "perfmaps" / f) for f in
                             ("testbed_vit_tp3.json", "testbed_vit_p3.json")]
        out = analysis.extrapolation(a.profile, maps, world_size=a.world_size)
    out = {"command": "python -m costmodel " + " ".join(argv), **out}
    if a.out:
        from .perfmap import atomic_write_text

        atomic_write_text(a.out, json.dumps(_jsonable(out), indent=1) + "\n")
        print(f"wrote {a.out}", file=sys.stderr)
    return out


def main(argv=None) -> int:
    """Exit 0 ok, 1 a check failed (validate --max-mape), 2 bad input (one line on
    stderr). An unexpected error is one line and exit 1 too, with its traceback only
    under --debug or PRISM_EDGE_DEBUG=1."""
    from .model import ModelFileError
    from .perfmap import PerfMapError

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_enabled(argv)
    try:
        a = build_parser().parse_args(argv)
    except _Usage as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except SystemExit as e:          # --help
        return 2 if e.code else 0
    rc = 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if a.cmd == "evaluate" and a.out:
                check_writable(a.out)
            if a.cmd == "plot":
                from .plots import run_cli as run_plot_cli
                out = run_plot_cli(a)
            elif a.cmd == "evaluate":
                out = cmd_evaluate(a, argv)
            elif a.cmd == "accuracy":
                out = cmd_accuracy(a)
            elif a.cmd == "decide":
                out = cmd_decide(a)
            elif a.cmd == "fit":
                out = cmd_fit(a)
            elif a.cmd == "predict":
                out = cmd_predict(a)
            elif a.cmd == "validate":
                out, rc = cmd_validate(a)
            elif getattr(a, "list", False):
                from .api import list_profiles
                out = {"profiles": list_profiles()}
            else:
                out = cmd_report(a)
        for w in caught:
            print(f"warning: {_one_line(w.message)}", file=sys.stderr)
    except (PerfMapError, ModelFileError, QueryError, ValueError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:             # a file the command reads: one line naming it
        print(f"error: {_os_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - unexpected: one line, traceback with --debug
        if debug:
            raise
        print(f"error: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    json.dump(_jsonable(out), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return rc


def _one_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _os_line(e: OSError) -> str:
    what = e.strerror or _one_line(e)
    return f"{e.filename}: {what}" if e.filename else what
