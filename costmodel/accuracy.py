"""Accuracy as data the cost model reads: the fidelity tables (data/fidelity/**/*.json).

    am = AccuracyModel.load()                      # every table under data/fidelity/
    am.predict("vit_digits", "prism", 2, cr=4)     # metric, value, drop vs exact, source table
    am.predict("vit_digits", "prism", 2, cr=4, finetuned=True)   # fine-tuned rows first
    held_out(am)                                   # leave-one-CR-out error of the interpolation

Torch-free. costmodel.fidelity_tables reads the files: the shipped tables by their
benchmark's reader (row formats unchanged), any new table by the row convention of
docs/accuracy.md (rows with `model`, `world_size`, `strategy`, `cr` or `k`, `finetuned`
and metric values), and fine-tuning cards (runtime/train/finetune.py). Records are
keyed (model, strategy, P, CR or K, finetuned, variant); the variant is the strategy's
accuracy-relevant options (Prism: log_bias, averaged; default the runtime's True/"output").

Drops are in points: a fraction metric (accuracy, cosine, agreement; higher is better)
in percentage points, 100 (exact - value); perplexity as its ratio to the exact model,
drop = 100 (ratio - 1) (per cent perplexity increase). Between measured CR (or K) the drop
is linear in log CR between the two neighbours (so monotone on each interval and never
outside the neighbours' values); Prism at CR 1 sends every row and is exact (drop 0 anchor).
Outside the measured range a prediction is refused, or flagged `extrapolated` (the nearest
measured drop held) when asked. Exact strategies (formula not approximate) predict 0.
"""
from __future__ import annotations

import math
import re
import time
from statistics import median
from typing import Optional

from .fidelity_tables import DEFAULT_VARIANT, data_root, load_tables, number as _num, read_table  # noqa: F401
from .strategies import find_formula

#: knob values at which an approximate strategy is exact by construction (drop 0 anchor)
EXACT_AT = {"prism": ("cr", 1.0), "coformer": ("k", 1.0)}   # off-the-shelf weights only
TOL = 1e-3                                     # |log(a / b)| below this: the same CR / K


class AccuracyError(ValueError):
    """A query the accuracy data cannot answer (one line naming what is allowed)."""


def metric_kind(name: str) -> str:
    """'ratio' (lower is better, compared as value / exact: perplexity, loss) or
    'fraction' (higher is better, in [0, 1], compared in points)."""
    return "ratio" if any(w in name for w in ("perplexity", "loss", "nll")) else "fraction"


def unit_of(metric: str) -> str:
    return "% perplexity increase (100 (ratio - 1))" if metric_kind(metric) == "ratio" else "points (100 x fraction)"


# ---------------------------------------------------------------------- the model
def _approximate(strategy: str) -> Optional[bool]:
    """The formula's `approximate` flag; absent: approximate iff it compresses; None when
    the strategy is not registered."""
    f = find_formula(strategy)
    if f is None:
        return None
    a = getattr(f, "approximate", None)
    return bool(f.compresses) if a is None else bool(a)


def _knob(strategy, cr, k):
    f = find_formula(strategy)
    if cr is not None and k is not None:
        raise AccuracyError("give cr or k, not both")
    if cr is not None:
        if f is not None and not f.compresses:
            raise AccuracyError(f"cr applies to compressing strategies (prism), not {strategy!r}")
        return "cr", _check_pos("cr", cr)
    if k is not None:
        if f is not None and "k" not in getattr(f, "options", ()):
            raise AccuracyError(f"k applies to strategies with a k option (coformer), not {strategy!r}")
        return "k", _check_pos("k", k)
    if f is not None and "k" in getattr(f, "options", ()):
        raise AccuracyError(f"{strategy!r} needs k (blocks per aggregation; rows give no depth)")
    raise AccuracyError(f"{strategy!r} is approximate: give cr (prism) or k (coformer)")


def _check_pos(name, v):
    x = _num(v)
    if x is None or x <= 0:
        raise AccuracyError(f"{name}={v!r} must be a finite number > 0")
    return x


def _same(a, b) -> bool:
    return abs(math.log(a / b)) < TOL


class AccuracyModel:
    """Predicted accuracy (or agreement / perplexity ratio) per (model, strategy, P, CR or
    K, finetuned), from measured records (load_tables)."""

    def __init__(self, records, skipped=()):
        self.records, self.skipped = list(records), list(skipped)

    @classmethod
    def load(cls, root=None) -> "AccuracyModel":
        return cls(*load_tables(root))

    def models(self) -> list:
        return sorted({r["model"] for r in self.records})

    def metrics(self, model: str) -> list:
        return list(dict.fromkeys(m for r in self.records if r["model"] == model for m in r["metrics"]))

    def primary_metric(self, model: str) -> str:
        return self.metrics(model)[0]

    def series(self) -> dict:
        """(model, strategy, P, finetuned, variant, knob) -> [records] of approximate rows."""
        out = {}
        for r in self.records:
            if r["strategy"] == "exact" or _approximate(r["strategy"]) is False:
                continue
            knob = "k" if r["k"] is not None else "cr" if r["cr"] is not None else None
            if knob is None:
                continue
            key = (r["model"], r["strategy"], r["world_size"], r["finetuned"], r["variant"], knob)
            out.setdefault(key, []).append(r)
        return out

    def reference(self, model: str, world_size: int, metric: str) -> tuple:
        """(exact value, source) of a metric: the unpartitioned model's row at this P (else
        any P), else an exact strategy's (Voltage) row; fraction metrics measured against
        the exact model (cos, agreement) are 1 by definition when no row states them."""
        def pick(rs):
            rs = [r for r in rs if metric in r["metrics"] and not r["finetuned"]]
            same = [r for r in rs if r["world_size"] == world_size]
            return (same or rs or [None])[0]
        rows = [r for r in self.records if r["model"] == model]
        r = pick([r for r in rows if r["strategy"] == "exact"]) or pick(
            [r for r in rows if r["strategy"] != "exact" and _approximate(r["strategy"]) is False])
        if r is not None:
            return r["metrics"][metric], r["source"]
        if metric_kind(metric) == "fraction" and any(w in metric for w in ("agreement", "cos", "recall")):
            return 1.0, "by definition (measured against the exact model)"
        raise AccuracyError(f"no exact reference for {model} {metric}")

    def _drop(self, value, ref, metric) -> float:
        return 100.0 * (value / ref - 1.0) if metric_kind(metric) == "ratio" else 100.0 * (ref - value)

    def _value(self, drop, ref, metric) -> float:
        return ref * (1 + drop / 100.0) if metric_kind(metric) == "ratio" else ref - drop / 100.0

    def points(self, model, strategy, world_size, knob, finetuned, variant, metric) -> list:
        """Sorted [(knob value, drop, source or 'anchor')] of one series, with the exact
        anchor (Prism CR 1) when the series has no row there. A record stating its own
        exact value (a fine-tuning card) drops against that one."""
        ref, _ = self.reference(model, world_size, metric)
        rows = self.series().get((model, strategy, world_size, finetuned, variant, knob), [])
        pts = {}
        for r in rows:
            if metric in r["metrics"]:
                own = r.get("exact", {}).get(metric, ref)
                pts.setdefault(r[knob], []).append(self._drop(r["metrics"][metric], own, metric))
        out = [(x, sum(d) / len(d), "measured") for x, d in pts.items()]
        anchor = None if finetuned else EXACT_AT.get(strategy)
        if out and anchor and anchor[0] == knob and not any(_same(x, anchor[1]) for x, _, _ in out):
            out.append((anchor[1], 0.0, "anchor"))
        return sorted(out)

    def _variant(self, strategy, options) -> tuple:
        v = dict(DEFAULT_VARIANT.get(strategy, {}))
        v.update({k: val for k, val in (options or {}).items() if val is not None})
        return tuple(sorted(v.items()))

    def _series_variant(self, model, strategy, world_size, knob, finetuned, want) -> Optional[tuple]:
        """The variant of a stored series matching the wanted one: each field it states
        equal (rows were completed with the defaults on loading); the most specific wins."""
        wanted = dict(want)
        best = None
        for (m, s, p, f, v, kn) in self.series():
            if (m, s, p, f, kn) != (model, strategy, world_size, finetuned, knob):
                continue
            if all(wanted.get(a) == b for a, b in v) and (best is None or len(v) > len(best)):
                best = v
        return best

    def predict(self, model: str, strategy: str, world_size: int, cr=None, k=None,
                finetuned: bool = False, *, metric: Optional[str] = None, options: Optional[dict] = None,
                extrapolate: bool = False) -> dict:
        """Prediction: metric, unit, exact, value, drop (points), relative_drop_pct, basis
        ('measured' / 'interpolated' / 'exact strategy' / 'extrapolated'), source table(s),
        neighbours, extrapolated, finetuned_used, notes. AccuracyError (one line) when
        the data cannot answer."""
        if model not in self.models():
            raise AccuracyError(f"no accuracy data for model {model!r}; models with data: {self.models()}")
        metric = metric or self.primary_metric(model)
        if metric not in self.metrics(model):
            raise AccuracyError(f"metric {metric!r} not measured for {model}; allowed: {self.metrics(model)}")
        known = sorted({r["strategy"] for r in self.records if r["model"] == model} - {"exact"})
        approx = _approximate(strategy)
        if approx is None and strategy not in known:
            from .strategies import list_strategies
            raise AccuracyError(f"unknown strategy {strategy!r}; known: {list_strategies()}")
        ws = _num(world_size)
        if ws is None or ws != int(ws) or ws < 1:
            raise AccuracyError(f"world_size={world_size!r} must be an integer >= 1")
        ws = int(ws)
        out = {"model": model, "strategy": strategy, "world_size": ws, "cr": cr, "k": k,
               "finetuned": bool(finetuned), "metric": metric, "unit": unit_of(metric),
               "extrapolated": False, "finetuned_used": False, "notes": []}
        if approx is False:
            if cr is not None:
                raise AccuracyError(f"cr applies to compressing strategies (prism), not {strategy!r}")
            ref, src = self.reference(model, ws, metric)
            return {**out, "exact": ref, "value": ref, "drop": 0.0, "relative_drop_pct": 0.0,
                    "basis": "exact strategy", "source": f"formula {strategy!r} is exact; exact value from {src}",
                    "neighbours": []}
        if cr is None and k is None and "k" in getattr(find_formula(strategy), "options", ()):
            depths = {r["depth"] for r in self.records if (r["model"], r["strategy"]) == (model, strategy)}
            if len(depths) == 1 and None not in depths:      # the formula's default: k = depth
                k = out["k"] = depths.pop()
                out["notes"].append(f"k defaults to the depth {k:g} (one aggregation at the end)")
        knob, x = _knob(strategy, cr, k)
        ps = [p for (m, s, p, *_r) in self.series() if (m, s) == (model, strategy)]
        if ws not in ps:
            raise AccuracyError(f"no {strategy} rows for {model} at world_size {ws}; measured: {sorted(set(ps))}")
        ref, ref_src = self.reference(model, ws, metric)
        want = self._variant(strategy, options)
        tries = [True, False] if finetuned else [False]
        last = None
        for fin in tries:
            v = self._series_variant(model, strategy, ws, knob, fin, want)
            if v is None:
                last = AccuracyError(f"no {'fine-tuned ' if fin else ''}{strategy} rows for {model} P={ws} "
                                     f"variant {dict(want)}")
                continue
            pts = self.points(model, strategy, ws, knob, fin, v, metric)
            try:
                res = _interpolate(pts, x, knob, extrapolate)
            except AccuracyError as e:
                last = e
                continue
            if finetuned and not fin:
                out["notes"].append("no fine-tuned rows cover this point; the off-the-shelf rows "
                                    "are used (conservative)")
            drop = res["drop"]
            srcs = sorted({r["source"] for r in self.series()[(model, strategy, ws, fin, v, knob)]})
            return {**out, **res, "finetuned_used": fin, "exact": ref,
                    "value": self._value(drop, ref, metric),
                    "relative_drop_pct": drop if metric_kind(metric) == "ratio" else drop / ref,   # % of exact
                    "source": ", ".join(srcs) + f" (exact value: {ref_src})", "variant": dict(v)}
        raise last


INTERPOLATIONS = ("log", "linear")


def _interpolate(pts: list, x: float, knob: str, extrapolate: bool, how: str = "log") -> dict:
    """Drop at x from [(knob, drop, kind)]: a measured point, else linear in log knob
    (how='linear': in the knob itself; held-out comparison only) between the two
    neighbours; outside the range refused or (extrapolate) held."""
    if not pts:
        raise AccuracyError("no measured points")
    for xi, d, kind in pts:
        if _same(xi, x):
            return {"drop": d, "basis": "measured" if kind == "measured" else "exact anchor",
                    "neighbours": [xi]}
    lo = [p for p in pts if p[0] < x]
    hi = [p for p in pts if p[0] > x]
    if lo and hi:
        (x0, d0, _), (x1, d1, _) = lo[-1], hi[0]
        t = math.log(x / x0) / math.log(x1 / x0) if how == "log" else (x - x0) / (x1 - x0)
        return {"drop": d0 + t * (d1 - d0), "basis": "interpolated", "neighbours": [x0, x1]}
    rng = f"[{pts[0][0]:g}, {pts[-1][0]:g}]"
    if not extrapolate:
        raise AccuracyError(f"{knob}={x:g} is outside the measured {knob} range {rng} "
                            "(extrapolate=True holds the nearest measured drop)")
    xi, d, _ = lo[-1] if lo else hi[0]
    return {"drop": d, "basis": "extrapolated", "neighbours": [xi], "extrapolated": True}


def parse_drop_bound(bound) -> tuple:
    """max_accuracy_drop: points (2, '2', '2pt') -> ('points', 2.0); relative ('5%') ->
    ('relative', 5.0), per cent of the exact value."""
    msg = (f"max_accuracy_drop={bound!r} must be a finite number >= 0 of points (e.g. 2) "
           "or a relative drop like '5%'")
    if isinstance(bound, bool):
        raise AccuracyError(msg)
    if isinstance(bound, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(%|pts?|points?)?\s*", bound)
        if not m:
            raise AccuracyError(msg)
        kind = "relative" if m.group(2) == "%" else "points"
        x = _num(m.group(1))
    else:
        kind, x = "points", _num(bound)
    if x is None or x < 0:
        raise AccuracyError(msg)
    return kind, x


def within_bound(pred: dict, bound: tuple) -> bool:
    kind, x = bound
    v = pred["drop"] if kind == "points" else pred["relative_drop_pct"]
    return v <= x + 1e-12


def screen_candidates(candidates, labels, fidelity, max_accuracy_drop=None, *, world_size: int,
                      finetuned: bool = False, metric: Optional[str] = None) -> tuple:
    """(kept candidates, {label: prediction}, {label: reason dropped}) for the decision
    hook. fidelity: a model name (the shipped tables) or (name, AccuracyModel). A
    candidate with no prediction is dropped when a bound is set (never silently allowed)."""
    if fidelity is None:
        raise AccuracyError("max_accuracy_drop needs the model whose accuracy data to use: "
                            f"fidelity=<name> (models with data: {default_model().models()})")
    name, am = (fidelity, default_model()) if isinstance(fidelity, str) else fidelity
    if name not in am.models():
        raise AccuracyError(f"no accuracy data for model {name!r}; models with data: {am.models()}")
    if metric is not None and metric not in am.metrics(name):
        raise AccuracyError(f"metric {metric!r} not measured for {name}; allowed: {am.metrics(name)}")
    bound = None if max_accuracy_drop is None else parse_drop_bound(max_accuracy_drop)
    kept, preds, dropped = [], {}, {}
    for (s, c), lab in zip(candidates, labels):
        f = find_formula(s)
        ws = world_size if f is None or f.distributed else 1
        kn = {"cr": c} if f is not None and f.compresses else {"k": c} if c is not None else {}
        try:
            p = am.predict(name, s, ws, finetuned=finetuned, metric=metric, **kn)
        except AccuracyError as e:
            if bound is None:
                kept.append((s, c))
            else:
                dropped[lab] = f"no accuracy prediction: {e}"
            continue
        preds[lab] = p
        if bound is not None and not within_bound(p, bound):
            what = "drop" if bound[0] == "points" else "relative_drop_pct"
            dropped[lab] = (f"predicted {p['metric']} {what} {p[what]:.2f} > {bound[1]:g}"
                            f"{' points' if bound[0] == 'points' else ' %'} ({p['basis']})")
            continue
        kept.append((s, c))
    return kept, preds, dropped


_DEFAULT: dict = {}


def default_model(max_age_s: float = 1.0) -> AccuracyModel:
    """The AccuracyModel of data/fidelity/, reloaded when a table changes (the files are
    looked at again at most every max_age_s seconds: the decision hook's hot path)."""
    root, now = data_root(), time.monotonic()
    if _DEFAULT.get("root") == root and now - _DEFAULT.get("checked", -math.inf) < max_age_s:
        return _DEFAULT["model"]
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in sorted(root.rglob("*.json")))
    if _DEFAULT.get("stamp") != stamp or _DEFAULT.get("root") != root:
        _DEFAULT.update(stamp=stamp, root=root, model=AccuracyModel.load(root))
    _DEFAULT["checked"] = now
    return _DEFAULT["model"]


# ---------------------------------------------------------------------- held-out error
def held_out(am: Optional[AccuracyModel] = None, *, how: str = "log") -> dict:
    """Leave one CR (or K) out: each measured interior point of every series (the primary
    metric) predicted from its two neighbours alone by the same interpolation (`how`),
    |error| in points. Rows plus n / median / max summaries per model (all variants and
    the default variant only) and per unit (fraction metrics vs perplexity)."""
    if how not in INTERPOLATIONS:
        raise AccuracyError(f"unknown interpolation {how!r}; allowed: {list(INTERPOLATIONS)}")
    am = default_model() if am is None else am
    rows = []
    for (model, s, ws, fin, v, knob) in sorted(am.series(), key=repr):
        met = am.primary_metric(model)
        pts = am.points(model, s, ws, knob, fin, v, met)
        default = dict(am._variant(s, None))
        for i in range(1, len(pts) - 1):
            x, d, kind = pts[i]
            if kind != "measured":
                continue
            pred = _interpolate(pts[:i] + pts[i + 1:], x, knob, False, how)["drop"]
            rows.append({"model": model, "strategy": s, "world_size": ws, "finetuned": fin,
                         "variant": dict(v), "knob": knob, "value": x, "metric": met,
                         "measured_drop": d, "predicted_drop": pred, "abs_error": abs(pred - d),
                         "neighbours": [pts[i - 1][0], pts[i + 1][0]],
                         "default_variant": all(default.get(a) == b for a, b in v)})

    def summary(rs):
        e = [r["abs_error"] for r in rs]
        return {"n": len(e), "median_abs_error": median(e) if e else None, "max_abs_error": max(e) if e else None}
    models = sorted({r["model"] for r in rows})
    by_kind = {k: [r for r in rows if metric_kind(r["metric"]) == k] for k in ("fraction", "ratio")}
    return {"interpolation": how, "rows": rows,
            "per_model": {m: summary([r for r in rows if r["model"] == m]) for m in models},
            "per_model_default_variant": {m: summary([r for r in rows if r["model"] == m and r["default_variant"]])
                                          for m in models},
            "fraction_metrics": summary(by_kind["fraction"]),
            "fraction_metrics_default_variant": summary([r for r in by_kind["fraction"] if r["default_variant"]]),
            "perplexity": summary(by_kind["ratio"]),
            "unit": "points: fraction metrics in percentage points, perplexity in % increase"}
