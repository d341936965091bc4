"""Perf map format (docs/perfmap.md): validation, one-line errors, atomic save, helpers."""
import copy
import json

import pytest

from costmodel.formulas import vit_shape
from costmodel.perfmap import (SCHEMA_VERSION, PerfMap, PerfMapError, load_perfmap,
                               model_entry, save_perfmap, validate_perfmap)


def _record(**kw):
    r = {"strategy": "prism", "model": "vit_tiny_patch16_224", "seq_len": 197, "world_size": 2,
         "batch": 4, "bw": 300.0, "bw_measured": 291.0, "cr": 9.9, "m": 10,
         "exchange": "pairwise", "partition": [99, 98],
         "latency_ms": {"median": 40.0, "p10": 38.0, "p90": 43.0, "n": 5},
         "per_sample_ms": 10.0, "compute_ms": 30.0, "staging_ms": 0.0, "comm_ms": 10.0,
         "comm_bytes": 1000, "staged_bytes": 0, "energy_j": None, "energy_est_j": 1.2,
         "energy_source": "none", "energy_model": "cpu-tdp", "link": None, "error": None}
    r.update(kw)
    return r


def _map(records=None):
    return {"schema_version": SCHEMA_VERSION, "kind": "prism-edge.perfmap", "source": "measured",
            "created": "2026-01-01T00:00:00Z", "units": {"latency_ms": "ms"},
            "environment": {"python": "3.11"}, "cluster": {"world_sizes": [2]},
            "models": [model_entry(vit_shape("vit_tiny_patch16_224", d=192, heads=3))],
            "protocol": {"warmup": 1, "repeats": 5, "statistic": "median"},
            "records": [_record()] if records is None else records}


def test_valid_map_round_trips(tmp_path):
    p = save_perfmap(_map(), tmp_path / "a.json")
    pm = load_perfmap(p)
    assert isinstance(pm, PerfMap) and len(pm) == 1
    assert pm.to_dict() == _map()
    shape = pm.record_shape(pm.records[0])
    assert shape.d == 192 and shape.seq_len == 197 and shape.embed_flops > 0
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(schema_version=2), "schema_version=2 is not supported"),
    (lambda d: d.pop("schema_version"), "schema_version=None"),
    (lambda d: d["records"][0].update(batch=0), "records[0].batch"),
    (lambda d: d["records"][0].update(bw=-5.0), "records[0].bw"),
    (lambda d: d["records"][0].update(energy_j=0.0), "records[0].energy_j"),
    (lambda d: d["records"][0].update(model="nope"), "not in models"),
    (lambda d: d["records"][0].update(energy_source="none", energy_j=3.0), "energy_source 'none'"),
    (lambda d: d["records"][0].pop("latency_ms"), "latency_ms"),
    (lambda d: d.pop("records"), "records"),
    (lambda d: d.update(source="made-up"), "source"),
])
def test_bad_maps_fail_with_one_line(mutate, needle):
    d = copy.deepcopy(_map())
    mutate(d)
    with pytest.raises(PerfMapError) as ei:
        validate_perfmap(d)
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg


def test_error_rows_are_valid_but_not_usable():
    bad = _record(error="RuntimeError: gloo timeout", latency_ms=None, compute_ms=None,
                  staging_ms=None, comm_ms=None, per_sample_ms=None)
    pm = PerfMap.from_dict(_map([_record(), bad]))
    assert len(pm) == 2 and len(pm.usable()) == 1
    # an error row that still carries a latency is inconsistent
    with pytest.raises(PerfMapError):
        validate_perfmap(_map([_record(error="boom")]))


def test_save_refuses_invalid_and_leaves_old_file(tmp_path):
    p = save_perfmap(_map(), tmp_path / "a.json")
    before = p.read_text()
    d = _map()
    d["records"][0]["batch"] = -1
    with pytest.raises(PerfMapError):
        save_perfmap(d, p)
    assert p.read_text() == before


def test_load_reports_corrupt_json(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"schema_version": 1, "records": [')
    with pytest.raises(PerfMapError, match="not valid JSON"):
        load_perfmap(p)
    with pytest.raises(PerfMapError, match="cannot read"):
        load_perfmap(tmp_path / "missing.json")


def test_filter_axes_and_usable_breakdown():
    recs = [_record(batch=b, cr=c) for b in (1, 2, 4) for c in (3.3, 9.9)]
    recs.append(_record(strategy="single", world_size=1, bw=None, cr=None, m=None, batch=2,
                        comm_ms=None))
    pm = PerfMap.from_dict(_map(recs))
    assert pm.axes()["batch"] == [1, 2, 4] and pm.axes()["cr"] == [3.3, 9.9]
    assert len(pm.filter(batch=(1, 2), cr=9.9)) == 2
    assert len(pm.usable(breakdown=True)) == 6   # the single row lacks comm_ms
    assert len(pm.usable(strategies=["single"])) == 1
    with pytest.raises(PerfMapError, match="unknown axis"):
        pm.filter(colour="red")


def test_mean_only_latency_is_accepted():
    r = _record(latency_ms={"median": None, "mean": 50.0, "p10": None, "p90": None, "n": 20})
    pm = PerfMap.from_dict(_map([r]))
    from costmodel.perfmap import record_latency_ms
    assert record_latency_ms(pm.records[0]) == 50.0
    r2 = _record(latency_ms={"median": None, "n": 20})
    with pytest.raises(PerfMapError):
        validate_perfmap(_map([r2]))
