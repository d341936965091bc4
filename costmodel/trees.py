"""Gradient-boosted regression trees stored as plain JSON arrays and evaluated in numpy.

A fitted scikit-learn `GradientBoostingRegressor` (squared error) is exported as its
initial constant, learning rate and, per tree, the node arrays (children_left,
children_right, feature, threshold, leaf value). Loading needs neither pickle nor
scikit-learn; `predict` walks all trees level by level over the whole query at once.
Tests check that the JSON model reproduces scikit-learn's own predictions.
"""
from __future__ import annotations

import numpy as np


def export_gbr(gbr) -> dict:
    """JSON-able dict of a fitted sklearn GradientBoostingRegressor (loss squared_error)."""
    if getattr(gbr, "loss", "squared_error") not in ("squared_error", "ls"):
        raise ValueError(f"only squared-error boosting can be exported, got loss={gbr.loss!r}")
    init = float(np.ravel(gbr.init_.constant_)[0]) if gbr.init_ != "zero" else 0.0
    trees = []
    for est in gbr.estimators_[:, 0]:
        t = est.tree_
        trees.append({
            "left": t.children_left.astype(int).tolist(),
            "right": t.children_right.astype(int).tolist(),
            "feature": t.feature.astype(int).tolist(),
            "threshold": [float(x) for x in t.threshold],
            "value": [float(x) for x in t.value[:, 0, 0]],
        })
    return {"kind": "gbr", "init": init, "learning_rate": float(gbr.learning_rate),
            "n_features": int(gbr.n_features_in_), "trees": trees}


class JsonGBR:
    """numpy evaluator of an exported boosted-tree model."""

    def __init__(self, d: dict):
        if d.get("kind") != "gbr":
            raise ValueError(f"tree model kind={d.get('kind')!r}; expected 'gbr'")
        self.init = float(d["init"])
        self.lr = float(d["learning_rate"])
        self.n_features = int(d["n_features"])
        self.trees = []
        depth = 0
        for t in d["trees"]:
            arr = tuple(np.asarray(t[k]) for k in ("left", "right", "feature", "threshold", "value"))
            n = len(arr[0])
            if not all(len(a) == n for a in arr):
                raise ValueError("tree arrays of unequal length")
            left, right, feat = arr[0].astype(np.int64), arr[1].astype(np.int64), arr[2].astype(np.int64)
            inner = left >= 0
            if (left[inner] >= n).any() or (right[inner] >= n).any() or (feat[inner] >= self.n_features).any():
                raise ValueError("tree arrays point outside the tree")
            self.trees.append((left, right, feat, arr[3].astype(float), arr[4].astype(float)))
            depth = max(depth, _depth(left, right))
        self.depth = depth
        self._d = d

    def to_dict(self) -> dict:
        return self._d

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected X with {self.n_features} columns, got shape {X.shape}")
        out = np.full(X.shape[0], self.init)
        rows = np.arange(X.shape[0])
        for left, right, feat, thr, val in self.trees:
            node = np.zeros(X.shape[0], dtype=np.int64)
            for _ in range(self.depth):
                inner = left[node] >= 0
                if not inner.any():
                    break
                f = np.where(inner, feat[node], 0)
                go_left = X[rows, f] <= thr[node]
                node = np.where(inner, np.where(go_left, left[node], right[node]), node)
            out += self.lr * val[node]
        return out


def _depth(left, right) -> int:
    depth, frontier = 0, [0]
    while frontier:
        nxt = [c for i in frontier if left[i] >= 0 for c in (left[i], right[i])]
        if nxt:
            depth += 1
        frontier = nxt
    return depth
