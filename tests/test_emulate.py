"""The in-process emulation (runtime/train/emulate.py) is the GLOO runtime's forward.

Parity: for every emulated strategy x model family, at the strategy's exact options and
at approximating ones (Prism with few means), the emulated logits and features equal the
real GLOO ranks' for the same weights and inputs, and the emulated byte counts equal the
formula. Differentiability: at exact options the gradients equal the plain model's, and
under Prism a loss on rank 0 reaches the inputs of rank 1's rows (through the means)."""
from __future__ import annotations

import pytest
import torch

from gloo_utils import run_ranks
from runtime.models import ModelSpec, build_adapter, list_families, tiny_spec
from runtime.parallel import create_strategy, list_strategies, strategy_class
from runtime.train.emulate import EmulatedModel

from costmodel.strategies import get_formula

EMULATED = [n for n in list_strategies() if getattr(strategy_class(n), "emulated", False)]
DISTRIBUTED = [n for n in EMULATED if get_formula(n).distributed]
# approximating settings per strategy (beyond its exact options), when it has any
APPROX = {"prism": [{"m": 1}, {"cr": 2, "averaged": "ln1"}, {"cr": 3, "log_bias": False},
                   {"m": 2, "sink_rows": 1}],
          "coformer": [{"k": 2}]}


def _settings(name, seq_len, world):
    return [strategy_class(name).exact_options(seq_len, world), *APPROX.get(name, [])]


def _adapter(fam):
    return build_adapter(ModelSpec(**{**tiny_spec(fam).__dict__, "seed": 7}))


def _gloo(rank, world, fams, names):
    """Every (family, strategy, setting) on real GLOO ranks: rank 0's logits, features."""
    from runtime.parallel import DistContext
    out = []
    for fam in fams:
        ad = _adapter(fam)
        x = ad.make_inputs(2, seed=3)
        for name in names:
            for opts in _settings(name, ad.seq_len, world):
                try:
                    res = create_strategy(name, **opts).apply(ad, DistContext(rank, world), 2)(x, features=True)
                except ValueError:
                    continue
                logits = res.logits
                if getattr(ad, "head_per_position", False) and world > 1:
                    logits = res.features.new_zeros(0) if logits is None else logits
                    from runtime.parallel.exchange import gather_rows_to_all
                    logits = gather_rows_to_all(logits, res.plan.sizes, rank)
                out.append({"family": fam, "strategy": name, "opts": opts,
                            "logits": None if logits is None else logits.tolist(),
                            "features": res.features.tolist(),
                            "bytes": res.timing["totals"]["comm_bytes"]})
    return out


@pytest.fixture(scope="module")
def gloo_rows(tmp_path_factory):
    return run_ranks(_gloo, 2, tmp_path_factory.mktemp("emulate"), list_families(), DISTRIBUTED)


@pytest.mark.gloo
@pytest.mark.parametrize("family", list_families())
@pytest.mark.parametrize("name", DISTRIBUTED)
def test_emulated_forward_equals_gloo_runtime(name, family, gloo_rows):
    rows = [r for r in gloo_rows[0] if r["family"] == family and r["strategy"] == name]
    if not rows:
        pytest.skip(f"{name} does not support {family}")
    ad = _adapter(family)
    x = ad.make_inputs(2, seed=3)
    by_rank1 = {str(r["opts"]): r for r in gloo_rows[1] if r["family"] == family and r["strategy"] == name}
    for r in rows:
        em = EmulatedModel(ad, name, 2, batch=2, **r["opts"])
        with torch.no_grad():
            out = em(x, features=True)
        ref_f = torch.tensor(r["features"])
        assert (out.features - ref_f).abs().max().item() < 1e-5, r["opts"]
        if r["logits"] is not None:
            assert (out.logits - torch.tensor(r["logits"])).abs().max().item() < 1e-5, r["opts"]
        assert out.timings[0]["totals"]["comm_bytes"] == r["bytes"], r["opts"]
        assert out.timings[1]["totals"]["comm_bytes"] == by_rank1[str(r["opts"])]["bytes"]
        assert out.timings[0]["totals"]["comm_bytes"] == em.plan.comm_bytes(0)


@pytest.mark.parametrize("family", ["vit", "bert", "gpt2"])
def test_gradients_at_exact_options_equal_the_plain_models(family):
    ad = _adapter(family)
    x = ad.make_inputs(2, seed=1)
    params = [p for p in ad.model.parameters() if p.requires_grad]

    def grads(fn):
        for p in params:
            p.grad = None
        fn().float().pow(2).mean().backward()
        return [None if p.grad is None else p.grad.clone() for p in params]

    ref = grads(lambda: ad.reference(x)[1])
    em = EmulatedModel(ad, "prism", 2, **strategy_class("prism").exact_options(ad.seq_len, 2))
    got = grads(lambda: em(x, features=True).features)
    checked = 0
    for g, r in zip(got, ref):
        if r is None:
            continue
        assert g is not None
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-3)
        checked += 1
    assert checked > 10


def test_prism_gradient_crosses_the_exchange():
    """CLS pooling: rank 0's logits see rank 1's patches only through their means."""
    ad = _adapter("vit")
    x = ad.make_inputs(1, seed=2).requires_grad_(True)
    em = EmulatedModel(ad, "prism", 2, m=1)
    em(x).logits.sum().backward()
    g = x.grad.abs()
    assert g[..., g.shape[-2] // 2 + ad.patch_size:, :].sum() > 0   # bottom half: rank 1's rows
    # and under the exact model the same holds, with different values
    assert em.plan.sizes[1] > 0


@pytest.mark.parametrize("family", ["vit", "gpt2"])
def test_single_on_one_emulated_rank_is_the_plain_model(family):
    ad = _adapter(family)
    x = ad.make_inputs(2, seed=4)
    with torch.no_grad():
        out = EmulatedModel(ad, "single", 1)(x, features=True)
        ref_l, ref_f = ad.reference(x)
    assert torch.allclose(out.features, ref_f, atol=1e-5)
    assert torch.allclose(out.logits, ref_l, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "vit", "gpt2"])
def test_sink_rows_are_sent_as_themselves(family):
    """sink_rows = k: device 0's first k rows travel exactly (one 'segment' each), so
    with every other row also its own segment the model is exact, and device 0 sends
    k - 1 more rows than without (its prefix token, if any, already travels exactly)."""
    ad = _adapter(family)
    x = ad.make_inputs(2, seed=6)
    lp = -(-ad.seq_len // 2)
    with torch.no_grad():
        ref_f = ad.reference(x)[1]
        exact = EmulatedModel(ad, "prism", 2, m=lp, sink_rows=3, batch=2)(x, features=True)
        assert (exact.features - ref_f).abs().max().item() < 1e-4
        a = EmulatedModel(ad, "prism", 2, m=2, batch=2)
        b = EmulatedModel(ad, "prism", 2, m=2, sink_rows=3, batch=2)
        got = b(x, features=True)
    extra = 3 - max(1, ad.shape.prefix_tokens)
    assert b.plan.rows_sent(0) == a.plan.rows_sent(0) + extra + (ad.shape.prefix_tokens == 0)
    assert got.timings[0]["totals"]["comm_bytes"] == b.plan.comm_bytes(0)
    with pytest.raises(ValueError, match="sink_rows"):
        EmulatedModel(ad, "prism", 2, m=2, sink_rows=-1)


def test_non_emulated_strategy_and_bad_world_are_refused():
    ad = _adapter("vit")
    with pytest.raises(ValueError, match="cannot be emulated.*prism"):
        EmulatedModel(ad, "tensor_parallel", 2)
    with pytest.raises(ValueError, match="world_size"):
        EmulatedModel(ad, "prism", 0, m=1)


def test_a_failing_rank_raises_instead_of_hanging():
    ad = _adapter("vit")
    em = EmulatedModel(ad, "prism", 2, m=1, timeout_s=5)
    with pytest.raises(Exception):
        em(torch.zeros(1, 5, ad.img_size, ad.img_size))      # wrong channel count on every rank
