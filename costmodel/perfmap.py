"""Read, validate and write performance maps (docs/perfmap.md). Torch-free.

A perf map is one JSON file per profiling sweep: `schema_version`, units, environment,
cluster, the model shapes the records refer to, the protocol and the records. Every file
is validated on load (JSON Schema `perfmap.schema.json` plus a few cross-field checks) and
a bad file fails with one line that says what is wrong. Files are written atomically
(temp file in the same folder, fsync, `os.replace`), so a killed writer never leaves half
a file. No pickle anywhere.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from . import safeio
from .formulas import ModelShape, shape_extras, shape_from_entry

SCHEMA_VERSION = 1
KIND = "prism-edge.perfmap"
SCHEMA_PATH = Path(__file__).with_name("perfmap.schema.json")
SOURCES = ("measured", "transcribed", "synthetic")
PHASES = ("compute_ms", "staging_ms", "comm_ms")
AXES = ("strategy", "model", "batch", "bw", "cr", "seq_len", "world_size")


class PerfMapError(ValueError):
    """A perf map that cannot be used: wrong version, wrong shape, inconsistent records."""


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _where(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top>"


def _non_finite(x: Any, path: tuple = ()):
    """(path, value) of the first NaN or infinite number in a JSON-like tree, else None
    (json.loads reads NaN / Infinity literals as floats; the schema's "number" admits them)."""
    if isinstance(x, float):
        return None if math.isfinite(x) else (path, x)
    if isinstance(x, dict):
        for k, v in x.items():
            hit = _non_finite(v, path + (k,))
            if hit is not None:
                return hit
    elif isinstance(x, list):
        for i, v in enumerate(x):
            hit = _non_finite(v, path + (i,))
            if hit is not None:
                return hit
    return None


def validate_perfmap(d: Any) -> dict:
    """Validate a perf map given as a dict; returns it unchanged or raises PerfMapError
    with one line naming the offending field and what is allowed."""
    if not isinstance(d, dict):
        raise PerfMapError(f"perf map must be a JSON object, got {type(d).__name__}")
    v = d.get("schema_version")
    if v != SCHEMA_VERSION:
        raise PerfMapError(f"perf map schema_version={v!r} is not supported; this reader "
                           f"handles schema_version {SCHEMA_VERSION}")
    if d.get("kind") != KIND:
        raise PerfMapError(f"perf map kind={d.get('kind')!r}; expected {KIND!r}")
    import jsonschema

    errs = sorted(_validator().iter_errors(d), key=lambda e: (len(list(e.absolute_path)),
                                                               list(map(str, e.absolute_path))))
    if errs:
        e = jsonschema.exceptions.best_match(errs)
        msg = e.message if len(e.message) < 200 else e.message[:200] + "..."
        raise PerfMapError(f"perf map invalid at {_where(e.absolute_path)}: {msg}")
    bad = _non_finite(d)
    if bad is not None:
        raise PerfMapError(f"perf map invalid at {_where(bad[0])}: {bad[1]} is not a finite "
                           f"number (NaN and infinities are not allowed)")
    names = {(m["name"], m["seq_len"]) for m in d["models"]}
    for i, r in enumerate(d["records"]):
        if (r["model"], r["seq_len"]) not in names:
            raise PerfMapError(f"perf map invalid at records[{i}]: model {r['model']!r} with "
                               f"seq_len={r['seq_len']} is not in models {sorted(names)}")
        if r["energy_source"] == "none" and r.get("energy_j") is not None:
            raise PerfMapError(f"perf map invalid at records[{i}]: energy_j={r['energy_j']} "
                               f"with energy_source 'none' (no sensor means energy_j null)")
        if r["strategy"] == "single" and r["world_size"] != 1:
            raise PerfMapError(f"perf map invalid at records[{i}]: strategy 'single' with "
                               f"world_size={r['world_size']}; single runs on 1 device")
    return d


def record_latency_ms(r: dict) -> float | None:
    """Batch latency of a record in ms: the median, or the mean where the source only
    reports a mean (transcribed papers); None for a failed configuration."""
    lat = r.get("latency_ms")
    if not lat:
        return None
    v = lat.get("median")
    return float(v) if v is not None else (float(lat["mean"]) if lat.get("mean") is not None else None)


@dataclass
class PerfMap:
    """A validated perf map: `meta` holds every top-level key except the records."""

    meta: dict
    records: list = field(default_factory=list)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, d: dict) -> "PerfMap":
        validate_perfmap(d)
        meta = {k: v for k, v in d.items() if k != "records"}
        return cls(meta=meta, records=[dict(r) for r in d["records"]])

    def to_dict(self) -> dict:
        return {**self.meta, "records": self.records}

    # ----------------------------------------------------------------- queries
    @property
    def source(self) -> str:
        return self.meta["source"]

    @property
    def models(self) -> list:
        return self.meta["models"]

    def shape(self, model: str, seq_len: int) -> ModelShape:
        """formulas.ModelShape of a (model, seq_len) the records refer to."""
        for m in self.models:
            if m["name"] == model and m["seq_len"] == seq_len:
                return shape_from_entry(m)
        raise PerfMapError(f"model {model!r} with seq_len={seq_len} is not in this perf map")

    def record_shape(self, r: dict) -> ModelShape:
        return self.shape(r["model"], r["seq_len"])

    def usable(self, *, breakdown: bool = False, energy: bool = False,
               strategies: Iterable[str] | None = None) -> list:
        """Records a model can learn from: no error, a latency and no `exclude` note (a
        record kept for reference only, e.g. a paper's run under unstated conditions);
        with `breakdown` also all three phase times; with `energy` a measured energy_j."""
        strategies = None if strategies is None else set(strategies)
        out = []
        for r in self.records:
            if r.get("error") or r.get("exclude") or record_latency_ms(r) is None:
                continue
            if strategies is not None and r["strategy"] not in strategies:
                continue
            if breakdown and any(r.get(p) is None for p in PHASES):
                continue
            if energy and r.get("energy_j") is None:
                continue
            out.append(r)
        return out

    def filter(self, **axes) -> "PerfMap":
        """Records whose axis values match: a scalar or a collection per axis,
        e.g. `pm.filter(strategy=("single", "prism"), batch=8)`."""
        for k in axes:
            if k not in AXES:
                raise PerfMapError(f"unknown axis {k!r}; axes: {list(AXES)}")

        def ok(r):
            for k, want in axes.items():
                vals = want if isinstance(want, (list, tuple, set, frozenset)) else (want,)
                if r.get(k) not in vals:
                    return False
            return True

        return PerfMap(meta=dict(self.meta), records=[r for r in self.records if ok(r)])

    def axes(self, *, usable_only: bool = True) -> dict:
        """Sorted distinct values of each axis (None excluded) over the (usable) records."""
        recs = self.usable() if usable_only else self.records
        out = {}
        for k in AXES:
            vals = {r.get(k) for r in recs if r.get(k) is not None}
            out[k] = sorted(vals)
        return out

    def __len__(self) -> int:
        return len(self.records)


def load_perfmap(path: str | os.PathLike) -> PerfMap:
    """Load and validate a perf map JSON file (raises PerfMapError with one line)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PerfMapError(f"cannot read perf map {p}: {e.strerror or e}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise PerfMapError(f"perf map {p} is not valid JSON: {e.msg} at line {e.lineno}") from None
    try:
        return PerfMap.from_dict(d)
    except PerfMapError as e:
        raise PerfMapError(f"{p}: {e}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to path atomically (safeio.write_text: temp file in the same folder,
    fsync, os.replace; a non-regular target is refused; WriteError with one line)."""
    safeio.write_text(path, text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to path atomically (safeio.write_bytes; a killed writer never leaves
    half a file, a failed one leaves no temp file)."""
    safeio.write_bytes(path, data)


def axis_values(records: Iterable[dict], axis: str) -> list:
    """Values of `axis` a leave-one-value-out can hold out: sorted, None dropped, and for
    world_size only P > 1 (single's P = 1 is not a held-out value)."""
    vals = sorted({r.get(axis) for r in records if r.get(axis) is not None})
    return [v for v in vals if v > 1] if axis == "world_size" else vals


def save_perfmap(obj: "PerfMap | dict", path: str | os.PathLike) -> Path:
    """Validate and write a perf map atomically; nothing is written if it is invalid."""
    d = obj.to_dict() if isinstance(obj, PerfMap) else obj
    validate_perfmap(d)
    atomic_write_text(path, json.dumps(d, indent=1, allow_nan=False) + "\n")
    return Path(path)


def model_entry(shape: ModelShape) -> dict:
    """The `models[]` entry for a formulas.ModelShape."""
    return {"name": shape.name, "seq_len": shape.seq_len, "d": shape.d, "heads": shape.heads,
            "d_ff": shape.d_ff, "n_layers": shape.n_layers,
            "embed_flops": float(shape.embed_flops), "head_flops": float(shape.head_flops),
            **shape_extras(shape)}


# protocol keys that change what a record measures; maps that differ in one are not merged
MERGE_PROTOCOL_KEYS = ("statistic", "threads_per_rank", "exchange", "device", "depth", "patch_size",
                       "delay_ms", "latency", "phases")


def _config_key(r: dict) -> str:
    """What a record measures: its axes plus any tensor_parallel / galaxy options."""
    return json.dumps([r.get(k) for k in ("strategy", "model", "seq_len", "world_size", "batch", "bw",
                                          "cr", "m", "heads", "cols", "collective", "tiles")])


def record_key(r: dict) -> str:
    """A record's identity within a map: the sweep's `key` where it wrote one, else the
    configuration key."""
    return r.get("key") or _config_key(r)


def merge_perfmaps(*maps: "PerfMap | str | os.PathLike") -> PerfMap:
    """One perf map from several sweeps of the same testbed, e.g. single/voltage/prism
    plus tensor_parallel/galaxy (`merge_perfmaps("testbed_vit_p2.json",
    "testbed_vit_tp.json")`), for fitting one cost model on both.

    Checks (PerfMapError with one line): the same source and units; the same protocol
    in every key that changes what a record measures (MERGE_PROTOCOL_KEYS, where both
    maps state it); a (model, seq_len) that several maps list has the same shape; no
    configuration measured twice. Records are concatenated in order; `models` is the
    union; the first map's meta is kept, with `merged_from` in `sweep` naming every
    map's `created` and record count. The result is validated."""
    if len(maps) < 2:
        raise PerfMapError(f"merge_perfmaps needs at least 2 perf maps, got {len(maps)}")
    pms = [m if isinstance(m, PerfMap) else load_perfmap(m) for m in maps]
    first = pms[0]
    models = {(m["name"], m["seq_len"]): m for m in first.models}
    shape_keys = ("d", "heads", "d_ff", "n_layers", "embed_flops", "head_flops")
    seen = {}
    for j, pm in enumerate(pms):
        if j:
            if pm.source != first.source:
                raise PerfMapError(f"cannot merge perf map {j} (source {pm.source!r}) with source "
                                   f"{first.source!r}")
            if pm.meta.get("units") != first.meta.get("units"):
                raise PerfMapError(f"cannot merge perf map {j}: its units differ from the first map's")
            pa, pb = first.meta.get("protocol", {}), pm.meta.get("protocol", {})
            for k in MERGE_PROTOCOL_KEYS:
                if k in pa and k in pb and pa[k] != pb[k]:
                    raise PerfMapError(f"cannot merge perf map {j}: protocol.{k}={pb[k]!r} differs from "
                                       f"{pa[k]!r}")
            for m in pm.models:
                key = (m["name"], m["seq_len"])
                if key in models:
                    a = models[key]
                    diff = [k for k in shape_keys if a.get(k) != m.get(k)]
                    if diff:
                        raise PerfMapError(f"cannot merge perf map {j}: model {key[0]!r} seq_len={key[1]} "
                                           f"has a different {diff[0]} ({m.get(diff[0])!r} vs {a.get(diff[0])!r})")
                else:
                    models[key] = m
        for r in pm.records:
            k = _config_key(r)
            if k in seen:
                raise PerfMapError(f"cannot merge: {r['strategy']} {r['model']} seq_len={r['seq_len']} "
                                   f"P={r['world_size']} batch={r['batch']} bw={r.get('bw')} cr={r.get('cr')} "
                                   f"is in perf map {seen[k]} and perf map {j}")
            seen[k] = j
    meta = json.loads(json.dumps(first.meta))
    meta["models"] = list(models.values())
    sweep = dict(meta.get("sweep") or {})
    sweep["merged_from"] = [{"created": pm.meta.get("created"), "n_records": len(pm.records),
                             "axes": (pm.meta.get("sweep") or {}).get("axes")} for pm in pms]
    meta["sweep"] = sweep
    d = {**meta, "records": [dict(r) for pm in pms for r in pm.records]}
    validate_perfmap(d)
    return PerfMap.from_dict(d)
