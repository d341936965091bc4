"""The strategy registry is the one list: every registered strategy is tested here
automatically (parity with the plain model, bytes == formula), and a strategy added at
run time from one module appears in every place that lists strategies."""
import numpy as np
import pytest
import torch

from costmodel import features
from costmodel.decision import DecisionTable
from costmodel.formulas import vit_shape
from costmodel.strategies import decision_candidates, get_formula
from costmodel.strategies import list_strategies as formulas
from runtime.parallel import list_strategies, strategy_class
from tests import toy_strategy
from tests.gloo_utils import run_ranks

def test_every_runtime_strategy_has_a_formula_and_vice_versa():
    assert list_strategies() == formulas()
    for name in list_strategies():
        assert strategy_class(name).name == name == get_formula(name).name


def test_registering_twice_raises():
    from runtime.parallel.base import register_strategy
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("voltage")(strategy_class("voltage"))


def _parity(rank, world, names, families=None):
    """Every (family's tiny model, strategy) at the strategy's exact options on `world`
    ranks (single on one): errors vs the plain model, bytes vs the formula, or the one-line
    refusal of a strategy that does not support the family."""
    from runtime.models import ModelSpec, build_adapter, list_families, tiny_spec
    from runtime.parallel import DistContext, create_strategy, strategy_class

    rows = []
    for fam in families or list_families():
        spec = tiny_spec(fam)
        ad = build_adapter(ModelSpec(**{**spec.__dict__, "seed": 5}))
        x = ad.make_inputs(2, seed=5)
        with torch.inference_mode():
            ref_logits, ref_feats = ad.reference(x)
        for name in names:
            ws = world if get_formula(name).distributed else 1
            if rank >= ws:
                continue
            row = {"family": fam, "strategy": name}
            opts = strategy_class(name).exact_options(ad.seq_len, ws)
            try:
                run = create_strategy(name, **opts).apply(ad, DistContext(rank, ws), 2)
            except ValueError as e:
                rows.append({**row, "refused": str(e)})
                continue
            res = run(x, features=True)
            row.update(feat_err=(res.features - ref_feats).abs().max().item(),
                       bytes=res.timing["totals"]["comm_bytes"], bytes_formula=res.plan.comm_bytes(rank))
            if res.logits is not None:
                ref = ref_logits
                if res.logits.dim() == 3 and res.logits.shape[1] != ref.shape[1]:   # per-position head
                    ref = ref[:, run.start:run.start + run.rows]
                row["logit_err"] = (res.logits - ref).abs().max().item()
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def parity_rows(tmp_path_factory):
    return run_ranks(_parity, 2, tmp_path_factory.mktemp("parity"), list_strategies())


def _families():
    from runtime.models import list_families
    return list_families()


@pytest.mark.gloo
@pytest.mark.parametrize("family", _families())
@pytest.mark.parametrize("name", list_strategies())
def test_strategy_matches_plain_model_and_its_formula(name, family, parity_rows):
    """P = 2 on GLOO (single on one device), each strategy at its exact options on each
    model family's tiny model: parity with the plain model and bytes == formula, or a
    one-line refusal, on every rank, by a weight-splitting strategy that has no layout
    for the family (the pair is skipped with that reason: e.g. tensor_parallel / galaxy
    on GPT-2)."""
    rows = [r for rank_rows in parity_rows for r in rank_rows
            if r["strategy"] == name and r["family"] == family]
    assert rows
    if any("refused" in r for r in rows):
        assert all("refused" in r and "\n" not in r["refused"] for r in rows), rows
        assert get_formula(name).splits_weights, rows     # row splits run every family
        pytest.skip(f"{name} refuses {family}: {rows[0]['refused']}")
    for r in rows:
        assert r["feat_err"] < 1e-4, r
        assert r.get("logit_err", 0.0) < 1e-4, r
        assert r["bytes"] == r["bytes_formula"], r


@pytest.fixture
def toy():
    toy_strategy.register()
    yield toy_strategy.NAME
    toy_strategy.unregister()


def test_toy_strategy_added_in_one_module_is_seen_everywhere(toy):
    from runtime.cli import _parser
    from runtime.measure.run import config_from_args
    from runtime.measure.spec import SweepSpec, expand
    from runtime.parallel.planner import planned
    from runtime.serve.adaptive import strategy_code

    # CLI: a choice in --strategy's help, its option a flag
    ap = _parser(commands=["run"])
    run_p = next(a for a in ap._actions if hasattr(a, "choices") and a.choices).choices["run"]
    helps = {a.dest: a.help for a in run_p._actions}
    assert toy in helps["strategy"] and "opt_note" in helps
    cfg = config_from_args(ap.parse_args(["run", "--strategy", toy, "--note", "x"]))
    assert cfg.strategy == toy and cfg.options == {"note": "x"} and cfg.world_size == 2
    # sweep expansion
    spec = SweepSpec(models=("test_vit",), strategies=("single", toy), img_sizes=(64,), depth=2,
                     batches=(1, 2), bws=(100.0,), testbed="loopback")
    got = {(c.strategy, c.world_size, c.batch) for c in expand(spec)}
    assert got == {("single", 1, 1), ("single", 1, 2), (toy, 2, 1), (toy, 2, 2)}
    # decision candidates, the planner, the adaptive runner's wire code
    assert (toy, None) in decision_candidates()
    assert toy in planned()
    assert strategy_code(toy) == list_strategies().index(toy)
    # cost-model features: the toy's formula is Voltage's
    shape = vit_shape("vit_tiny_patch16_224", d=192, heads=3)
    f_toy = features.physics([toy], 4, 300.0, np.nan, shape.seq_len, 2, shape)
    f_v = features.physics(["voltage"], 4, 300.0, np.nan, shape.seq_len, 2, shape)
    for k in ("flops", "wire_bytes", "n_exchanges", "comm_ms_nominal"):
        assert f_toy[k][0] == f_v[k][0] > 0, k
    assert toy in features.STRATEGIES


def test_toy_strategy_runs_and_matches_plain_model_on_one_device(toy):
    rows = _parity(0, 1, [toy], ["vit"])
    assert rows[0]["feat_err"] < 1e-4 and rows[0]["logit_err"] < 1e-4


def test_decision_table_compares_the_toy(toy):
    """A row-split strategy absent from a profile's fit is predicted from the shared link
    and compute parameters and its own formula's bytes and FLOPs (Voltage's, for the toy;
    Voltage itself has per-strategy compute and staging parameters in the fit)."""
    import costmodel
    cm = costmodel.load_profile("jetson-orin-nano")
    t = DecisionTable(cm, candidates=[("single", None), ("voltage", None), (toy, None)],
                      seq_len=197, batches=(1, 8), bws=(1000.0,))
    d = t.choose(8, 1000.0)
    assert set(d["predicted"]) == {"single", "voltage", toy}
    assert np.isfinite(d["predicted"][toy]["latency_ms"]) and d["predicted"][toy]["latency_ms"] > 0
