"""The scalar fast path of costmodel.predict (CostModel.predict_one, trees.RowForest)
gives what the vectorised path gives: every number to 1e-9 relative on random scalar
queries over every shipped profile, strategy, model, batch, bw, cr, seq_len and world
size; the same warnings; the same one-line errors for bad input."""
from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest

import costmodel
from costmodel import api
from costmodel.model import CostModel
from costmodel.trees import JsonGBR, RowForest

REL = 1e-9
PROFILES = costmodel.list_profiles()


def _close(a, b, path="") -> None:
    """a == b for the API's nested results; floats to REL (relative)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, float) and isinstance(b, float), (path, a, b)
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), (path, a, b)
        else:
            assert abs(a - b) <= REL * max(abs(a), abs(b)) + 1e-300, (path, a, b)
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


def _call(fast: bool, kw: dict):
    """(result or None, error (type, message) or None, warning messages) of one predict."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            out, err = costmodel.predict(**kw, fast=fast), None
        except Exception as e:        # noqa: BLE001 - compared between the two paths
            out, err = None, (type(e), str(e))
    return out, err, [(x.category, str(x.message)) for x in w]


def _random_query(rng: random.Random, profile: str) -> dict:
    cm = api.load_profile(profile)
    s = rng.choice(cm.strategies_)
    models = [None] + [m["name"] for m in cm.models_]
    model = rng.choice(models)
    seq = rng.choice([None, None, 37, 65, 100, 197, 257])
    batch = rng.choice([1, 2, 3, 4, 8, 16, 24, 32, 48, 64, rng.randint(1, 128)])
    if rng.random() < 0.2:
        batch = float(batch)
    kw = {"batch": batch, "strategy": s, "seq_len": seq, "model": model,
          "profile": rng.choice([profile, profile, None]) if profile == api.DEFAULT_PROFILE else profile}
    if s == "single":
        kw.update(bw=rng.choice([None, 500.0]), cr=None, world_size=rng.choice([None, 1]))
    else:
        kw.update(bw=rng.choice([rng.uniform(20, 2000), float(rng.choice([100, 200, 500, 900, 1000]))]),
                  world_size=rng.choice([None, 2, 2, 3, 4]), cr=None)
        if s == "prism":
            kw["cr"] = rng.choice([rng.uniform(1.5, 16), 3.1666666666666665, 9.9, 10.2, 5])
    return kw


@pytest.mark.parametrize("profile", PROFILES)
def test_fast_equals_vectorised_random(profile):
    rng = random.Random(hash(profile) % 1000 + 17)
    answered = 0
    for _ in range(400):
        kw = _random_query(rng, profile)
        fast, ferr, fw = _call(True, kw)
        slow, serr, sw = _call(False, kw)
        assert ferr == serr, kw
        assert fw == sw, kw
        if fast is not None:
            _close(fast, slow, str(kw))
            answered += 1
    assert answered >= 300


def test_every_strategy_and_world_size_on_testbed_tp():
    cm = api.load_profile("testbed-vit-tp")
    assert {"galaxy", "tensor_parallel", "prism", "voltage", "single"} <= set(cm.strategies_)
    for s in cm.strategies_:
        for ws in ([None, 1] if s == "single" else [2, 3, 4]):
            for batch in (1, 7, 32, 100):
                for bw in ([None] if s == "single" else [50.0, 333.3, 900.0, 5000.0]):
                    for cr in ([3.1666666666666665, 9.9, 12.5] if s == "prism" else [None]):
                        for model in [None] + [m["name"] for m in cm.models_]:
                            kw = dict(batch=batch, bw=bw, cr=cr, strategy=s, world_size=ws,
                                      model=model, profile="testbed-vit-tp")
                            fast, ferr, fw = _call(True, kw)
                            slow, serr, sw = _call(False, kw)
                            assert (ferr, fw) == (serr, sw), kw
                            if fast is not None:
                                _close(fast, slow, str(kw))


def test_predict_one_matches_costmodel_predict():
    """The model-level pair: predict_one's floats are predict()'s 0-d arrays."""
    rng = random.Random(5)
    for profile in PROFILES:
        cm = api.load_profile(profile)
        for _ in range(100):
            kw = _random_query(rng, profile)
            args = (kw["batch"], kw["bw"], kw["cr"])
            opts = dict(strategy=kw["strategy"], seq_len=kw["seq_len"], model=kw["model"],
                        world_size=2 if kw["world_size"] is None else kw["world_size"], warn=False)
            try:
                ref = cm.predict(*args, **opts)
            except ValueError as e:
                with pytest.raises(type(e)):
                    if cm.predict_one(*args, **opts) is None:
                        cm.predict(*args, **opts)
                continue
            one = cm.predict_one(*args, **opts)
            assert one is not None, kw
            _close(one, {k: float(v) for k, v in ref.items()}, str(kw))


BAD = [
    dict(batch=0, bw=500, cr=9.9), dict(batch=-1, bw=500, cr=9.9), dict(batch=1.5, bw=500, cr=9.9),
    dict(batch=float("nan"), bw=500, cr=9.9), dict(batch=float("inf"), bw=500, cr=9.9),
    dict(batch="x", bw=500, cr=9.9), dict(batch=True, bw=500, cr=9.9), dict(batch=None, bw=500, cr=9.9),
    dict(batch=8, bw=0, cr=9.9), dict(batch=8, bw=-5, cr=9.9), dict(batch=8, bw=float("nan"), cr=9.9),
    dict(batch=8, bw=None, cr=9.9), dict(batch=8, bw=500, cr=0), dict(batch=8, bw=500, cr=float("nan")),
    dict(batch=8, bw=500, cr=None), dict(batch=8, bw=500, cr=-2),
    dict(batch=8, bw=500, cr=9.9, strategy="single"), dict(batch=8, bw=500, cr=9.9, strategy="voltage"),
    dict(batch=8, bw=500, cr=None, strategy="single", world_size=2),
    dict(batch=8, bw=500, cr=9.9, seq_len=1), dict(batch=8, bw=500, cr=9.9, seq_len=2.5),
    dict(batch=8, bw=500, cr=9.9, world_size=0), dict(batch=8, bw=500, cr=9.9, world_size=1.5),
    dict(batch=8, bw=500, cr=9.9, strategy="nope"), dict(batch=8, bw=500, cr=9.9, strategy=3),
    dict(batch=8, bw=500, cr=9.9, profile="nope"), dict(batch=8, bw=500, cr=9.9, profile=["x"]),
    dict(batch=8, bw=500, cr=9.9, model="nope"),
    dict(batch=8, bw=500, cr=None, strategy="tensor_parallel"),            # not in jetson's fit
    dict(batch=8, bw=500, cr=None, strategy="pipeline", profile="testbed-vit-tp"),
    dict(batch=8, bw=500, cr=9.9, world_size=400, profile="testbed-vit-p2"),
    dict(batch=8, bw=500, cr=500.0, profile="testbed-vit-p2"),
]


@pytest.mark.parametrize("kw", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_scalar_input_same_error(kw):
    fast, ferr, fw = _call(True, kw)
    slow, serr, sw = _call(False, kw)
    assert ferr == serr
    assert fw == sw
    if ferr is not None:
        assert issubclass(ferr[0], ValueError) and "\n" not in ferr[1]
    else:
        _close(fast, slow)


def test_warnings_point_at_the_same_place():
    for fast in (True, False):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            costmodel.predict(16, 500, 9.9, fast=fast)      # bw outside jetson's [1000, 1000]
        assert len(w) == 1 and "bw=500 outside fitted" in str(w[0].message)
        assert w[0].filename == api.__file__


@pytest.mark.filterwarnings("ignore::costmodel.model.OutOfRangeWarning")
def test_numpy_scalars_and_arrays():
    a = costmodel.predict(np.int64(16), np.float64(500.0), np.float32(9.9))
    b = costmodel.predict(np.int64(16), np.float64(500.0), np.float32(9.9), fast=False)
    _close(a, b)
    arr = costmodel.predict(np.array([8, 16]), 500, 9.9)           # arrays: the vectorised path
    assert isinstance(arr["latency_ms"], np.ndarray) and arr["memory_peak_bytes"] is None
    for kw in (dict(batch=np.array(16), bw=500, cr=9.9), dict(batch=16, bw=np.array(500.0), cr=9.9)):
        fast, slow = _call(True, kw), _call(False, kw)     # 0-d arrays: whatever the old path does
        assert fast[1:] == slow[1:]
        if fast[0] is not None:
            _close(fast[0], slow[0])


def test_state_follows_a_reload():
    """predict_one's prepared state is rebuilt when the fitted attributes are replaced."""
    import json

    cm = api.load_profile("testbed-vit-p2")
    d = json.loads(json.dumps(cm.to_dict()))        # a copy: to_dict shares the fitted lists
    cm2 = CostModel.from_dict(d)
    assert cm2.predict_one(8, 500, 9.9, warn=False) is not None
    d["params_"]["compute"]["*"] = [2 * x for x in d["params_"]["compute"]["*"]]
    for g in list(d["params_"]["compute"]):
        d["params_"]["compute"][g] = [2 * x for x in d["params_"]["compute"][g]]
    cm3 = CostModel.from_dict(d)
    cm2.params_, cm2.residual_ = cm3.params_, cm3.residual_
    one = cm2.predict_one(8, 500, 9.9, warn=False)
    ref = cm3.predict(8, 500, 9.9, warn=False)
    _close(one, {k: float(v) for k, v in ref.items()})


def _gbr(depth: int, seed: int, n_features: int = 8) -> JsonGBR:
    from sklearn.ensemble import GradientBoostingRegressor

    from costmodel.trees import export_gbr

    r = np.random.default_rng(seed)
    X = r.normal(size=(300, n_features))
    X[:, 3] = r.integers(0, 4, 300)              # a discrete feature: rows land on thresholds' sides
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 3] + r.normal(scale=0.1, size=300)
    return JsonGBR(export_gbr(GradientBoostingRegressor(n_estimators=40, max_depth=depth,
                                                        random_state=seed).fit(X, y)))


def test_row_forest_equals_walk():
    models = [_gbr(1, 0), _gbr(2, 1), _gbr(3, 2), _gbr(5, 3)]      # depth 5: walked by _walk
    cols = [list(range(7)) + [7 + i] for i in range(len(models))]
    rf = RowForest(models, cols)
    r = np.random.default_rng(9)
    thr = np.concatenate([t[3] for m in models for t in m.trees])
    for k in range(300):
        row = r.normal(size=7 + len(models))
        if k % 3 == 0:                         # values exactly on thresholds (x <= thr goes left)
            row[r.integers(0, row.size, 4)] = r.choice(thr, 4)
        got = rf.predict(row.tolist())
        for m, c, g in zip(models, cols, got):
            want = float(m.predict(row[c][None, :])[0])
            assert g == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_memory_peak_from_the_batch_one_plan():
    """api._peak (the batch-1 plan with its batch replaced) == memory.peak_for, and the
    plan itself == make_plan's, for every strategy whose make_plan is batch-free."""
    import dataclasses

    from costmodel.memory import peak_for
    from costmodel.strategies import get_formula, make_plan

    for profile in ("jetson-orin-nano", "testbed-vit-tp"):
        cm = api.load_profile(profile)
        for name in [m["name"] for m in cm.models_]:
            for seq in (None, 65):
                shape = cm.query_shape(name, seq)
                for s in costmodel.list_strategies():
                    for ws in ([1] if s == "single" else [2, 3]):
                        cr = 3.1666666666666665 if s == "prism" else None
                        for batch in (1, 2, 5, 16, 33, 1000):
                            want = peak_for(s, shape, world_size=ws, batch=batch, cr=cr)
                            assert api._peak(s, shape, ws, batch, cr) == want, (s, ws, batch)
                            if type(get_formula(s)).make_plan in api._batch_free_make_plans():
                                opts = {"cr": cr} if cr is not None else {}
                                one = make_plan(s, shape, world_size=ws, batch=1, **opts)
                                assert dataclasses.replace(one, batch=batch) == make_plan(
                                    s, shape, world_size=ws, batch=batch, **opts)
    assert get_formula("pipeline").make_plan.__func__ not in api._batch_free_make_plans()


def test_named_family_shapes_fast_equals_vectorised():
    """Models beyond a profile's fitted ones (formulas.FAMILY_SHAPES, on its fitted rates)."""
    from costmodel.formulas import FAMILY_SHAPES

    for profile in ("jetson-orin-nano", "testbed-vit-tp"):
        for name in FAMILY_SHAPES:
            for s, cr in (("single", None), ("voltage", None), ("prism", 4.0)):
                kw = dict(batch=8, bw=None if s == "single" else 500.0, cr=cr, strategy=s,
                          model=name, profile=profile)
                fast, slow = _call(True, kw), _call(False, kw)
                assert fast[1:] == slow[1:], kw
                if fast[0] is not None:
                    _close(fast[0], slow[0], str(kw))
