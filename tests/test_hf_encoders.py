"""HF ViT, DistilBERT and RoBERTa adapters: the plain model on one device, padding masks
on 2 GLOO ranks (every strategy at its exact options), local checkpoint folders. Registry
parity (tests/test_registry.py) covers their tiny models without padding."""
import pytest
import torch

from tests.gloo_utils import run_ranks

TOL = dict(atol=1e-4, rtol=1e-4)


def _adapter(name, **kw):
    from runtime.models import ModelSpec, build_adapter

    return build_adapter(ModelSpec(name, seed=kw.pop("seed", 3), **kw))


@pytest.mark.parametrize("name", ["hf-vit-tiny", "hf-vit-tiny-cls", "distilbert-tiny",
                                  "distilbert-tiny-cls", "roberta-tiny", "roberta-tiny-cls"])
def test_single_device_equals_transformers(name):
    from runtime.parallel import DistContext, create_strategy

    ad = _adapter(name)
    text = not name.startswith("hf-vit")
    x = ad.make_inputs(3, seed=1, **({"lengths": (32, 19, 5)} if text else {}))
    ref_out, ref_h = ad.reference(x)
    res = create_strategy("single").apply(ad, DistContext(), 3)(x, features=True)
    valid = x.attention_mask.bool() if text else torch.ones(ref_h.shape[:2], dtype=torch.bool)
    assert torch.allclose(res.features[valid], ref_h[valid], **TOL)
    assert torch.allclose(res.logits, ref_out, **TOL)


def _padded(rank, world):
    from runtime.models import ModelSpec, build_adapter
    from runtime.parallel import DistContext, create_strategy, strategy_class

    rows = []
    for name in ("distilbert-tiny-cls", "roberta-tiny-cls"):
        ad = build_adapter(ModelSpec(name, seq_len=24, lengths=(24, 13, 4), seed=2))
        x = ad.make_inputs(3, seed=0)
        ref_l, ref_h = ad.reference(x)
        valid = x.attention_mask.bool()
        for st in ("voltage", "prism", "tensor_parallel", "galaxy"):
            opts = strategy_class(st).exact_options(ad.seq_len, world)
            res = create_strategy(st, **opts).apply(ad, DistContext(rank, world), 3)(x, features=True)
            row = {"model": name, "strategy": st,
                   "feat_err": (res.features - ref_h)[valid].abs().max().item(),
                   "bytes": res.timing["totals"]["comm_bytes"], "formula": res.plan.comm_bytes(rank)}
            if res.logits is not None:
                row["logit_err"] = (res.logits - ref_l).abs().max().item()
            rows.append(row)
    return rows


@pytest.mark.gloo
def test_padding_on_two_ranks_matches_plain_model(tmp_path):
    rows = [r for rr in run_ranks(_padded, 2, tmp_path) for r in rr]
    assert len(rows) == 16
    for r in rows:
        assert r["feat_err"] < 1e-4 and r.get("logit_err", 0.0) < 1e-4, r
        assert r["bytes"] == r["formula"], r


def test_local_checkpoint_folder_round_trip(tmp_path):
    for name, generic in (("hf-vit-tiny-cls", "hf-vit"), ("distilbert-tiny-cls", "distilbert"),
                          ("roberta-tiny", "roberta")):
        ad = _adapter(name, seed=5)
        ad.model.save_pretrained(tmp_path / name)
        kw = {} if generic == "hf-vit" else {"seq_len": 32}
        ad2 = _adapter(generic, checkpoint=str(tmp_path / name), seed=99, **kw)
        assert type(ad2.model) is type(ad.model)
        x = ad.make_inputs(2, seed=0)
        assert torch.allclose(ad2.reference(x)[0], ad.reference(x)[0], atol=0, rtol=0)


def test_bad_input_is_one_line():
    for kw in (dict(name="roberta-tiny", seq_len=129), dict(name="distilbert-nope"),
               dict(name="hf-vit-tiny", seq_len=8), dict(name="roberta-tiny", num_classes=3),
               dict(name="hf-vit-tiny", img_size=30)):
        with pytest.raises(ValueError) as e:
            _adapter(kw.pop("name"), **kw)
        assert "\n" not in str(e.value)


def test_families_and_shapes():
    from runtime.models import family_of, n_tokens, ModelSpec

    assert [family_of(n) for n in ("hf-vit-base", "distilbert-base", "roberta-base-cls")] == [
        "hf_vit", "distilbert", "roberta"]
    assert n_tokens(ModelSpec("hf-vit-base")) == 197
    assert n_tokens(ModelSpec("roberta-base")) == 256
    ad = _adapter("hf-vit-tiny")
    assert ad.shape.prefix_tokens == 1 and ad.seq_len == 17
