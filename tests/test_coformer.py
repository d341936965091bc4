"""coformer (runtime/parallel/coformer.py): k = 1 is tensor_parallel on real GLOO ranks,
k >= 2 approximates with fewer bytes (== formula), the importance assignment is a
partition, calibration lowers the distillation loss and its weights load on GLOO, the
DeBo-style planner respects its bounds, bad options fail in one line."""
from __future__ import annotations

import math

import pytest
import torch

from costmodel.formulas import ring_allreduce_bytes
from costmodel.strategies import decision_candidates, get_formula, list_strategies, make_plan
from runtime.models import ModelSpec, build_adapter, tiny_spec
from runtime.parallel import DistContext, create_strategy
from runtime.parallel.coformer import (aggregation_points, assign_units, balanced_split,
                                       col_importance, head_importance)
from runtime.parallel.tp_layout import layout_for
from tests.gloo_utils import run_ranks


def _adapter(fam="vit", seed=5, **kw):
    return build_adapter(ModelSpec(**{**tiny_spec(fam).__dict__, "seed": seed, **kw}))


# --------------------------------------------------------------------------- GLOO

def _gloo(rank, world, cases, weights):
    """(family, strategy, options) on real ranks: features, logits, bytes, formula bytes."""
    out, ads = [], {}
    for fam, name, opts in cases:
        if fam not in ads:
            ads[fam] = _adapter(fam, **({"depth": 4} if fam == "vit" else {}))
        ad = ads[fam]
        x = ad.make_inputs(2, seed=3)
        run_opts = dict(opts, weights=weights) if opts.get("weights") == "CAL" else opts
        res = create_strategy(name, **run_opts).apply(ad, DistContext(rank, world), 2)(x, features=True)
        out.append({"family": fam, "strategy": name, "opts": opts,
                    "features": res.features.tolist(),
                    "logits": None if res.logits is None else res.logits.tolist(),
                    "bytes": res.timing["totals"]["comm_bytes"], "formula": res.plan.comm_bytes(rank)})
    return out


def _calibrated(tmp_path):
    from runtime.parallel.coformer_calib import calibrate
    ad = _adapter("vit", depth=4)
    cal = calibrate(ad, 2, k=2, heads=(1, 1), cols=(120, 72), steps=3, final_steps=2, batch=8,
                    data=ad.make_inputs(16, seed=9))
    return ad, cal, cal.save(str(tmp_path / "cal.safetensors"))


@pytest.fixture(scope="module")
def gloo_rows(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coformer")
    ad, cal, path = _calibrated(tmp)
    cases = []
    for fam in ("vit", "bert"):
        cases += [(fam, "tensor_parallel", {}), (fam, "coformer", {"k": 1}),
                  (fam, "coformer", {"k": 1, "assign": "contiguous"}),
                  (fam, "tensor_parallel", {"heads": [2, 0], "cols": [100, 28 if fam == "bert" else 92]}),
                  (fam, "coformer", {"k": 1, "heads": (2, 0), "cols": (100, 28 if fam == "bert" else 92)})]
    cases += [("vit", "coformer", {"k": 2}), ("vit", "coformer", {}), ("vit", "coformer", {"weights": "CAL"})]
    rows = run_ranks(_gloo, 2, tmp, cases, path)
    from runtime.parallel.coformer_calib import submodel_logits
    return rows, submodel_logits(ad, cal.states, ad.make_inputs(2, seed=3))


def _row(rows, fam, name, **opts):
    return next(r for r in rows if r["family"] == fam and r["strategy"] == name and r["opts"] == opts)


@pytest.mark.gloo
@pytest.mark.parametrize("fam", ["vit", "bert"])
def test_k1_equals_tensor_parallel(gloo_rows, fam):
    rows = gloo_rows[0]
    uneven = {"heads": [2, 0], "cols": [100, 28 if fam == "bert" else 92]}
    for rank_rows in rows:
        for tp_opts, co_opts in (({}, {"k": 1}), ({}, {"k": 1, "assign": "contiguous"}),
                                 (uneven, {"k": 1, **uneven})):
            tp, co = _row(rank_rows, fam, "tensor_parallel", **tp_opts), _row(rank_rows, fam, "coformer", **co_opts)
            err = (torch.tensor(co["features"]) - torch.tensor(tp["features"])).abs().max().item()
            assert err < 1e-5, (co_opts, err)
            if tp["logits"] is not None:
                assert torch.allclose(torch.tensor(co["logits"]), torch.tensor(tp["logits"]), atol=1e-5)
            assert co["bytes"] == co["formula"] == tp["bytes"] > 0      # 2 all-reduces per block, as TP


@pytest.mark.gloo
def test_larger_k_approximates_with_fewer_bytes(gloo_rows):
    rows, _ = gloo_rows
    for rank_rows in rows:
        tp = _row(rank_rows, "vit", "tensor_parallel")
        k2, kd = _row(rank_rows, "vit", "coformer", k=2), _row(rank_rows, "vit", "coformer")
        for r in (k2, kd):
            assert (torch.tensor(r["features"]) - torch.tensor(tp["features"])).abs().max().item() > 1e-2
            assert r["bytes"] == r["formula"]
        # depth 4: TP 8 all-reduces, k = 2: 2, k = depth (default): 1
        assert tp["bytes"] == 4 * k2["bytes"] == 8 * kd["bytes"]


@pytest.mark.gloo
def test_calibrated_weights_run_on_gloo_as_calibrated(gloo_rows):
    rows, in_process = gloo_rows
    kd = _row(rows[0], "vit", "coformer")
    cal = _row(rows[0], "vit", "coformer", weights="CAL")     # k = 2, heads 1,1, cols 120,72 from the card
    assert torch.allclose(torch.tensor(cal["logits"]), in_process, atol=1e-5)
    assert cal["bytes"] == cal["formula"] == 2 * kd["bytes"]
    uncal = _row(rows[0], "vit", "coformer", k=2)
    assert not torch.allclose(torch.tensor(cal["logits"]), torch.tensor(uncal["logits"]), atol=1e-4)


# --------------------------------------------------------------------------- in process

def test_emulated_forward_equals_the_in_process_sub_models():
    """EmulatedModel (the strategy's own block_step per rank) == coformer_calib's
    one-process loop over emulate_block, at k = 2 and uneven widths."""
    from runtime.parallel.coformer_calib import build_states, submodel_logits
    from runtime.train.emulate import EmulatedModel
    ad = _adapter("vit", depth=4)
    x = ad.make_inputs(3, seed=1)
    st = create_strategy("coformer", k=2, heads=(1, 1), cols=(150, 42))
    with torch.no_grad():
        em = EmulatedModel(ad, st, 2)
        got = em(x).logits
        em.close()
    assert torch.allclose(got, submodel_logits(ad, build_states(ad, 2, st), x), atol=1e-5)


def test_aggregation_points():
    assert aggregation_points(2, 1) == {(0, "attn"), (0, "mlp"), (1, "attn"), (1, "mlp")}
    assert aggregation_points(4, 2) == {(1, "mlp"), (3, "mlp")}
    assert aggregation_points(5, 2) == {(1, "mlp"), (3, "mlp"), (4, "mlp")}   # and after the last
    assert aggregation_points(4, 4) == {(3, "mlp")}


def test_formula_bytes_and_flags():
    shape = _adapter("vit", depth=4).shape
    ring = ring_allreduce_bytes(shape.seq_len * shape.d * 3, 2)
    for k, n in ((1, 8), (2, 2), (3, 2), (4, 1), (None, 1)):
        pl = make_plan("coformer", shape, world_size=2, batch=3, k=k)
        assert pl.n_exchanges == n and pl.comm_bytes(0) == pl.comm_bytes(1) == n * ring
        assert pl.to_dict()["k"] == (4 if k is None else k)
    tp = make_plan("tensor_parallel", shape, world_size=2, batch=3)
    assert make_plan("coformer", shape, world_size=2, batch=3, k=1).comm_bytes(0) == tp.comm_bytes(0)
    assert make_plan("coformer", shape, world_size=2, batch=3).flops(1) == tp.flops(1)
    f = get_formula("coformer")
    assert f.approximate and f.splits_weights and f.all_rows and f.distributed
    assert "coformer" in list_strategies(splits_weights=True)
    assert ("coformer", None) in decision_candidates(include_split_weights=True)
    assert ("coformer", None) not in decision_candidates()      # only with a profile fitted on it


def test_importance_assignment_is_a_balanced_partition():
    ad = _adapter("vit", depth=2)
    lay = layout_for(ad)
    s = ad.shape
    for heads, cols in (((1, 1), (96, 96)), ((2, 0), (130, 62)), ((1, 0, 1), (64, 100, 28))):
        units = assign_units(lay, s.n_layers, heads, cols, "importance")
        for i, blk in enumerate(units):
            assert sorted(h for hs, _ in blk for h in hs) == list(range(s.heads))
            assert sorted(c for _, cs in blk for c in cs) == list(range(s.d_ff))
            assert [len(hs) for hs, _ in blk] == list(heads) and [len(cs) for _, cs in blk] == list(cols)
    # balance: each device's share of the column importance is closer to its width share
    # than tensor_parallel's contiguous ranges are
    cols = (96, 96)
    for i in range(s.n_layers):
        imp = col_importance(lay.shard(i, 0, s.heads, 0, s.d_ff))
        tot = sum(imp)
        gap = lambda blk: max(abs(sum(imp[c] for c in cs) / tot - w / s.d_ff)   # noqa: E731
                              for (_, cs), w in zip(blk, cols))
        imp_gap = gap(assign_units(lay, s.n_layers, (1, 1), cols, "importance")[i])
        assert imp_gap < 0.01 and imp_gap <= gap(assign_units(lay, s.n_layers, (1, 1), cols, "contiguous")[i])
    assert len(head_importance(lay.shard(0, 0, s.heads, 0, s.d_ff))) == s.heads


def test_balanced_split_snake_and_targets():
    assert balanced_split([8, 7, 6, 5], [2, 2]) == [[0, 3], [1, 2]]
    # a device with 3/4 of the width gets about 3/4 of the importance
    imp = [float(v) for v in range(1, 41)]
    a, b = balanced_split(imp, [30, 10])
    assert len(a) == 30 and len(b) == 10 and abs(sum(imp[u] for u in a) / sum(imp) - 0.75) < 1e-3
    with pytest.raises(ValueError, match="sum to 4"):
        balanced_split([1, 2, 3, 4], [2, 1])


# --------------------------------------------------------------------------- calibration

def test_calibration_lowers_the_distillation_loss(tmp_path):
    from runtime.parallel.coformer_calib import build_states, calibrate, submodel_logits
    torch.manual_seed(0)
    ad = _adapter("vit", depth=4)
    data = ad.make_inputs(48, seed=2)
    before = build_states(ad, 2, create_strategy("coformer", k=4))
    cal = calibrate(ad, 2, k=4, data=data, steps=25, final_steps=20, batch=16, lr=0.02, final_lr=0.003)
    for stage, (first, last) in cal.losses.items():
        assert last < first, (stage, first, last)
    assert set(cal.losses) == {"block0", "block1", "block2", "block3", "end_to_end"}
    ref = ad.reference(data)[0].detach()
    err = lambda st: (submodel_logits(ad, st, data) - ref).pow(2).mean().item()   # noqa: E731
    assert err(cal.states) < 0.7 * err(before)
    assert all(not p.requires_grad for st in cal.states for sh in st.shards for p in sh.parameters())
    assert all(p.requires_grad for p in ad.model.parameters())          # the parent left as it was
    path = cal.save(str(tmp_path / "w.safetensors"), note="test")
    import json
    card = json.load(open(tmp_path / "w.json"))
    assert card["schema_version"] == 1 and card["k"] == 4 and card["world_size"] == 2 and card["note"] == "test"
    assert len(card["assignment"]) == 4 and card["calibration"]["steps_per_block"] == 25
    with pytest.raises(ValueError, match="differs from the calibrated"):
        create_strategy("coformer", weights=path, k=2)
    with pytest.raises(ValueError, match="P=2"):
        create_strategy("coformer", weights=path).apply(ad, DistContext(0, 3))
    with pytest.raises(ValueError, match="shape"):
        create_strategy("coformer", weights=path).apply(_adapter("vit", depth=2), DistContext(0, 2))


def test_calibration_refusals():
    from runtime.parallel.coformer_calib import calibrate
    ad = _adapter("vit")
    with pytest.raises(ValueError, match="k=1 is tensor_parallel"):
        calibrate(ad, 2, k=1, steps=1)
    with pytest.raises(ValueError, match="world_size"):
        calibrate(ad, 1, k=2)
    with pytest.raises(ValueError, match="residual stream"):
        calibrate(_adapter("bert"), 2, k=2)
    with pytest.raises(ValueError, match="steps"):
        calibrate(ad, 2, k=2, steps=-1)


# --------------------------------------------------------------------------- planner

def test_planner_gives_faster_devices_wider_sub_models_and_respects_bounds():
    from costmodel.formulas import vit_shape
    from costmodel.memory import memory_peak
    from runtime.parallel.planner import plan_coformer
    shape = vit_shape("vit_small_patch16_224", d=384, heads=6, n_layers=4)
    p = plan_coformer(shape, [3e9, 1e9], bw=None)              # compute only
    h, c = p.options["heads"], p.options["cols"]
    assert h[0] > h[1] and c[0] > c[1] and sum(c) == shape.d_ff
    assert p.predicted_ms < p.even_predicted_ms
    assert p.options["k"] == 4                     # no accuracy model: the fewest aggregations
    table = {1: 0.0, 2: 0.8, 4: 4.0}
    for bound, k in ((0.5, 1), (2.0, 2), (10.0, 4)):
        q = plan_coformer(shape, [2e9, 2e9], bw=200, ks=(1, 2, 4), accuracy_drop=table, max_drop=bound)
        assert q.options["k"] == k and q.accuracy_drop <= bound
    # widths-aware callable: a sub-model narrower than 2 heads costs 5 points
    drop = lambda k, heads, cols: 0.5 * (k > 1) + (5.0 if min(heads) < 2 else 0.0)   # noqa: E731
    q = plan_coformer(shape, [4e9, 1e9], bw=None, accuracy_drop=drop, max_drop=1.0)
    assert min(q.options["heads"]) >= 2 and q.accuracy_drop <= 1.0
    # memory: device 0 is fast but small; its sub-model shrinks to fit
    free = plan_coformer(shape, [3e9, 1e9], bw=None)
    budget = [0.8 * free.memory_peak[0], 2 * free.memory_peak[1]]
    m = plan_coformer(shape, [3e9, 1e9], bw=None, memory=budget)
    assert all(b <= lim for b, lim in zip(memory_peak(m.plan), budget))
    assert m.options["cols"][0] < free.options["cols"][0] or m.options["heads"][0] < free.options["heads"][0]
    with pytest.raises(ValueError, match="no coformer split"):
        plan_coformer(shape, [3e9, 1e9], memory=[1e3, 1e3])
    with pytest.raises(ValueError, match="max_drop needs accuracy_drop"):
        plan_coformer(shape, [1e9, 1e9], max_drop=1.0)
    with pytest.raises(ValueError, match="ks"):
        plan_coformer(shape, [1e9, 1e9], ks=(0, 5))


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("opts, match", [
    ({"k": 0}, "k=0 must be an integer >= 1"), ({"k": "2"}, "must be an integer"),
    ({"k": True}, "must be an integer"), ({"k": 2.5}, "must be an integer"),
    ({"assign": "random"}, r"allowed: \['importance', 'contiguous'\]"),
    ({"weights": "nope.safetensors"}, "does not exist"), ({"weights": "w.pt"}, "must be a .safetensors"),
    ({"heads": (1, 2, 3)}, "heads split"),
])
def test_bad_options_are_refused_in_one_line(opts, match):
    ad = _adapter("vit")
    with pytest.raises(ValueError, match=match) as e:
        create_strategy("coformer", **opts).apply(ad, DistContext(0, 2))
    assert "\n" not in str(e.value)


def test_bad_plan_arguments():
    shape = _adapter("vit").shape
    with pytest.raises(ValueError, match="from 1 .* to depth 2"):
        make_plan("coformer", shape, world_size=2, k=3)
    with pytest.raises(ValueError, match=r"allowed: \['native'\]"):
        make_plan("coformer", shape, world_size=2, collective="pairwise")
    with pytest.raises(ValueError, match="partition"):
        make_plan("coformer", shape, world_size=2, partition=[9, 8])
    with pytest.raises(ValueError, match="k=1 only"):
        create_strategy("coformer", k=2).apply(_adapter("bert"), DistContext(0, 2))
    assert math.isfinite(make_plan("coformer", shape, world_size=2).flops(0))
