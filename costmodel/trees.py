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

    def _stack(self):
        """All trees as padded (n_trees, max_nodes) arrays, so one pass walks every tree."""
        if getattr(self, "_stacked", None) is None:
            t = len(self.trees)
            width = max(len(tr[0]) for tr in self.trees) if t else 1
            L = np.full((t, width), -1, np.int64)
            R = np.full((t, width), -1, np.int64)
            F = np.zeros((t, width), np.int64)
            TH = np.zeros((t, width))
            V = np.zeros((t, width))
            for i, (left, right, feat, thr, val) in enumerate(self.trees):
                n = len(left)
                L[i, :n], R[i, :n], TH[i, :n], V[i, :n] = left, right, thr, val
                F[i, :n] = np.where(left >= 0, feat, 0)
            self._stacked = (L, R, F, TH, V)
        return self._stacked

    def predict(self, X) -> np.ndarray:
        """Sum of the trees. Rows that fall in the same cell of every split threshold get
        the same value, so only one row per occupied cell is walked (exact)."""
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected X with {self.n_features} columns, got shape {X.shape}")
        if X.shape[0] < 64 or not self.trees:
            return self._walk(X)
        L, R, F, TH, V = self._stack()
        inner = L >= 0
        codes = np.empty(X.shape, dtype=np.int64)
        radix = []
        for f in range(X.shape[1]):
            thr = np.unique(TH[inner & (F == f)])
            codes[:, f] = np.searchsorted(thr, X[:, f], side="left") if thr.size else 0
            radix.append(thr.size + 1)
        if float(np.prod(np.asarray(radix, float))) < 2 ** 62:
            key = np.zeros(X.shape[0], np.int64)
            for f, r in enumerate(radix):
                key = key * r + codes[:, f]
            _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        else:
            _, first, inv = np.unique(codes, axis=0, return_index=True, return_inverse=True)
        return self._walk(X[first])[inv.ravel()]

    def _walk(self, X, *, chunk: int = 16384) -> np.ndarray:
        out = np.full(X.shape[0], self.init)
        if not self.trees:
            return out
        L, R, F, TH, V = self._stack()
        n_trees, width = L.shape
        # flat arrays + np.take: much cheaper than 2-D fancy indexing
        Lf, Rf, Ff, THf, Vf = (a.ravel() for a in (L, R, F, TH, V))
        base = (np.arange(n_trees, dtype=np.int64) * width)[None, :]
        nf = X.shape[1]
        for a in range(0, X.shape[0], chunk):
            x = np.ascontiguousarray(X[a:a + chunk]).ravel()
            m = x.size // nf
            xrow = (np.arange(m, dtype=np.int64) * nf)[:, None]
            node = np.broadcast_to(base, (m, n_trees)).copy()      # global node index
            for _ in range(self.depth):
                left = np.take(Lf, node)
                inner = left >= 0
                go_left = np.take(x, xrow + np.take(Ff, node)) <= np.take(THf, node)
                child = np.where(go_left, left, np.take(Rf, node)) + base
                node = np.where(inner, child, node)
            out[a:a + chunk] += self.lr * np.take(Vf, node).sum(axis=1)
        return out


def _depth(left, right) -> int:
    depth, frontier = 0, [0]
    while frontier:
        nxt = [c for i in frontier if left[i] >= 0 for c in (left[i], right[i])]
        if nxt:
            depth += 1
        frontier = nxt
    return depth


# ----------------------------------------------------------------------------- one row

ROW_DEPTH = 3          # trees up to this depth get a lookup table (2**(2**3 - 1) = 128 leaves codes)


class RowForest:
    """Several boosted models evaluated on one row at once (the scalar fast path).

    models: JsonGBR models; columns[i]: for model i, the index into the shared row of each
    of its features (so models that share features read one row). Every tree of depth <=
    ROW_DEPTH is flattened once into its 7 split slots in heap order (feature, threshold;
    slots under a leaf are dummies; an 8th always-false slot pads it to one byte) and a
    128-entry table: the leaf value for each pattern of the 7 comparisons
    x[feature] <= threshold. One row then costs a few numpy calls
    over all trees together: gather, compare, pack the bits, look the leaves up, sum per
    model. The leaf a row reaches is the one JsonGBR._walk reaches (the same comparisons),
    and each model's sum is init + lr * sum(leaf values in tree order), as _walk's.
    A model with a deeper tree is walked by JsonGBR._walk on the one row."""

    def __init__(self, models, columns):
        slots = 2 ** ROW_DEPTH - 1
        feats, thrs, luts, self._spans, self._deep = [], [], [], [], []
        n = 0
        for model, cols in zip(models, columns):
            cols = [int(c) for c in cols]
            if model.depth > ROW_DEPTH:
                self._spans.append(None)
                self._deep.append((model, cols))
                continue
            for left, right, feat, thr, val in model.trees:
                f = [0] * (slots + 1)             # + a dummy 8th slot (x <= -inf: bit 0), so
                t = [0.0] * slots + [-np.inf]     # each tree's bits pack into one byte
                for pos, node in _heap_nodes(left, right):
                    f[pos] = cols[int(feat[node])]
                    t[pos] = float(thr[node])
                feats += f
                thrs += t
                luts += [float(val[_leaf_of(left, right, code)]) for code in range(2 ** slots)]
            self._spans.append((n, n + len(model.trees), model.init, model.lr))
            self._deep.append(None)
            n += len(model.trees)
        self._n = n
        self._feat = np.asarray(feats, np.int64)
        self._thr = np.asarray(thrs, float)
        self._lut = np.asarray(luts, float)
        self._base = np.arange(n, dtype=np.int64) * 2 ** slots
        sizes = {sp[1] - sp[0] for sp in self._spans if sp is not None}
        self._even = None                     # every model shallow, as many trees: one sum call
        if self._spans and None not in self._spans and len(sizes) == 1 and 0 not in sizes:
            self._even = (len(self._spans), sizes.pop(), np.array([sp[2] for sp in self._spans]),
                          np.array([sp[3] for sp in self._spans]))

    def predict(self, row) -> list:
        """Each model's prediction (a float) for one row (a sequence of floats)."""
        x = np.asarray(row, dtype=float)
        if self._n:
            code = np.packbits(x.take(self._feat) <= self._thr, bitorder="little")
            leaf = self._lut.take(self._base + code)
            if self._even is not None:
                k, t, init, lr = self._even
                return (init + lr * leaf.reshape(k, t).sum(axis=1)).tolist()
        out = []
        for span, deep in zip(self._spans, self._deep):
            if span is not None:
                a, b, init, lr = span
                out.append(float(init + lr * leaf[a:b].sum()) if b > a else float(init))
            else:
                model, cols = deep
                out.append(float(model._walk(x[cols][None, :])[0]))
        return out


def _heap_nodes(left, right):
    """(heap position, node) of a tree's split nodes down to ROW_DEPTH."""
    out, frontier = [], [(0, 0)]
    while frontier:
        pos, node = frontier.pop()
        if left[node] >= 0 and pos < 2 ** ROW_DEPTH - 1:
            out.append((pos, node))
            frontier += [(2 * pos + 1, int(left[node])), (2 * pos + 2, int(right[node]))]
    return out


def _leaf_of(left, right, code: int) -> int:
    """The leaf reached when bit `pos` of `code` says whether slot `pos` goes left."""
    pos, node = 0, 0
    while left[node] >= 0:
        node, pos = ((int(left[node]), 2 * pos + 1) if (code >> pos) & 1
                     else (int(right[node]), 2 * pos + 2))
    return node
