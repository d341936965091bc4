"""The runtime decision hook: single device or distributed (and at which CR), per batch.

    table = DecisionTable(costmodel.load_profile("jetson-orin-nano"))
    d = table.choose(8, 500)            # microseconds: a lookup in a precomputed table
    d["mode"], d["predicted"], d["source"], d["margin"]

Torch-free. Candidates are (strategy, cr) pairs from the strategy registry
(costmodel.strategies.decision_candidates): ("single", None), ("voltage", None),
("prism", cr), and the head/column splits ("tensor_parallel", None) and ("galaxy", None)
(runtime defaults: even splits, GLOO's ring all-reduce, tiles 1) when the cost model was
fitted with their rows; a model fitted without them refuses them with one line naming the
strategies it knows. A measured perf-map entry for the exact configuration (strategy,
cr, batch, bw, seq_len, world_size) wins over the model; every other configuration uses
the fitted cost model. The table is precomputed over a batch x bw grid; a query between grid
bandwidths takes a grid bandwidth within 2 % (an estimate of a profiled rate), else the
nearest lower one (conservative: the link is assumed no faster than observed); a query
outside the grid is answered by the model directly.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from . import checks
from .strategies import decision_candidates, get_formula, list_strategies, mode_label

OBJECTIVES = ("latency", "energy")
_label = mode_label


def parse_objective(objective) -> dict:
    """'latency', 'energy', or a weighting {'latency': w, 'energy': 1 - w} (weights >= 0,
    not both 0). Latency and energy are normalised by the best candidate before mixing."""
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; allowed: 'latency', 'energy' "
                             "or a weighting like {'latency': 0.5, 'energy': 0.5}")
        return {objective: 1.0}
    if isinstance(objective, dict) and objective and set(objective) <= set(OBJECTIVES):
        try:
            w = {k: float(v) for k, v in objective.items()}
        except (TypeError, ValueError):
            w = {"latency": math.nan}
        if all(math.isfinite(v) and v >= 0 for v in w.values()) and sum(w.values()) > 0:
            return w
    raise ValueError(f"objective {objective!r} must be 'latency', 'energy' or a dict of "
                     "finite non-negative weights over {'latency', 'energy'}")


class DecisionTable:
    """Precomputed choices over (batch, bw) for one model size and world size.

    model: a fitted costmodel.CostModel. perfmap: optional PerfMap whose exact entries
    override the model. objective: see parse_objective. max_cr: highest CR the user's
    accuracy budget accepts (prism candidates above it are dropped). max_memory_mb: memory
    budget in MB (10^6 bytes), one number for every device or one per device (rank order;
    single runs on device 0): a candidate whose predicted peak (costmodel.memory) exceeds
    it on any device is never chosen, and a batch that nothing fits is refused.
    max_accuracy_drop: the accuracy budget (costmodel.accuracy): points (2) or relative
    ('5%'); candidates predicted to lose more, or with no prediction, are dropped (reasons
    in `dropped` and in every choice). It needs fidelity: the model whose accuracy data to
    read (a name, e.g. 'vit_digits', or (name, AccuracyModel)); finetuned=True prefers its
    fine-tuned rows; accuracy_metric: a metric other than the table's primary one. The
    max_cr cap still applies first, as a shortcut.
    """

    def __init__(self, model, perfmap=None, *, candidates: Optional[Sequence] = None,
                 objective="latency", max_cr: Optional[float] = None, seq_len: Optional[int] = None,
                 world_size: int = 2, batches: Sequence[int] = tuple(range(1, 65)),
                 bws: Optional[Sequence[float]] = None, model_name: Optional[str] = None,
                 max_memory_mb=None, max_accuracy_drop=None, fidelity=None, finetuned: bool = False,
                 accuracy_metric: Optional[str] = None):
        self.weights = parse_objective(objective)
        if candidates is None:
            candidates = decision_candidates()
        cands = [(s, None if c is None else float(c)) for s, c in candidates]
        for s, c in cands:
            try:
                f = get_formula(s)
            except ValueError as e:
                raise ValueError(f"candidate ({s!r}, {c}): {e}") from None
            if c is not None and not f.compresses:
                raise ValueError(f"candidate ({s!r}, {c:g}): cr applies to "
                                 f"{list_strategies(compresses=True)} only; use ({s!r}, None)")
        check = getattr(model, "check_strategies", None)
        if check is not None:
            check([s for s, _ in cands])                 # one line naming the known strategies
        world_size = checks.count("world_size", world_size)
        seq_len = checks.optional(checks.count, "seq_len", seq_len, minimum=2)
        if max_cr is not None:
            max_cr = checks.positive("max_cr", max_cr)
            prism = [c for s, c in cands if c is not None]
            if prism and max_cr < min(prism):
                raise ValueError(f"max_cr={max_cr:g} is below every prism candidate CR "
                                 f"{sorted(prism)}; allowed: max_cr >= {min(prism):g}")
            if max_cr < 1:
                raise ValueError(f"max_cr={max_cr:g} must be >= 1 (CR 1 = exact exchange)")
            cands = [(s, c) for s, c in cands if c is None or c <= max_cr]
        if not cands:
            raise ValueError("no candidates left to choose from")
        self.accuracy, self.dropped, self.max_accuracy_drop = {}, {}, max_accuracy_drop
        if fidelity is not None or max_accuracy_drop is not None:
            cands = self._screen(cands, fidelity, max_accuracy_drop, world_size, finetuned, accuracy_metric)
        self.budget = _budget(max_memory_mb, world_size)
        self.model, self.perfmap = model, perfmap
        self.candidates, self.labels = cands, [_label(s, c) for s, c in cands]
        self.seq_len, self.world_size, self.model_name = seq_len, world_size, model_name
        grid = set(np.arange(50, 1001, 10).tolist()) if bws is None else set(map(float, bws))
        if perfmap is not None:
            grid |= {float(r["bw"]) for r in perfmap.usable() if r.get("bw")}
        self.bws = np.array(sorted(grid), float)
        self.batches = np.array(sorted(set(int(b) for b in batches)), int)
        self._build()

    def _screen(self, cands, fidelity, bound, world_size, finetuned, metric) -> list:
        from .accuracy import screen_candidates

        kept, self.accuracy, self.dropped = screen_candidates(
            cands, [_label(s, c) for s, c in cands], fidelity, bound, world_size=world_size,
            finetuned=finetuned, metric=metric)
        if not kept:
            best = min(self.accuracy.items(), key=lambda kv: kv[1]["drop"], default=None)
            least = f"; the smallest predicted drop is {best[0]} with {best[1]['drop']:.2f}" if best else ""
            raise ValueError(f"no candidate meets max_accuracy_drop={bound!r}{least} "
                             f"(dropped: {sorted(self.dropped)})")
        return kept

    def _annotate(self, d: dict) -> dict:
        """The accuracy side of a choice (only when the table was built with fidelity)."""
        if self.accuracy or self.dropped:
            d["accuracy"] = {lab: {k: p[k] for k in ("metric", "value", "drop", "relative_drop_pct",
                                                       "basis", "source", "finetuned_used")}
                             for lab, p in self.accuracy.items()}
            d["dropped"] = dict(self.dropped)
            d["max_accuracy_drop"] = self.max_accuracy_drop
        return d

    # ------------------------------------------------------------------ build
    def _build(self) -> None:
        t = self.model.predict_table(self.batches, self.bws, self.candidates, seq_len=self.seq_len,
                                     world_size=self.world_size, model=self.model_name, warn=False)
        self.latency = t["latency_ms"].copy()                 # (C, B, W)
        self.energy = t["energy_j"].copy()
        self.source = np.zeros(self.latency.shape, dtype=bool)  # True = measured entry
        if self.perfmap is not None:
            self._overlay(self.perfmap)
        self.peak_mb = np.array([[max(self._peak_mb(s, c, int(b))) for b in self.batches]
                                 for s, c in self.candidates]) if self.budget is not None else None
        if self.budget is not None:
            self.fits = np.array([[self._fits(s, c, int(b)) for b in self.batches] for s, c in self.candidates])
            self.latency[~self.fits] = np.inf
            self.energy[~self.fits] = np.inf
        self.score = self._score(self.latency, self.energy)
        order = np.argsort(self.score, axis=0)
        self.best = order[0]
        second = order[1] if len(self.candidates) > 1 else order[0]
        b = np.take_along_axis(self.score, self.best[None], 0)[0]
        s = np.take_along_axis(self.score, second[None], 0)[0]
        self.margin = np.where(s > 0, (s - b) / s, 0.0)      # relative gain over the runner-up
        self._batch_index = {int(b): i for i, b in enumerate(self.batches)}

    def _overlay(self, pm) -> None:
        from .features import tp_is_default
        from .model import record_tp_options
        from .perfmap import record_latency_ms

        seq = self.seq_len
        for r in pm.usable():
            if seq is not None and r["seq_len"] != seq:
                continue
            if self.model_name and r["model"] != self.model_name:
                continue
            # the requested CR names the candidate (the resolved L_p/m varies with N)
            s, cr = r["strategy"], r.get("cr_requested") or r.get("cr")
            f = get_formula(s)
            if f.distributed and r["world_size"] != self.world_size:
                continue
            if f.splits_weights and not tp_is_default(s, pm.record_shape(r), r["world_size"],
                                                        record_tp_options(r)):
                continue                                        # candidates are the defaults
            for ci, (cs, cc) in enumerate(self.candidates):
                if cs != s or (cc is not None and (cr is None or abs(cc - cr) > 0.02)):
                    continue
                bi = np.searchsorted(self.batches, r["batch"])
                if bi >= len(self.batches) or self.batches[bi] != r["batch"]:
                    continue
                if not f.distributed:
                    wi = slice(None)                            # no link: every bw
                else:
                    if r.get("bw") is None:
                        continue
                    wj = np.searchsorted(self.bws, float(r["bw"]))
                    if wj >= len(self.bws) or self.bws[wj] != float(r["bw"]):
                        continue
                    wi = wj
                self.latency[ci, bi, wi] = record_latency_ms(r)
                e = r.get("energy_j")
                if e is None:
                    e = r.get("energy_est_j")
                if e is not None:
                    self.energy[ci, bi, wi] = e
                self.source[ci, bi, wi] = True

    def _score(self, lat, en):
        score = np.zeros_like(lat)
        for k, w in self.weights.items():
            v = lat if k == "latency" else en
            if k == "energy" and not np.isfinite(v).any():
                raise ValueError("objective uses energy but the cost model has no energy calibration")
            v = np.where(np.isfinite(v), v, np.inf)
            score = score + w * v / np.min(v, axis=0, keepdims=True)
        return score

    # ------------------------------------------------------------------ query
    def _index(self, batch, bw):
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch={batch!r} must be an integer >= 1")
        if bw is None or not (bw > 0) or not math.isfinite(bw):
            raise ValueError(f"bw={bw!r} must be a bandwidth > 0 in Mbit/s")
        bi = self._batch_index.get(int(batch))
        return (None, None) if bi is None else (bi, self._bw_index(bw))

    def _bw_index(self, bw: float):
        """Grid bandwidth for an observed rate: a grid point within 2 % (estimates of a
        profiled rate scatter around it), else the nearest lower one; None below the grid."""
        j = int(np.searchsorted(self.bws, bw))
        near = [k for k in (j - 1, j) if 0 <= k < len(self.bws)]
        k = min(near, key=lambda k: abs(self.bws[k] - bw))
        if abs(self.bws[k] - bw) <= 0.02 * bw:
            return k
        return None if j == 0 else min(j - 1, len(self.bws) - 1)

    def choose(self, batch: int, bw: float) -> dict:
        """Best candidate for a batch at a link rate (Mbit/s): mode, strategy, cr, the
        predicted latency_ms / energy_j of every candidate, source ('profiled' when a
        measured entry decided it, else 'model') and margin (relative gain, 0..1, over the
        runner-up in the objective)."""
        bi, wi = self._index(batch, bw)
        if bi is None or wi is None:
            return self._choose_direct(batch, bw)
        c = int(self.best[bi, wi])
        if self.budget is not None and not self.fits[c, bi]:
            self._refuse(batch)
        s, cr = self.candidates[c]
        return self._annotate({
            "mode": self.labels[c], "strategy": s, "cr": cr,
            "predicted": {lab: {"latency_ms": float(self.latency[i, bi, wi]),
                                "energy_j": _f(self.energy[i, bi, wi]),
                                "source": "profiled" if self.source[i, bi, wi] else "model"}
                          for i, lab in enumerate(self.labels)},
            "source": "profiled" if self.source[c, bi, wi] else "model",
            "margin": float(self.margin[bi, wi]), "bw_grid": float(self.bws[wi]),
        })

    # ------------------------------------------------------------------ memory budget
    def _peak_mb(self, strategy: str, cr, batch: int) -> list:
        """Predicted peak MB per device (costmodel.memory) of a candidate at a batch."""
        from .memory import peak_for

        ws = self.world_size if get_formula(strategy).distributed else 1
        shape = self.model.query_shape(self.model_name, self.seq_len)
        return [v / 1e6 for v in peak_for(strategy, shape, world_size=ws, batch=batch, cr=cr)]

    def _fits(self, strategy: str, cr, batch: int) -> bool:
        return all(p <= self.budget[r] for r, p in enumerate(self._peak_mb(strategy, cr, batch)))

    def _refuse(self, batch: int):
        peaks = {lab: round(max(self._peak_mb(s, c, batch)), 1)
                 for (s, c), lab in zip(self.candidates, self.labels)}
        best = min(peaks, key=peaks.get)
        raise ValueError(f"no candidate fits max_memory_mb={self.budget if len(set(self.budget)) > 1 else self.budget[0]:g} "
                         f"at batch {batch}: the smallest predicted peak is {best} with {peaks[best]} MB")

    def choose_fast(self, batch: int, bw: float) -> tuple:
        """(strategy, cr) only: the hot path (a dict lookup and a binary search)."""
        bi = self._batch_index.get(batch)
        wi = None if bi is None else self._bw_index(bw)
        if wi is None:
            d = self.choose(batch, bw)
            return d["strategy"], d["cr"]
        return self.candidates[self.best[bi, wi]]

    def _choose_direct(self, batch, bw) -> dict:
        lat, en = [], []
        if self.budget is not None and not any(self._fits(s, c, int(batch)) for s, c in self.candidates):
            self._refuse(batch)
        for s, cr in self.candidates:
            p = self.model.predict(batch, bw, cr, strategy=s, seq_len=self.seq_len,
                                   world_size=self.world_size if get_formula(s).distributed else 1,
                                   model=self.model_name)
            ok = self.budget is None or self._fits(s, cr, int(batch))
            lat.append(float(p["latency_ms"]) if ok else math.inf)
            en.append(float(p["energy_j"]) if ok else math.inf)
        score = self._score(np.array(lat)[:, None], np.array(en)[:, None])[:, 0]
        order = np.argsort(score)
        c = int(order[0])
        s2 = score[order[1]] if len(order) > 1 else score[c]
        s, cr = self.candidates[c]
        return self._annotate({
            "mode": self.labels[c], "strategy": s, "cr": cr,
            "predicted": {lab: {"latency_ms": lat[i], "energy_j": _f(en[i]), "source": "model"}
                          for i, lab in enumerate(self.labels)},
            "source": "model", "margin": float((s2 - score[c]) / s2) if s2 > 0 else 0.0,
            "bw_grid": None})

    def predicted(self, batch: int, bw: float, strategy: str, cr: Optional[float]) -> Optional[float]:
        """Predicted latency (ms) of one candidate at (batch, bw), for hysteresis."""
        d = self.choose(batch, bw)
        return d["predicted"].get(_label(strategy, cr), {}).get("latency_ms")


def _f(x):
    x = float(x)
    return x if math.isfinite(x) else None


_TABLES: dict = {}


def _budget(max_memory_mb, world_size: int):
    """None, or the budget in MB per device (a number for every device, or one each)."""
    if max_memory_mb is None:
        return None
    vals = list(max_memory_mb) if isinstance(max_memory_mb, (list, tuple)) else [max_memory_mb] * world_size
    if len(vals) != world_size:
        raise ValueError(f"max_memory_mb has {len(vals)} values for world_size={world_size}; "
                         "give one number or one per device")
    return [checks.positive("max_memory_mb", v) for v in vals]


def choose(batch: int, bw: float, *, seq_len: Optional[int] = None, objective="latency",
           max_cr: Optional[float] = None, candidates: Optional[Sequence] = None,
           world_size: int = 2, profile: Optional[str] = None, max_memory_mb=None,
           max_accuracy_drop=None, fidelity=None, finetuned: bool = False,
           accuracy_metric: Optional[str] = None) -> dict:
    """One-call decision on a shipped profile (see DecisionTable.choose; the accuracy
    budget: DecisionTable's max_accuracy_drop / fidelity / finetuned). The table for a
    (profile, seq_len, objective, max_cr, candidates, world_size, max_memory_mb, accuracy
    arguments) is built on first use and cached, so later calls cost microseconds."""
    from .api import load_profile

    candidates = decision_candidates() if candidates is None else candidates
    max_cr = checks.optional(checks.positive, "max_cr", max_cr)    # NaN would drop every prism
    mem = tuple(max_memory_mb) if isinstance(max_memory_mb, (list, tuple)) else max_memory_mb
    if max_accuracy_drop is not None:
        from .accuracy import parse_drop_bound

        parse_drop_bound(max_accuracy_drop)        # one line before anything is hashed
    acc = dict(max_accuracy_drop=max_accuracy_drop, fidelity=fidelity, finetuned=bool(finetuned),
               accuracy_metric=accuracy_metric)
    key = (profile, seq_len, repr(parse_objective(objective)), max_cr, tuple(candidates), world_size, mem,
           tuple(acc.values()), _fidelity_stamp(fidelity))
    t = _TABLES.get(key)
    if t is None:
        t = DecisionTable(load_profile(profile), candidates=candidates, objective=objective,
                          max_cr=max_cr, seq_len=seq_len, world_size=world_size,
                          max_memory_mb=max_memory_mb, **acc)
        _TABLES[key] = t
    return t.choose(batch, bw)


def _fidelity_stamp(fidelity):
    """The shipped tables' AccuracyModel when fidelity names them (a changed table, a new
    cache entry); None otherwise."""
    if not isinstance(fidelity, str):
        return None
    from .accuracy import default_model

    return id(default_model())
