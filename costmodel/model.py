"""The cost model: calibrated analytical physics plus a residual regression (the hybrid).

Latency of one batch on the terminal device (rank 0), in ms, is the sum of four phases,
each linear in non-negative, physically named parameters over features from the shared
formulas (formulas.py via features.py):

    compute = c_fixed + c_exchange * n_exchanges + GFLOPs / throughput
              + r_half / throughput * FLOPs-per-row      # small-kernel inefficiency:
                                                          # throughput(rows) = thr * rows / (rows + r_half)
    staging = s_exchange * n_exchanges + staged_MB / staging_bw
    comm    = l_message * n_messages + wire_bits / (bw * efficiency)
    other   = o_fixed + o_sample * batch                  # time no phase claims (total - phases)

Energy of the batch, in J, over all participating devices:

    energy  = sum_phase power_phase * t_phase + idle_power * world_size * total
              + energy_per_gflop * GFLOPs of all devices

n_exchanges counts collectives per pass, n_messages the latency-bearing message steps
(features.py): equal for single / voltage / prism, 2 (P-1) per all-reduce for
tensor_parallel's GLOO ring, tiles per collective for galaxy.

Fitting (`CostModel.fit`): each phase by robust (soft-L1) least squares on relative
residuals with every parameter >= 0, per strategy for the phases in `per_strategy`
(kernels and staging paths differ between strategies) and shared for the link (one link,
one efficiency, one latency per message step), tensor_parallel and galaxy included: their
collectives differ from the pairwise exchange in the number of message steps, which
n_messages carries. `tp_phases` can give tensor_parallel and galaxy their own parameters
in more phases (e.g. comm; the pooled fit of such a phase then leaves their rows out):
on the measured testbed that predicted held-out rows worse than the shared link
(docs/costmodel.md), so the default is none. Then one gradient-boosting model per phase
on the log ratio measured / analytical over physics features (FLOPs, bytes/bw, staged
bytes, exchanges, batch, seq_len, world_size); its weight (0..1) is chosen by K-fold
cross-validation, so the residual layer is only used where it helps on held-out rows.
Out-of-fold errors of the total give the prediction interval (split-conformal on log
ratios).

Galaxy's overlap layer (`overlap_`, for strategies whose Formula.overlaps_comm). Galaxy overlaps its transfers
with compute by tiles, so its comm_ms is only the wait compute did not hide. Its rows
are predicted by a layer of their own:

    comm    = max(0, l_message * n_messages + wire / efficiency
                     - overlap_share * min(wire, compute))

(the shared link; wire = comm_ms_nominal, compute = the analytical compute phase;
overlap_share >= 0 fitted robustly on galaxy's comm phase), then galaxy's own residual
models and weights on top (chosen on its out-of-fold rows). The base layers are fitted
exactly as without it (galaxy's rows included), so every other strategy predicts as
before, and a model fitted without galaxy rows has no layer.

Persistence: JSON only (`save`/`load`), schema_version 1; the boosted trees are stored
as their node arrays and evaluated by trees.JsonGBR (no pickle, no scikit-learn needed
to predict).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from .features import TP_OPTIONS, QueryError, physics, physics_one
from .formulas import FAMILY_SHAPES, KNOWN_SHAPES, ModelShape, named_shape, shape_extras, shape_from_entry
from .strategies import find_formula, get_formula, list_strategies, mode_label
from .perfmap import PerfMap, PerfMapError, atomic_write_text, load_perfmap, record_latency_ms
from .trees import JsonGBR, RowForest, export_gbr

MODEL_SCHEMA_VERSION = 1
MODEL_KIND = "prism-edge.costmodel"
PHASES = ("compute", "staging", "comm", "other")
BASIS = {
    "compute": ("c_fixed_ms", "c_exchange_ms", "ms_per_gflop", "ms_per_flops_per_row_e8"),
    "staging": ("s_exchange_ms", "ms_per_mb"),
    "comm": ("l_message_ms", "inv_efficiency"),      # per message step (n_messages)
    "other": ("o_fixed_ms", "o_sample_ms"),
}
ENERGY_BASIS = ("compute_w", "staging_w", "comm_w", "other_w", "idle_w_per_device", "j_per_gflop")
RESIDUAL_FEATURES = ("log_gflops", "log_comm_ms_nominal", "log_staged_mb", "n_exchanges",
                     "log_batch", "seq_len", "world_size", "log_analytical_ms")
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
AXES = ("batch", "bw", "cr", "seq_len", "world_size")


_PLAIN = (int, float)          # predict_one's plain numbers (numpy scalars too; not bool)


class ModelFileError(ValueError):
    """A cost-model file that cannot be loaded (corrupt, wrong version, wrong shape)."""


class OutOfRangeWarning(UserWarning):
    """A query outside the ranges the model was fitted on (an extrapolation)."""


# ----------------------------------------------------------------------------- helpers

def _basis(phase: str, f: dict) -> np.ndarray:
    n = f["batch"].shape[0]
    if phase == "compute":
        cols = [np.ones(n), f["n_exchanges"], f["flops"] / 1e9, f["flops_per_row"] / 1e8]
    elif phase == "staging":
        cols = [f["n_exchanges"], f["staged_bytes"] / 1e6]
    elif phase == "comm":
        cols = [f["n_messages"], np.nan_to_num(f["comm_ms_nominal"])]
    else:
        cols = [np.ones(n), f["batch"]]
    return np.stack(cols, axis=1)


def _hideable_ms(f: dict, compute_ms: np.ndarray) -> np.ndarray:
    """Wire time that compute can hide under galaxy's tile overlap: min(wire time at the
    nominal rate, analytical compute)."""
    return np.minimum(np.nan_to_num(f["comm_ms_nominal"]), np.maximum(compute_ms, 0.0))


def _exposed_comm(ana: dict, share: float, f: dict) -> np.ndarray:
    """Exposed comm of an overlapping strategy (galaxy): its analytical comm phase (the
    link's l_message * n_messages + wire / efficiency) minus `share` x the hideable wire
    time min(wire, analytical compute), >= 0."""
    return np.maximum(ana["comm"] - share * _hideable_ms(f, ana["compute"]), 0.0)


def _robust_nonneg(X: np.ndarray, y: np.ndarray, denom: np.ndarray, f_scale: float) -> np.ndarray:
    """argmin_theta>=0 of sum soft_l1(((X theta - y) / denom) / f_scale)."""
    from scipy.optimize import least_squares, nnls

    cs = np.abs(X).max(axis=0)
    keep = cs > 1e-6 * max(cs.max(), 1e-300)   # a column with no signal gets no parameter
    theta = np.zeros(X.shape[1])
    if not keep.any() or len(y) == 0:
        return theta
    A = X[:, keep] / cs[keep] / denom[:, None]
    b = y / denom
    t0, _ = nnls(A, b)
    res = least_squares(lambda t: A @ t - b, np.maximum(t0, 1e-9), bounds=(0.0, np.inf),
                        loss="soft_l1", f_scale=f_scale, method="trf")
    theta[keep] = res.x / cs[keep]
    return theta


def _ape(pred, y):
    pred, y = np.asarray(pred, float), np.asarray(y, float)
    ok = np.isfinite(pred) & np.isfinite(y) & (y > 0)
    return np.abs(pred[ok] / y[ok] - 1.0) * 100.0


def metrics(pred, y) -> dict:
    """median / P90 absolute percentage error (%), share within +-10 %, MAPE, n."""
    a = _ape(pred, y)
    if a.size == 0:
        return {"n": 0, "median_ape": None, "p90_ape": None, "within_10pct": None, "mape": None}
    return {"n": int(a.size), "median_ape": float(np.median(a)), "p90_ape": float(np.percentile(a, 90)),
            "within_10pct": float(np.mean(a <= 10.0)), "mape": float(np.mean(a))}


def _records_table(pm: PerfMap, recs: list, unshaped_bw: float | None) -> dict:
    """Physics features + measured targets of perf-map records (grouped by model)."""
    if not recs:
        raise PerfMapError("perf map has no usable rows (records with a latency, the three phase "
                           "times and no error/exclude)")
    order, parts = [], []
    by_model: dict = {}
    for i, r in enumerate(recs):
        by_model.setdefault(r["model"], []).append(i)
    for model, idx in by_model.items():
        rs = [recs[i] for i in idx]
        bws = []
        for r in rs:
            bw = r.get("bw")
            if bw is None and r["strategy"] != "single" and r["world_size"] > 1:
                if unshaped_bw is None:
                    raise PerfMapError(f"record {r['strategy']} batch={r['batch']} has bw null (unshaped "
                                       f"link); set unshaped_bw (Mbit/s) to the rate assumed for it")
                bw = unshaped_bw
            bws.append(np.nan if bw is None else float(bw))
        base = pm.shape(model, rs[0]["seq_len"])
        f = physics([r["strategy"] for r in rs], [r["batch"] for r in rs], bws,
                    [np.nan if r.get("cr") is None else r["cr"] for r in rs],
                    [r["seq_len"] for r in rs], [r["world_size"] for r in rs], base,
                    exchange=rs[0].get("exchange", "pairwise"),
                    m=[r.get("m") if r["strategy"] == "prism" else None for r in rs],
                    tp=[record_tp_options(r) for r in rs])
        parts.append(f)
        order += idx
    f = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "_shape"}
    inv = np.argsort(order)
    f = {k: v[inv] for k, v in f.items()}
    tot = np.array([record_latency_ms(r) for r in recs], dtype=float)
    ph = {p: np.array([r[f"{p}_ms"] if r.get(f"{p}_ms") is not None else np.nan for r in recs], float)
          for p in ("compute", "staging", "comm")}
    other = tot - ph["compute"] - ph["staging"] - ph["comm"]
    ph["other"] = np.where(other > 1e-6 * tot, other, 0.0)   # rounding of the sum is not time
    energy = np.array([np.nan if r.get("energy_j") is None else r["energy_j"] for r in recs], float)
    energy_est = np.array([np.nan if r.get("energy_est_j") is None else r["energy_est_j"] for r in recs], float)
    return {"f": f, "total": tot, "phases": ph, "energy": energy, "energy_est": energy_est,
            "model": np.array([r["model"] for r in recs], dtype=object)}


def record_tp_options(r: dict) -> dict | None:
    """tensor_parallel / galaxy options a perf-map record states (heads, cols,
    collective, tiles); None (the runtime defaults) when it states none."""
    if r["strategy"] not in list_strategies(splits_weights=True):
        return None
    o = {k: r[k] for k in TP_OPTIONS if r.get(k) is not None}
    return o or None


def _residual_X(f: dict, analytical_ms: np.ndarray) -> np.ndarray:
    return np.stack([
        np.log1p(f["flops"] / 1e9), np.log1p(np.nan_to_num(f["comm_ms_nominal"])),
        np.log1p(f["staged_bytes"] / 1e6), f["n_exchanges"], np.log(f["batch"]),
        f["seq_len"], f["world_size"], np.log1p(np.maximum(analytical_ms, 0.0)),
    ], axis=1)


def _fingerprint(recs: list) -> str:
    keys = ("strategy", "model", "seq_len", "world_size", "batch", "bw", "cr", "m",
            "compute_ms", "staging_ms", "comm_ms", "energy_j")
    rows = sorted(json.dumps([r.get(k) for k in keys] + [record_latency_ms(r)]) for r in recs)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- model

def _energy_target(T: dict):
    """The energy the model is fitted on: measured energy_j, or the labelled estimate
    energy_est_j when fewer than 3 rows have a measurement and >= 3 an estimate."""
    if np.isfinite(T["energy"]).sum() < 3 and np.isfinite(T["energy_est"]).sum() >= 3:
        return T["energy_est"], "energy_est_j"
    return T["energy"], "energy_j"


def _model_shapes(pm: PerfMap, recs: list) -> list:
    """Each model's shape, in the order the records first name it."""
    out, seen = [], set()
    for r in recs:
        if r["model"] not in seen:
            seen.add(r["model"])
            s = pm.shape(r["model"], r["seq_len"])
            out.append({"name": s.name, "seq_len": s.seq_len, "d": s.d, "heads": s.heads,
                        "d_ff": s.d_ff, "n_layers": s.n_layers,
                        "embed_flops": s.embed_flops, "head_flops": s.head_flops, **shape_extras(s)})
    return out


class CostModel:
    """Hybrid latency / energy model of single, Voltage and Prism inference.

    Settings (stored only; nothing is fitted in __init__):
      per_strategy: phases whose parameters are fitted per strategy (others shared).
      tp_phases: phases in which tensor_parallel and galaxy get their own parameters
        even where per_strategy shares them (the pooled fit of such a phase leaves
        their rows out). Default none: the link is shared (measured better held out).
      residual: fit the residual layer (False: calibrated analytical model alone).
      interval: coverage of the prediction interval (0..1), from out-of-fold errors.
      unshaped_bw: Mbit/s assumed for distributed records whose bw is null (an
        unthrottled link whose rate the source does not state).
      min_rows: fewest rows of a strategy to give it its own parameters.
      robust_scale: soft-L1 scale of the relative residual (0.05 = 5 %).
      cv_folds, random_state: the K-fold cross-validation behind the residual weight
        and the interval.
    """

    def __init__(self, *, per_strategy=("compute", "staging"), tp_phases=(), residual: bool = True,
                 interval: float = 0.8, unshaped_bw: float | None = None, min_rows: int = 4,
                 robust_scale: float = 0.05, cv_folds: int = 5, random_state: int = 0,
                 residual_estimators: int = 150):
        self.per_strategy = tuple(per_strategy)
        self.tp_phases = tuple(tp_phases)
        self.residual = residual
        self.interval = interval
        self.unshaped_bw = unshaped_bw
        self.min_rows = min_rows
        self.robust_scale = robust_scale
        self.cv_folds = cv_folds
        self.random_state = random_state
        self.residual_estimators = residual_estimators

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("per_strategy", "tp_phases", "residual", "interval", "unshaped_bw",
                                               "min_rows", "robust_scale", "cv_folds",
                                               "random_state", "residual_estimators")}

    def _check_settings(self):
        for name in ("per_strategy", "tp_phases"):
            bad = [p for p in getattr(self, name) if p not in PHASES]
            if bad:
                raise ValueError(f"{name}={list(getattr(self, name))}: unknown phase(s) {bad}; "
                                 f"phases: {list(PHASES)}")
        if not 0 < self.interval < 1:
            raise ValueError(f"interval={self.interval} must be in (0, 1)")
        if self.unshaped_bw is not None and not (self.unshaped_bw > 0):
            raise ValueError(f"unshaped_bw={self.unshaped_bw} must be a positive rate in Mbit/s")

    # ------------------------------------------------------------------ analytical layer
    def _fit_analytical(self, T: dict, idx: np.ndarray) -> dict:
        f = {k: v[idx] for k, v in T["f"].items()}
        total = T["total"][idx]
        strat = f["strategy"]
        params = {}
        for phase in PHASES:
            X = _basis(phase, f)
            y = T["phases"][phase][idx]
            ok = np.isfinite(y)
            if phase in ("staging", "comm"):
                ok &= f["n_exchanges"] > 0
            denom = np.maximum(np.abs(y), 0.02 * total)
            groups = {}
            own = set(list_strategies(splits_weights=True)) if phase in self.tp_phases else set()
            pooled = ok & ~np.isin(strat, list(own))
            if not pooled.any():       # a map of TP strategies only: pool them
                pooled = ok
            groups["*"] = _robust_nonneg(X[pooled], y[pooled], denom[pooled], self.robust_scale).tolist()
            if phase in self.per_strategy or own:
                for s in np.unique(strat[ok]):
                    m = ok & (strat == s)
                    if (phase in self.per_strategy or s in own) and m.sum() >= self.min_rows:
                        groups[str(s)] = _robust_nonneg(X[m], y[m], denom[m], self.robust_scale).tolist()
            params[phase] = groups
        return params

    @staticmethod
    def _predict_analytical(params: dict, f: dict) -> dict:
        out = {}
        strat = f["strategy"]
        for phase in PHASES:
            X = _basis(phase, f)
            groups = params[phase]
            theta = np.tile(np.asarray(groups["*"], float), (X.shape[0], 1))
            for g, th in groups.items():
                if g != "*":
                    theta[strat == g] = th
            out[phase] = np.einsum("ij,ij->i", X, theta)
        return out

    # ------------------------------------------------------------------ energy layer
    @staticmethod
    def _energy_X(f: dict, ph: dict) -> np.ndarray:
        tot = sum(ph[p] for p in PHASES)
        return np.stack([ph["compute"] / 1e3, ph["staging"] / 1e3, ph["comm"] / 1e3, ph["other"] / 1e3,
                         f["world_size"] * tot / 1e3, f["flops_all"] / 1e9], axis=1)

    def _fit_energy(self, T: dict, idx: np.ndarray, target: np.ndarray):
        m = idx[np.isfinite(target[idx])]
        if m.size < len(ENERGY_BASIS):   # fewer rows than powers: no calibration
            return None
        f = {k: v[m] for k, v in T["f"].items()}
        ph = {p: np.nan_to_num(T["phases"][p][m]) for p in PHASES}
        X = self._energy_X(f, ph)
        y = target[m]
        return _robust_nonneg(X, y, y, self.robust_scale).tolist()

    # ------------------------------------------------------------------ residual layer
    def _fit_residual(self, T: dict, idx: np.ndarray, ana: dict):
        from sklearn.ensemble import GradientBoostingRegressor

        out = {}
        f = {k: v[idx] for k, v in T["f"].items()}
        total = T["total"][idx]
        for phase in PHASES:
            y = T["phases"][phase][idx]
            a = ana[phase]
            ok = np.isfinite(y) & (y > 0) & (a > 0) & (y >= 0.02 * total)
            if not self.residual or ok.sum() < 8:
                out[phase] = None
                continue
            X = _residual_X({k: v[ok] for k, v in f.items()}, a[ok])
            r = np.log(y[ok] / a[ok])
            gbr = GradientBoostingRegressor(
                n_estimators=self.residual_estimators, learning_rate=0.05, max_depth=3,
                min_samples_leaf=max(2, int(ok.sum()) // 25), subsample=1.0,
                random_state=self.random_state)
            gbr.fit(X, r)
            out[phase] = JsonGBR(export_gbr(gbr))
        return out

    @staticmethod
    def _apply_residual(res: dict, lam: dict, f: dict, ana: dict) -> dict:
        out = {}
        for phase in PHASES:
            model = res.get(phase)
            a = ana[phase]
            if model is None or lam.get(phase, 0.0) == 0.0:
                out[phase] = a
                continue
            r = model.predict(_residual_X(f, a))
            out[phase] = np.where(a > 0, a * np.exp(lam[phase] * r), a)
        return out

    # ------------------------------------------------------------------ fit
    def fit(self, perfmap: "PerfMap | str | os.PathLike") -> "CostModel":
        """Fit on a perf map (a PerfMap or a path); returns self.

        The steps: the records' feature table; K-fold out-of-fold predictions of every
        layer (_out_of_fold); the residual weights chosen on them and the out-of-fold
        hybrid (_weigh_out_of_fold); the final layers on every row (_fit_layers); the
        interval and CV report from the out-of-fold errors (_fit_interval_and_cv); what
        the model was fitted on (_describe_training)."""
        self._check_settings()
        pm = perfmap if isinstance(perfmap, PerfMap) else load_perfmap(perfmap)
        recs = [r for r in pm.usable(breakdown=True) if r["strategy"] in list_strategies()]
        T = _records_table(pm, recs, self.unshaped_bw)
        energy_target, target_name = _energy_target(T)
        ov_rows = self._overlap_rows(T)
        oof = self._out_of_fold(T, energy_target, ov_rows)
        lam, lam_ov, oof_ph = self._weigh_out_of_fold(T, oof, ov_rows)
        self._fit_layers(T, energy_target, target_name, ov_rows, lam, lam_ov)
        self._fit_interval_and_cv(T, energy_target, oof, oof_ph, lam, lam_ov)
        self._describe_training(pm, recs, T, energy_target)
        return self

    def _overlap_rows(self, T: dict) -> dict:
        """{overlap strategy: its row indices}, for those with >= min_rows rows."""
        ov_rows = {s: np.flatnonzero(T["f"]["strategy"] == s) for s in list_strategies(overlaps_comm=True)}
        return {s: r for s, r in ov_rows.items() if r.size >= self.min_rows}

    def _out_of_fold(self, T: dict, energy_target: np.ndarray, ov_rows: dict) -> dict:
        """K-fold out-of-fold predictions: analytical phases (`ana`), residual log
        corrections (`res`), the overlap layers' pair of both (`ov`), energy powers
        (`pow`); `folds` is K."""
        n = T["total"].size
        all_idx = np.arange(n)
        k = max(2, min(self.cv_folds, n))
        rng = np.random.default_rng(self.random_state)
        fold = rng.permutation(np.arange(n) % k)
        oof = {"folds": k,
               "ana": {p: np.full(n, np.nan) for p in PHASES},
               "res": {p: np.zeros(n) for p in PHASES},
               "ov": {s: ({p: np.full(n, np.nan) for p in PHASES}, {p: np.zeros(n) for p in PHASES})
                      for s in ov_rows},
               "pow": np.full((n, len(ENERGY_BASIS)), np.nan)}
        for j in range(k):
            tr, te = all_idx[fold != j], all_idx[fold == j]
            if tr.size == 0 or te.size == 0:
                continue
            self._out_of_fold_one(T, energy_target, ov_rows, tr, te, oof)
        return oof

    def _out_of_fold_one(self, T, energy_target, ov_rows, tr, te, oof) -> None:
        """One fold: fit every layer on `tr`, write its predictions of `te` into oof."""
        prm = self._fit_analytical(T, tr)
        ftr = {kk: v[tr] for kk, v in T["f"].items()}
        fte = {kk: v[te] for kk, v in T["f"].items()}
        a_te = self._predict_analytical(prm, fte)
        res = self._fit_residual(T, tr, self._predict_analytical(prm, ftr))
        for p in PHASES:
            oof["ana"][p][te] = a_te[p]
            if res.get(p) is not None:
                oof["res"][p][te] = res[p].predict(_residual_X(fte, a_te[p]))
        for s, rows in ov_rows.items():
            s_tr, s_te = np.intersect1d(rows, tr), np.intersect1d(rows, te)
            if s_tr.size < self.min_rows or s_te.size == 0:
                continue
            layer = self._fit_overlap_layer(T, s_tr, prm, residual_weight=None)
            fs = {kk: v[s_te] for kk, v in T["f"].items()}
            a_s, r_s = self._overlap_phases(layer, prm, fs)
            for p in PHASES:
                oof["ov"][s][0][p][s_te], oof["ov"][s][1][p][s_te] = a_s[p], r_s[p]
        ep = self._fit_energy(T, tr, energy_target)
        if ep is not None:
            oof["pow"][te] = ep

    def _weigh_out_of_fold(self, T: dict, oof: dict, ov_rows: dict):
        """Residual weights (base layer on every row, each overlap layer on its rows) and
        the out-of-fold hybrid phases with them; the overlap layers' analytical phases
        replace their strategies' rows of oof['ana']. Returns (lam, lam_ov, oof_ph)."""
        oof_ana, oof_res = oof["ana"], oof["res"]
        lam = self._choose_lambda(T, oof_ana, oof_res, np.arange(T["total"].size))
        oof_ph = {p: np.where(oof_ana[p] > 0, oof_ana[p] * np.exp(lam[p] * oof_res[p]), oof_ana[p])
                  for p in PHASES}
        lam_ov = {}
        for s, rows in ov_rows.items():     # the overlap layer replaces its strategy's rows
            a_s, r_s = oof["ov"][s]
            lam_ov[s] = self._choose_lambda(T, a_s, r_s, rows)
            for p in PHASES:
                oof_ana[p][rows] = a_s[p][rows]
                oof_ph[p][rows] = np.where(a_s[p][rows] > 0, a_s[p][rows] * np.exp(lam_ov[s][p] * r_s[p][rows]),
                                           a_s[p][rows])
        return lam, lam_ov, oof_ph

    def _fit_layers(self, T, energy_target, target_name, ov_rows, lam, lam_ov) -> None:
        """The final fit of every layer on all rows."""
        all_idx = np.arange(T["total"].size)
        self.params_ = self._fit_analytical(T, all_idx)
        ana = self._predict_analytical(self.params_, T["f"])
        self.residual_ = self._fit_residual(T, all_idx, ana)
        self.residual_weight_ = lam
        self.overlap_ = {s: self._fit_overlap_layer(T, rows, self.params_, residual_weight=lam_ov[s])
                         for s, rows in ov_rows.items()}
        self.energy_params_ = self._fit_energy(T, all_idx, energy_target)
        self.energy_target_ = target_name if self.energy_params_ is not None else None

    def _fit_interval_and_cv(self, T, energy_target, oof, oof_ph, lam, lam_ov) -> None:
        """Split-conformal intervals and the cross-validation report, from the
        out-of-fold predictions."""
        oof_ana, oof_pow = oof["ana"], oof["pow"]
        oof_tot = sum(oof_ph[p] for p in PHASES)
        oof_ana_tot = sum(oof_ana[p] for p in PHASES)
        oof_E = np.einsum("ij,ij->i", self._energy_X(T["f"], oof_ph), np.nan_to_num(oof_pow))
        oof_E[~np.isfinite(oof_pow).all(axis=1)] = np.nan
        self.interval_ = {"level": self.interval,
                          "latency": self._conformal(np.log(T["total"] / oof_tot)),
                          "energy": self._conformal(np.log(energy_target / oof_E))}
        self.cv_ = {"folds": oof["folds"], "residual_weight": lam,
                    **({"overlap_residual_weight": lam_ov} if lam_ov else {}),
                    "hybrid": {"latency": metrics(oof_tot, T["total"]),
                               **{p: metrics(oof_ph[p], T["phases"][p]) for p in PHASES[:3]},
                               "energy": metrics(oof_E, energy_target)},
                    "analytical": {"latency": metrics(oof_ana_tot, T["total"]),
                                   **{p: metrics(oof_ana[p], T["phases"][p]) for p in PHASES[:3]}}}

    def _describe_training(self, pm: PerfMap, recs: list, T: dict, energy_target: np.ndarray) -> None:
        """What the model was fitted on: strategies, axis ranges, model shapes, the
        exchange kind, and the training summary (source, rows, fingerprint)."""
        f = T["f"]
        self.strategies_ = sorted({str(s) for s in f["strategy"]})
        self.ranges_ = {}
        for ax in AXES:
            v = f[ax][np.isfinite(f[ax])]
            self.ranges_[ax] = [float(v.min()), float(v.max())] if v.size else None
        self.models_ = _model_shapes(pm, recs)
        ex = [r.get("exchange", "pairwise") for r in recs]
        self.exchange_ = max(set(ex), key=ex.count)
        self.training_ = {"source": pm.source, "n_rows": len(recs), "fingerprint": _fingerprint(recs),
                          "unshaped_bw": self.unshaped_bw,
                          "n_energy_rows": int(np.isfinite(energy_target).sum())}

    def _choose_lambda(self, T: dict, oof_ana: dict, oof_res: dict, rows: np.ndarray) -> dict:
        """Residual weight per phase: the one of LAMBDAS with the least mean |log error| of
        the out-of-fold predictions on `rows` (0 where the residual layer is off or silent)."""
        lam = {}
        for p in PHASES:
            y, a, r = T["phases"][p][rows], oof_ana[p][rows], oof_res[p][rows]
            ok = np.isfinite(y) & (y > 0) & (a > 0)
            if not self.residual or not ok.any() or not np.any(r[ok]):
                lam[p] = 0.0
                continue
            errs = [np.mean(np.abs(np.log(a[ok] * np.exp(l * r[ok]) / y[ok]))) for l in LAMBDAS]
            lam[p] = float(LAMBDAS[int(np.argmin(errs))])
        return lam

    # ------------------------------------------------------------------ overlap layer (galaxy)
    def _fit_overlap_layer(self, T: dict, rows: np.ndarray, params: dict, *, residual_weight) -> dict:
        """Galaxy's overlap layer on its `rows`: exposed comm = l_message * n_messages +
        wire / efficiency (the link of `params`) - overlap_share * min(wire, compute)
        (compute: the analytical one of `params`), overlap_share >= 0 fitted robustly on
        the measured comm phase; then its own residual models on the phases with that comm.
        The base layers (params, residual_) still hold these rows as before, so every other
        strategy is predicted as without the layer."""
        f = {k: v[rows] for k, v in T["f"].items()}
        ana = self._predict_analytical(params, f)
        y = T["phases"]["comm"][rows]
        ok = np.isfinite(y) & (f["n_exchanges"] > 0)
        denom = np.maximum(np.abs(y), 0.02 * T["total"][rows])
        hid = _hideable_ms(f, ana["compute"])
        share = float(_robust_nonneg(-hid[ok][:, None], y[ok] - ana["comm"][ok], denom[ok], self.robust_scale)[0])
        layer = {"overlap_share": share, "residual_weight": residual_weight}
        ana["comm"] = _exposed_comm(ana, share, f)
        layer["residual"] = self._fit_residual({"f": f, "total": T["total"][rows],
                                                "phases": {p: T["phases"][p][rows] for p in PHASES}},
                                               np.arange(rows.size), ana)
        return layer

    def _overlap_phases(self, layer: dict, params: dict, f: dict):
        """Analytical phases and residual log-corrections of the overlap layer's rows."""
        ana = self._predict_analytical(params, f)
        ana["comm"] = _exposed_comm(ana, layer["overlap_share"], f)
        res = {p: (m.predict(_residual_X(f, ana[p])) if m is not None else np.zeros(len(ana[p])))
               for p, m in layer["residual"].items()}
        return ana, res

    def _conformal(self, logr: np.ndarray) -> list | None:
        logr = logr[np.isfinite(logr)]
        if logr.size < 3:
            return None
        n = logr.size
        a = (1.0 - self.interval) / 2.0
        lo_q = max(0.0, math.floor(a * (n + 1)) / n - 1e-9)
        hi_q = min(1.0, math.ceil((1 - a) * (n + 1)) / n)
        lo = float(np.quantile(logr, lo_q, method="lower")) if lo_q > 0 else float(logr.min())
        hi = float(np.quantile(logr, hi_q, method="higher"))
        return [min(lo, 0.0), max(hi, 0.0)]

    # ------------------------------------------------------------------ predict
    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise RuntimeError("CostModel is not fitted; call fit(perfmap) or CostModel.load(path)")

    def _shape(self, model: str | None) -> ModelShape:
        names = [m["name"] for m in self.models_]
        if model is None:
            m = self.models_[0]
        elif model in names:
            m = self.models_[names.index(model)]
        else:   # a named model of any family: its FLOPs and bytes on the fitted rates
            try:
                return named_shape(model)
            except ValueError:
                raise QueryError(f"unknown model {model!r}; this cost model knows {names} and the "
                                 f"named shapes {sorted(KNOWN_SHAPES) + sorted(FAMILY_SHAPES)}") from None
        return shape_from_entry(m)

    def query_shape(self, model: str | None = None, seq_len: int | None = None) -> ModelShape:
        """The ModelShape a query is answered for: the fitted model `model` (default: the
        first), at `seq_len` tokens when given (costmodel.features.shape_at)."""
        from .features import shape_at

        shape = self._shape(model)
        return shape if seq_len is None else shape_at(shape, int(seq_len))

    def _warn_range(self, f: dict):
        notes = []
        for ax in AXES:
            rng = self.ranges_.get(ax)
            v = f[ax]
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            if rng is None:
                notes.append(f"{ax} (not varied in the fit)")
                continue
            lo, hi = rng
            tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
            out = (v < lo - tol) | (v > hi + tol)
            if out.any():
                bad = v[out]
                notes.append(f"{ax}={bad[0]:g} outside fitted [{lo:g}, {hi:g}]"
                             + (f" ({out.sum()} of {v.size})" if v.size > 1 else ""))
        unseen = sorted({str(s) for s in f["strategy"]} - set(self.strategies_))
        if unseen:
            notes.append(f"strategy {unseen} not in the fitted perf map (pooled parameters)")
        if notes:
            warnings.warn("cost model extrapolates: " + "; ".join(notes), OutOfRangeWarning, stacklevel=3)

    def check_strategies(self, strategies) -> None:
        """Raise QueryError (one line) for a strategy this model cannot predict: one the
        cost model does not know, or a weight-splitting one (tensor_parallel, galaxy) when
        the fit held none of its rows (the pairwise link parameters do not describe its
        collectives). Row-split strategies share the link and compute parameters, so one
        absent from the fit is predicted from them (active sampling relies on it)."""
        self._check_fitted()
        for s in sorted({str(x) for x in np.asarray(strategies, dtype=object).ravel()}):
            if s not in list_strategies():
                raise QueryError(f"unknown strategy {s!r}; known: {list_strategies()}")
            if get_formula(s).splits_weights and s not in self.strategies_:
                raise QueryError(f"strategy {s!r} is not in this cost model (fitted on "
                                 f"{self.strategies_}); fit it on a perf map with {s} rows")

    def predict(self, batch, bw=None, cr=None, *, strategy="prism", seq_len=None, world_size=2,
                model: str | None = None, warn: bool = True, tp: dict | None = None) -> dict:
        """Predict latency and energy; every argument broadcasts (numpy rules).

        batch: samples per batch (integer >= 1); bw: nominal link rate in Mbit/s (ignored
        for single); cr: Prism compression rate L_p/m (ignored for single and voltage);
        strategy: 'single', 'voltage', 'prism', 'tensor_parallel' or 'galaxy' (the last
        two only when the fit held their rows); seq_len: tokens N (default: the model's);
        world_size: devices P (forced to 1 for single); tp: options of tensor_parallel /
        galaxy rows (heads, cols, collective, tiles; default the runtime's: even splits,
        the native ring all-reduce, tiles 1).
        Returns float arrays of the broadcast shape: latency_ms (batch latency, ms), its
        interval latency_lo_ms / latency_hi_ms, per_sample_ms, the phases compute_ms,
        staging_ms, comm_ms, other_ms (ms), analytical_ms (the physics alone, ms),
        energy_j with energy_lo_j / energy_hi_j (J per batch, NaN if the model has no
        energy calibration).
        """
        self._check_fitted()
        shape = self._shape(model)
        strategy_a = np.asarray(strategy, dtype=object)
        self.check_strategies(strategy_a)
        f = physics(strategy_a, batch, np.nan if bw is None else bw, np.nan if cr is None else cr,
                    shape.seq_len if seq_len is None else seq_len, world_size, shape,
                    exchange=self.exchange_, tp=tp or None)
        out_shape = f.pop("_shape")
        if warn:
            self._warn_range(f)
        ana = self._predict_analytical(self.params_, f)
        ph = self._apply_residual(self.residual_, self.residual_weight_, f, ana)
        for s, layer in self.overlap_.items():     # galaxy: its overlap layer
            rows = np.flatnonzero(f["strategy"] == s)
            if rows.size:
                fs = {k: v[rows] for k, v in f.items()}
                a_s = self._predict_analytical(self.params_, fs)
                a_s["comm"] = _exposed_comm(a_s, layer["overlap_share"], fs)
                p_s = self._apply_residual(layer["residual"], layer["residual_weight"], fs, a_s)
                ana, ph = dict(ana), dict(ph)
                for p in PHASES:
                    ana[p] = ana[p].copy(); ana[p][rows] = a_s[p]
                    ph[p] = ph[p].copy(); ph[p][rows] = p_s[p]
        total = sum(ph[p] for p in PHASES)
        res = {"latency_ms": total, "analytical_ms": sum(ana[p] for p in PHASES),
               **{f"{p}_ms": ph[p] for p in PHASES}}
        iv = self.interval_.get("latency")
        lo, hi = (iv if iv is not None else (0.0, 0.0))
        res["latency_lo_ms"] = total * math.exp(lo)
        res["latency_hi_ms"] = total * math.exp(hi)
        res["per_sample_ms"] = total / f["batch"]
        if self.energy_params_ is not None:
            E = self._energy_X(f, ph) @ np.asarray(self.energy_params_, float)
            ie = self.interval_.get("energy") or (0.0, 0.0)
            res.update(energy_j=E, energy_lo_j=E * math.exp(ie[0]), energy_hi_j=E * math.exp(ie[1]))
        else:
            nan = np.full_like(total, np.nan)
            res.update(energy_j=nan, energy_lo_j=nan, energy_hi_j=nan)
        return {k: np.asarray(v, float).reshape(out_shape) for k, v in res.items()}

    # ------------------------------------------------------------------ predict, one configuration
    def predict_one(self, batch, bw=None, cr=None, *, strategy="prism", seq_len=None, world_size=2,
                    model: str | None = None, warn: bool = True, stacklevel: int = 3) -> dict | None:
        """predict() of one configuration (plain numbers, the default tp options) without
        numpy broadcasting: the same keys, Python floats for 0-d arrays. The same
        operations on the same float64 numbers: physics_one for the features, the
        fitted parameter vectors dotted with the basis row, the residual trees by
        trees.RowForest (the leaves _walk reaches), numpy's own log / log1p / exp.
        Returns None where predict() must answer instead: an argument that is not a plain
        number or None, or anything predict() refuses (which it then raises, in its words).
        Warnings as predict()'s, pointing at the caller (`stacklevel` 3, as predict()'s)."""
        self._check_fitted()
        for v in (batch, bw, cr, seq_len, world_size):
            if v is not None and type(v) not in _PLAIN and not (
                    isinstance(v, (np.integer, np.floating)) and not isinstance(v, np.bool_)):
                return None
        if not isinstance(strategy, str) or not (model is None or isinstance(model, str)):
            return None
        c = self._fast_state()
        shape = self._fast_shape(model, c)
        form = find_formula(strategy)
        if form is None or (form.splits_weights and strategy not in self.strategies_):
            return None                        # check_strategies' refusal
        nan = math.nan
        f = physics_one(strategy, nan if batch is None else float(batch), nan if bw is None else float(bw),
                        nan if cr is None else float(cr),
                        float(shape.seq_len if seq_len is None else seq_len),
                        nan if world_size is None else float(world_size), shape, self.exchange_)
        if f is None or not math.isfinite(f["comm_ms_nominal"]):
            return None
        if warn:
            self._warn_one(f, stacklevel)
        entry = c["strategies"].get(strategy)
        if entry is None:
            entry = c["strategies"][strategy] = self._fast_entry(c, strategy)
        (tc, ts, tl, to), share, used, rf, lam = entry
        n_ex, fl, cmn, st, b = f["n_exchanges"], f["flops"], f["comm_ms_nominal"], f["staged_bytes"], f["batch"]
        ana = {"compute": tc[0] + n_ex * tc[1] + fl / 1e9 * tc[2] + f["flops_per_row"] / 1e8 * tc[3],
               "staging": n_ex * ts[0] + st / 1e6 * ts[1],
               "comm": f["n_messages"] * tl[0] + cmn * tl[1],
               "other": to[0] + b * to[1]}
        if share is not None:                  # galaxy: the overlap layer's exposed comm
            ana["comm"] = max(ana["comm"] - share * min(cmn, max(ana["compute"], 0.0)), 0.0)
        ph = dict(ana)
        on = [p for p in used if lam.get(p, 0.0) != 0.0]
        if on:
            lg = np.log1p(np.array([fl / 1e9, cmn, st / 1e6] + [max(ana[p], 0.0) for p in PHASES])).tolist()
            r = dict(zip(used, rf.predict([*lg[:3], n_ex, float(np.log(b)), f["seq_len"], f["world_size"],
                                           *lg[3:]])))
            e = np.exp(np.array([lam[p] * r[p] for p in on])).tolist()
            for p, ep in zip(on, e):
                if ana[p] > 0:
                    ph[p] = ana[p] * ep
        total = sum(ph[p] for p in PHASES)
        out = {"latency_ms": total, "analytical_ms": sum(ana[p] for p in PHASES),
               **{f"{p}_ms": ph[p] for p in PHASES}}
        iv = self.interval_.get("latency")
        lo, hi = (iv if iv is not None else (0.0, 0.0))
        out["latency_lo_ms"] = total * math.exp(lo)
        out["latency_hi_ms"] = total * math.exp(hi)
        out["per_sample_ms"] = total / f["batch"]
        if self.energy_params_ is not None:
            X = (ph["compute"] / 1e3, ph["staging"] / 1e3, ph["comm"] / 1e3, ph["other"] / 1e3,
                 f["world_size"] * total / 1e3, f["flops_all"] / 1e9)
            E = sum(x * t for x, t in zip(X, self.energy_params_))
            ie = self.interval_.get("energy") or (0.0, 0.0)
            out.update(energy_j=E, energy_lo_j=E * math.exp(ie[0]), energy_hi_j=E * math.exp(ie[1]))
        else:
            out.update(energy_j=nan, energy_lo_j=nan, energy_hi_j=nan)
        return out

    def _fast_state(self) -> dict:
        """What predict_one reads from the fitted layers, prepared once per fit / load:
        parameter vectors as tuples, model shapes, RowForests (built on first use).
        Rebuilt whenever fit() or from_dict() replaced a fitted attribute."""
        src = (self.params_, self.residual_, self.residual_weight_, self.overlap_, self.models_)
        c = getattr(self, "_fast", None)
        if c is None or any(a is not b for a, b in zip(c["src"], src)):
            c = {"src": src, "shapes": {}, "forest": {}, "strategies": {},
                 "theta": {p: {g: tuple(float(x) for x in th) for g, th in self.params_[p].items()}
                           for p in PHASES}}
            self._fast = c
        return c

    def _fast_shape(self, model: str | None, c: dict | None = None):
        """_shape(model), built once per fit / load (ModelShape is frozen)."""
        c = self._fast_state() if c is None else c
        shape = c["shapes"].get(model)
        if shape is None:
            shape = c["shapes"][model] = self._shape(model)
        return shape

    def _fast_entry(self, c: dict, strategy: str) -> tuple:
        """predict_one's view of one strategy: its parameter vector per phase (its own
        group or the pooled '*'), galaxy's overlap share (None without a layer), the
        residual phases with a model, their RowForest and the residual weights."""
        th = tuple(c["theta"][p].get(strategy, c["theta"][p]["*"]) for p in PHASES)
        layer = self.overlap_.get(strategy)
        res, lam = ((layer["residual"], layer["residual_weight"]) if layer is not None
                    else (self.residual_, self.residual_weight_))
        key = strategy if layer is not None else None
        if key not in c["forest"]:                 # the base layer's forest serves every strategy
            used = [p for p in PHASES if res.get(p) is not None]
            c["forest"][key] = (used, RowForest([res[p] for p in used],
                                                [(0, 1, 2, 3, 4, 5, 6, 7 + PHASES.index(p)) for p in used]))
        used, rf = c["forest"][key]
        return th, (None if layer is None else layer["overlap_share"]), used, rf, lam

    def _warn_one(self, f: dict, stacklevel: int):
        """_warn_range for one configuration (the same notes)."""
        notes = []
        for ax in AXES:
            v = f[ax]
            if not math.isfinite(v):
                continue
            rng = self.ranges_.get(ax)
            if rng is None:
                notes.append(f"{ax} (not varied in the fit)")
                continue
            lo, hi = rng
            tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
            if v < lo - tol or v > hi + tol:
                notes.append(f"{ax}={v:g} outside fitted [{lo:g}, {hi:g}]")
        if f["strategy"] not in self.strategies_:
            notes.append(f"strategy {[f['strategy']]} not in the fitted perf map (pooled parameters)")
        if notes:
            warnings.warn("cost model extrapolates: " + "; ".join(notes), OutOfRangeWarning,
                          stacklevel=stacklevel)

    def predict_table(self, batches, bws, candidates=(("single", None), ("voltage", None), ("prism", 9.9)),
                      *, seq_len=None, world_size=2, model=None, warn: bool = True) -> dict:
        """Latency and energy of every candidate over a batch x bw grid (for the decision hook).

        candidates: (strategy, cr) pairs (cr None except for prism).
        Returns latency_ms / energy_j / latency_lo_ms / latency_hi_ms arrays of shape
        (len(candidates), len(batches), len(bws)), the labels, and best_latency /
        best_energy: the index of the cheapest candidate per (batch, bw).
        """
        b = np.asarray(batches, float)[:, None]
        w = np.asarray(bws, float)[None, :]
        keys = ("latency_ms", "latency_lo_ms", "latency_hi_ms", "energy_j", "per_sample_ms")
        acc = {k: [] for k in keys}
        labels = []
        for s, c in candidates:
            p = self.predict(b, w, c, strategy=s, seq_len=seq_len, world_size=world_size,
                             model=model, warn=warn)
            for k in keys:
                acc[k].append(p[k])
            labels.append(mode_label(s, c))
        out = {k: np.stack(v) for k, v in acc.items()}
        out.update(labels=labels, batch=np.asarray(batches, float), bw=np.asarray(bws, float),
                   best_latency=np.argmin(out["latency_ms"], axis=0))
        E = out["energy_j"]
        out["best_energy"] = (np.argmin(np.where(np.isfinite(E), E, np.inf), axis=0)
                              if np.isfinite(E).any() else None)
        return out

    # ------------------------------------------------------------------ score
    def score(self, perfmap) -> dict:
        """Accuracy on a perf map (held-out if it was not the training map): median / P90
        APE (%), share within +-10 % and MAPE for latency, each phase and energy."""
        self._check_fitted()
        pm = perfmap if isinstance(perfmap, PerfMap) else load_perfmap(perfmap)
        recs = [r for r in pm.usable(breakdown=True) if r["strategy"] in list_strategies()]
        T = _records_table(pm, recs, self.unshaped_bw if self.unshaped_bw else self.training_.get("unshaped_bw"))
        P = {k: np.full(len(recs), np.nan)
             for k in ("latency_ms", "compute_ms", "staging_ms", "comm_ms", "energy_j")}
        for name in np.unique(T["model"]):
            m = T["model"] == name
            f = {k: v[m] for k, v in T["f"].items()}
            p = self.predict(f["batch"], f["bw"], f["cr"], strategy=f["strategy"],
                             seq_len=f["seq_len"], world_size=f["world_size"], model=name, warn=False)
            for k in P:
                P[k][m] = p[k]
        out = {"n_rows": len(recs), "in_sample": _fingerprint(recs) == self.training_["fingerprint"],
               "latency": metrics(P["latency_ms"], T["total"]),
               **{p: metrics(P[f"{p}_ms"], T["phases"][p]) for p in ("compute", "staging", "comm")},
               "energy": metrics(P["energy_j"], T["energy"])}
        return out

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        self._check_fitted()
        return {
            "schema_version": MODEL_SCHEMA_VERSION, "kind": MODEL_KIND,
            "settings": {**self.get_params(), "per_strategy": list(self.per_strategy)},
            "units": {"latency_ms": "ms", "bw": "Mbit/s", "energy_j": "J"},
            "basis": {p: list(BASIS[p]) for p in PHASES}, "energy_basis": list(ENERGY_BASIS),
            "residual_features": list(RESIDUAL_FEATURES),
            "params_": self.params_,
            "residual_": {p: (m.to_dict() if m is not None else None) for p, m in self.residual_.items()},
            "residual_weight_": self.residual_weight_,
            "overlap_": {s: {"overlap_share": L["overlap_share"], "residual_weight": L["residual_weight"],
                             "residual": {p: (m.to_dict() if m is not None else None) for p, m in L["residual"].items()}}
                         for s, L in self.overlap_.items()},
            "energy_params_": self.energy_params_, "energy_target_": self.energy_target_,
            "interval_": self.interval_, "cv_": self.cv_, "strategies_": self.strategies_,
            "ranges_": self.ranges_, "models_": self.models_, "exchange_": self.exchange_,
            "training_": self.training_,
            "physical": self.physical_parameters(),
        }

    def save(self, path, *, profile: dict | None = None) -> Path:
        """Write the fitted model as JSON (atomic); `profile` adds a description block."""
        d = self.to_dict()
        if profile is not None:
            d["profile"] = profile
        atomic_write_text(path, json.dumps(d, indent=1, allow_nan=False) + "\n")
        return Path(path)

    @classmethod
    def from_dict(cls, d: dict, *, origin: str = "model") -> "CostModel":
        def bad(msg):
            return ModelFileError(f"{origin}: {msg}")

        if not isinstance(d, dict):
            raise bad("not a JSON object")
        if d.get("kind") != MODEL_KIND:
            raise bad(f"kind={d.get('kind')!r}; expected {MODEL_KIND!r}")
        if d.get("schema_version") != MODEL_SCHEMA_VERSION:
            raise bad(f"schema_version={d.get('schema_version')!r} is not supported; this reader "
                      f"handles {MODEL_SCHEMA_VERSION}")
        try:
            s = d["settings"]
            self = cls(**{k: (tuple(v) if k == "per_strategy" else v) for k, v in s.items()})
            params = d["params_"]
            for p in PHASES:
                groups = params[p]
                if "*" not in groups:
                    raise ValueError(f"params_.{p} has no pooled ('*') parameters")
                for g, th in groups.items():
                    th = np.asarray(th, float)
                    if th.shape != (len(BASIS[p]),) or not np.isfinite(th).all() or (th < 0).any():
                        raise ValueError(f"params_.{p}.{g} must be {len(BASIS[p])} finite numbers >= 0")
            self.params_ = {p: {g: list(map(float, th)) for g, th in params[p].items()} for p in PHASES}
            self.residual_ = {p: (JsonGBR(d["residual_"][p]) if d["residual_"].get(p) else None)
                              for p in PHASES}
            for p, m in self.residual_.items():
                if m is not None and m.n_features != len(RESIDUAL_FEATURES):
                    raise ValueError(f"residual_.{p} has {m.n_features} features, expected {len(RESIDUAL_FEATURES)}")
            self.residual_weight_ = {p: float(d["residual_weight_"][p]) for p in PHASES}
            self.overlap_ = {}                    # absent in files written before galaxy's overlap layer
            for s, L in (d.get("overlap_") or {}).items():
                if s not in list_strategies(overlaps_comm=True):
                    raise ValueError(f"overlap_.{s}: overlap layers exist for "
                                     f"{list_strategies(overlaps_comm=True)} only")
                share = float(L["overlap_share"])
                if not math.isfinite(share) or share < 0:
                    raise ValueError(f"overlap_.{s}.overlap_share must be a finite number >= 0")
                res = {p: (JsonGBR(L["residual"][p]) if L["residual"].get(p) else None) for p in PHASES}
                if any(m is not None and m.n_features != len(RESIDUAL_FEATURES) for m in res.values()):
                    raise ValueError(f"overlap_.{s}.residual must have {len(RESIDUAL_FEATURES)} features")
                self.overlap_[s] = {"overlap_share": share, "residual": res,
                                    "residual_weight": {p: float(L["residual_weight"][p]) for p in PHASES}}
            ep = d["energy_params_"]
            if ep is not None and (len(ep) != len(ENERGY_BASIS) or any((not math.isfinite(x)) or x < 0 for x in ep)):
                raise ValueError(f"energy_params_ must be {len(ENERGY_BASIS)} finite numbers >= 0")
            self.energy_params_ = None if ep is None else [float(x) for x in ep]
            self.energy_target_ = d["energy_target_"]
            self.interval_ = d["interval_"]
            self.cv_ = d["cv_"]
            self.strategies_ = list(d["strategies_"])
            self.ranges_ = d["ranges_"]
            self.models_ = list(d["models_"])
            if not self.models_:
                raise ValueError("models_ is empty")
            for m in self.models_:
                ModelShape(**{k: m[k] for k in ("name", "seq_len", "d", "heads", "d_ff", "n_layers")})
            self.exchange_ = d["exchange_"]
            self.training_ = d["training_"]
            self.profile_ = d.get("profile")
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise bad(f"corrupt cost-model file ({what})") from None
        return self

    @classmethod
    def load(cls, path) -> "CostModel":
        """Load a model written by `save` (JSON; raises ModelFileError with one line)."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except OSError as e:
            raise ModelFileError(f"cannot read cost model {p}: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelFileError(f"{p}: corrupt cost-model file (not valid JSON: {e})") from None
        return cls.from_dict(d, origin=str(p))

    # ------------------------------------------------------------------ report
    def physical_parameters(self) -> dict:
        """The fitted parameters in physical units, per strategy group ('*' = pooled)."""
        self._check_fitted()
        out = {}
        for g, th in self.params_["compute"].items():
            c0, cex, kf, kr = th
            out.setdefault("compute", {})[g] = {
                "fixed_ms": c0, "per_exchange_ms": cex,
                "throughput_gflops": (1e3 / kf) if kf > 0 else None,
                "r_half_rows": (10.0 * kr / kf) if kf > 0 else None}
        for g, (sex, kmb) in self.params_["staging"].items():
            out.setdefault("staging", {})[g] = {"per_exchange_ms": sex,
                                                "staging_mb_per_s": (1e3 / kmb) if kmb > 0 else None}
        for g, (lex, inv) in self.params_["comm"].items():
            out.setdefault("comm", {})[g] = {"per_message_ms": lex,
                                             "link_efficiency": (1.0 / inv) if inv > 0 else None}
        for g, (o0, o1) in self.params_["other"].items():
            out.setdefault("other", {})[g] = {"fixed_ms": o0, "per_sample_ms": o1}
        for s, L in self.overlap_.items():
            out.setdefault("overlap", {})[s] = {"overlap_share": L["overlap_share"]}
        if self.energy_params_ is not None:
            out["energy"] = dict(zip(ENERGY_BASIS, self.energy_params_))
        return out
