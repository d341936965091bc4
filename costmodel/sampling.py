"""Adaptive sampling: which configurations to profile next.

Given a candidate grid (the records of a perf map, or any list of configurations in the
same shape) and the ones profiled so far, `propose` ranks the unprofiled candidates by

  - uncertainty: disagreement of a small committee of calibrated analytical models fitted
    on bootstrap resamples of the profiled rows (std of log predicted latency) — a proxy
    for the largest predicted error; and
  - boundary: closeness to a decision boundary, |log(latency / best competitor)| for the
    same (batch, bw, seq_len, world_size) — where a wrong prediction flips the decision.

`method="mixed"` (default) alternates the two rankings. `simulate` replays a profiling
campaign on a complete perf map: it starts from a small random seed set, proposes in
rounds until the budget (a fraction of the grid) is spent, fits the hybrid model on the
chosen rows and scores it on every row it did not see; `compare_random` does the same with
random picks, for the same budget.
"""
from __future__ import annotations

import warnings

import numpy as np

from .model import CostModel, metrics
from .perfmap import PerfMap

METHODS = ("uncertainty", "boundary", "mixed")


def _sub(pm: PerfMap, idx) -> PerfMap:
    recs = pm.usable(breakdown=True)
    return PerfMap(meta=dict(pm.meta), records=[recs[i] for i in idx])


def _config_arrays(recs, unshaped_bw):
    g = lambda k, d=np.nan: np.array([d if r.get(k) is None else r[k] for r in recs], dtype=float)  # noqa: E731
    bw = g("bw")
    if unshaped_bw is not None:
        dist = np.array([r["strategy"] != "single" for r in recs])
        bw = np.where(dist & ~np.isfinite(bw), unshaped_bw, bw)
    return {"strategy": np.array([r["strategy"] for r in recs], dtype=object), "batch": g("batch"),
            "bw": bw, "cr": g("cr"), "seq_len": g("seq_len"), "world_size": g("world_size"),
            "model": np.array([r["model"] for r in recs], dtype=object)}


def _predict_recs(cm: CostModel, C: dict, idx) -> np.ndarray:
    out = np.full(len(idx), np.nan)
    idx = np.asarray(idx)
    for name in np.unique(C["model"][idx]):
        m = C["model"][idx] == name
        j = idx[m]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[m] = cm.predict(C["batch"][j], C["bw"][j], C["cr"][j], strategy=C["strategy"][j],
                                seq_len=C["seq_len"][j], world_size=C["world_size"][j], model=name,
                                warn=False)["latency_ms"]
    return out


def propose(pm: PerfMap, profiled, k: int, *, method: str = "mixed", committee: int = 3,
            unshaped_bw: float | None = None, seed: int = 0, hybrid_committee: bool = True) -> list:
    """Indices (into pm.usable(breakdown=True)) of the next k configurations to profile."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}")
    recs = pm.usable(breakdown=True)
    C = _config_arrays(recs, unshaped_bw)
    profiled = np.asarray(sorted(set(int(i) for i in profiled)))
    rest = np.setdiff1d(np.arange(len(recs)), profiled)
    if k <= 0 or rest.size == 0:
        return []
    rng = np.random.default_rng(seed)
    preds = []
    for c in range(committee):
        boot = rng.choice(profiled, size=profiled.size, replace=True)
        boot = np.unique(np.concatenate([boot, profiled[rng.permutation(profiled.size)[:2]]]))
        try:
            cm = CostModel(residual=hybrid_committee, cv_folds=2, residual_estimators=40,
                           unshaped_bw=unshaped_bw).fit(_sub(pm, boot))
        except ValueError:
            continue
        preds.append(_predict_recs(cm, C, np.arange(len(recs))))
    P = np.log(np.stack(preds)) if preds else np.zeros((1, len(recs)))
    unc = P.std(axis=0) if P.shape[0] > 1 else np.zeros(len(recs))
    mean = np.exp(P.mean(axis=0))
    # boundary: best competitor at the same (batch, bw, seq_len, world_size, model)
    key = [(C["batch"][i], C["bw"][i] if C["strategy"][i] != "single" else None, C["seq_len"][i],
            C["model"][i]) for i in range(len(recs))]
    gap = np.full(len(recs), np.inf)
    singles = {}
    for i in range(len(recs)):
        if C["strategy"][i] == "single":
            singles[(C["batch"][i], C["seq_len"][i], C["model"][i])] = mean[i]
    groups: dict = {}
    for i, kk in enumerate(key):
        groups.setdefault((kk[0], kk[1], kk[2], kk[3], C["world_size"][i]), []).append(i)
    for (b, bw, n, mdl, ws), ids in groups.items():
        s = singles.get((b, n, mdl))
        for i in ids:
            others = [mean[j] for j in ids if j != i]
            if s is not None and C["strategy"][i] != "single":
                others.append(s)
            if others:
                gap[i] = abs(np.log(mean[i] / min(others)))
    # spread a round's picks: a candidate loses priority for each axis value it shares
    # with rows already profiled or picked (so the round is not k near-duplicates)
    axes = [C[a] for a in ("strategy", "batch", "bw", "cr", "seq_len", "world_size")]
    counts = [dict() for _ in axes]
    for i in profiled:
        for c, a in zip(counts, axes):
            c[a[i]] = c.get(a[i], 0) + 1

    def crowd(i):
        return sum(c.get(a[i], 0) for c, a in zip(counts, axes)) / max(profiled.size, 1)

    unc = unc / (1.0 + np.array([crowd(i) for i in range(len(recs))]))
    order_u = rest[np.argsort(-unc[rest], kind="stable")]
    order_b = rest[np.argsort(gap[rest], kind="stable")]
    if method == "uncertainty":
        return order_u[:k].tolist()
    if method == "boundary":
        return order_b[:k].tolist()
    out, seen, iu, ib = [], set(), 0, 0
    while len(out) < min(k, rest.size):
        src = order_u if len(out) % 2 == 0 else order_b
        pos = iu if len(out) % 2 == 0 else ib
        while src[pos] in seen:
            pos += 1
        out.append(int(src[pos]))
        seen.add(int(src[pos]))
        if len(out) % 2 == 1:
            iu = pos + 1
        else:
            ib = pos + 1
    return out


def _initial(recs, n0, rng) -> list:
    """A random seed set holding every strategy at its smallest and largest batch."""
    strat = np.array([r["strategy"] for r in recs])
    batch = np.array([r["batch"] for r in recs])
    pick = set()
    for s in np.unique(strat):
        ids = np.flatnonzero(strat == s)
        for b in (batch[ids].min(), batch[ids].max()):
            cand = ids[batch[ids] == b]
            pick.add(int(rng.choice(cand)))
    rest = np.setdiff1d(np.arange(len(recs)), list(pick))
    extra = max(0, n0 - len(pick))
    pick.update(int(i) for i in rng.choice(rest, size=min(extra, rest.size), replace=False))
    return sorted(pick)


def _score_on_rest(pm, chosen, unshaped_bw, model_kw) -> dict:
    recs = pm.usable(breakdown=True)
    rest = np.setdiff1d(np.arange(len(recs)), chosen)
    cm = CostModel(unshaped_bw=unshaped_bw, **model_kw).fit(_sub(pm, chosen))
    C = _config_arrays(recs, unshaped_bw)
    from .perfmap import record_latency_ms
    y = np.array([record_latency_ms(recs[i]) for i in rest])
    out = metrics(_predict_recs(cm, C, rest), y)
    out["decision_accuracy"] = _decision_accuracy(cm, recs, C)
    return out


def _decision_accuracy(cm, recs, C) -> float | None:
    """Share of (batch, bw, seq_len, world_size, model) settings where the model picks the
    measured fastest configuration (strategy and cr; single joins every bw)."""
    from .perfmap import record_latency_ms
    y = np.array([record_latency_ms(r) for r in recs])
    p = _predict_recs(cm, C, np.arange(len(recs)))
    dist = [i for i in range(len(recs)) if C["strategy"][i] != "single"]
    groups: dict = {}
    for i in dist:
        groups.setdefault((C["batch"][i], C["bw"][i], C["seq_len"][i], C["world_size"][i], C["model"][i]), []).append(i)
    single = {(C["batch"][i], C["seq_len"][i], C["model"][i]): i
              for i in range(len(recs)) if C["strategy"][i] == "single"}
    hits = []
    for (b, bw, n, ws, mdl), ids in groups.items():
        s = single.get((b, n, mdl))
        ids = ids + ([s] if s is not None else [])
        if len(ids) < 2:
            continue
        hits.append(int(np.argmin(p[ids]) == np.argmin(y[ids])))
    return float(np.mean(hits)) if hits else None


def simulate(pm: PerfMap, frac: float = 0.2, *, method: str = "mixed", rounds: int = 4,
             init_frac: float = 0.05, unshaped_bw=None, seed: int = 0, model_kw=None) -> dict:
    """Adaptive campaign with a budget of `frac` of the grid; metrics on the unseen rows."""
    model_kw = model_kw or {}
    recs = pm.usable(breakdown=True)
    n = len(recs)
    budget = max(4, int(round(frac * n)))
    rng = np.random.default_rng(seed)
    chosen = _initial(recs, max(4, int(round(init_frac * n))), rng)
    left = budget - len(chosen)
    for r in range(rounds):
        k = int(np.ceil(left / (rounds - r))) if left > 0 else 0
        new = propose(pm, chosen, k, method=method, unshaped_bw=unshaped_bw, seed=seed + r)
        chosen = sorted(set(chosen) | set(new))
        left = budget - len(chosen)
    return {"method": method, "n_grid": n, "n_profiled": len(chosen),
            "held_out": _score_on_rest(pm, chosen, unshaped_bw, model_kw)}


def compare_random(pm: PerfMap, frac: float = 0.2, *, seeds=(0, 1, 2), unshaped_bw=None,
                   model_kw=None) -> dict:
    """Random picks of the same budget (averaged metrics over seeds); same seed set rule."""
    model_kw = model_kw or {}
    recs = pm.usable(breakdown=True)
    n = len(recs)
    budget = max(4, int(round(frac * n)))
    runs = []
    for s in seeds:
        rng = np.random.default_rng(1000 + s)
        chosen = _initial(recs, budget, rng)
        runs.append(_score_on_rest(pm, chosen, unshaped_bw, model_kw))
    keys = ("median_ape", "p90_ape", "within_10pct", "mape", "decision_accuracy")
    return {"method": "random", "n_grid": n, "n_profiled": budget, "seeds": list(seeds),
            "held_out": {k: (float(np.mean([r[k] for r in runs])) if runs[0].get(k) is not None else None)
                         for k in keys},
            "runs": runs}
