"""pipeline: the formula (bytes, FLOPs, messages, options), the planner's layer split,
and exact parity + bytes == formula on GLOO ranks for uneven splits, micro-batches,
a relay stage without blocks, BERT padding and GPT-2's causal mask (the registry test
covers the even split at P = 2 for every family)."""
import pytest
import torch

from costmodel.formulas import block_flops, gpt2_shape, vit_shape
from costmodel.strategies import make_plan
from tests.gloo_utils import run_ranks


def test_formula_bytes_flops_and_messages():
    s = vit_shape("vit_small_patch16_224", d=384, heads=6)
    p = make_plan("pipeline", s, world_size=2, batch=8, layers=(8, 4))
    assert p.layers_split == (8, 4) and p.microbatches == 8
    assert [p.comm_bytes(r) for r in range(2)] == [197 * 384 * 4 * 8] * 2
    assert p.recv_bytes(1) == p.comm_bytes(1) and p.staged_bytes(0) == 2 * p.comm_bytes(0)
    assert p.n_exchanges == 8 and p.n_messages == 8 + 2 - 1
    f = block_flops(197, 197, 384, 1536) * 8
    assert p.flops(1) == 4 * f
    assert p.flops(0) == 8 * f + (s.embed_flops + s.head_flops) * 8
    single = make_plan("single", s, world_size=1, batch=8)
    assert sum(p.flops(r) for r in range(2)) == pytest.approx(single.flops(0))
    assert make_plan("pipeline", s, world_size=3, batch=2).microbatches == 2          # clamped to batch
    assert make_plan("pipeline", s, world_size=3, batch=32, microbatches=64).microbatches == 32
    one = make_plan("pipeline", s, world_size=1, batch=4)
    assert one.comm_bytes(0) == 0 and one.n_exchanges == 0 and one.layers_split == (12,)


def test_formula_gpt2_head_on_rank0():
    s = gpt2_shape(seq_len=128)
    p = make_plan("pipeline", s, world_size=2, batch=1)
    assert p.flops(1) == 6 * block_flops(128, 128, 768, 3072)
    assert p.flops(0) - p.flops(1) == s.embed_flops


@pytest.mark.parametrize("kw, msg", [
    (dict(layers=(8, 8)), "sum to 12"), (dict(layers=(12,)), "1 parts"),
    (dict(microbatches=0), "microbatches"), (dict(partition=(99, 98)), "partition"),
])
def test_formula_refuses_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_plan("pipeline", vit_shape(), world_size=2, batch=2, **kw)


def test_planner_gives_the_faster_device_more_layers():
    from runtime.parallel.planner import plan_splits
    sp = plan_splits("pipeline", vit_shape(), [2e9, 1e9], bw=500, batch=8)
    assert sp.options["layers"] == (8, 4) and sp.partition is None
    assert sp.predicted_ms < sp.even_predicted_ms


def test_cli_flags_parse():
    from runtime.cli import _parser
    from runtime.measure.run import config_from_args
    cfg = config_from_args(_parser(commands=["run"]).parse_args(
        ["run", "--strategy", "pipeline", "--layers", "3,1", "--microbatches", "2"]))
    assert cfg.options == {"layers": (3, 1), "microbatches": 2}


CASES = [   # (model spec kwargs, world, options, batch)
    (dict(name="test_vit", img_size=64, depth=4), 2, dict(layers=(3, 1)), 3),
    (dict(name="test_vit", img_size=64, depth=4), 2, dict(layers=(1, 3), microbatches=1), 3),
    (dict(name="test_vit", img_size=64, depth=4), 3, dict(layers=(2, 0, 2), microbatches=2), 3),
    (dict(name="bert-tiny", seq_len=24, lengths=(24, 13, 7)), 3, dict(), 3),
    (dict(name="gpt2-tiny", seq_len=24), 3, dict(layers=(0, 1, 1)), 4),
]


def _cases(rank, world, cases):
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy

    rows = []
    for i, (spec, ws, opts, batch) in enumerate(cases):
        if ws != world:
            continue
        ad = build_adapter(ModelSpec(**spec, seed=3))
        x = ad.make_inputs(batch, seed=3)
        with torch.inference_mode():
            ref_logits, ref_feats = ad.reference(x)
        run = create_strategy("pipeline", **opts).apply(ad, DistContext(rank, ws), batch)
        res = run(x, features=True)
        row = {"case": i, "feat_err": (res.features - ref_feats).abs().max().item(),
               "bytes": res.timing["totals"]["comm_bytes"], "formula": res.plan.comm_bytes(rank),
               "blocks": len(res.timing["blocks"]), "has_logits": res.logits is not None}
        if res.logits is not None:
            row["logit_err"] = (res.logits - ref_logits).abs().max().item()
        rows.append(row)
    return rows


@pytest.mark.gloo
@pytest.mark.parametrize("world", [2, 3])
def test_pipeline_parity_and_bytes(world, tmp_path):
    per_rank = run_ranks(_cases, world, tmp_path, CASES)
    n = sum(1 for c in CASES if c[1] == world)
    for rank, rows in enumerate(per_rank):
        assert len(rows) == n
        for row in rows:
            assert row["feat_err"] < 1e-4, row
            assert row["has_logits"] == (rank == 0), row
            assert row.get("logit_err", 0.0) < 1e-4, row
            assert row["bytes"] == row["formula"] > 0, row
            assert row["blocks"] == CASES[row["case"]][0].get("depth", 2), row
