"""Reading the fidelity tables (data/fidelity/**/*.json) into accuracy records (torch-free).

    records, skipped = load_tables()          # every table, sub-folders too
    read_table("data/fidelity/vit_digits_accuracy.json")

A record: model, strategy ("exact" for the unpartitioned reference), world_size, cr or k,
finetuned, variant (the strategy's accuracy-relevant options, completed with the
runtime's defaults), metrics (name -> value as the table gives it), exact (the source's
own exact values, when it states them), source (the file), cr_resolved, depth.

Three kinds of file are read:
- the shipped tables, by their benchmark's reader (`BENCHMARKS`: model key and metrics;
  the row formats are theirs, unchanged);
- any table following the row convention (docs/accuracy.md): `rows` with model (or the
  table's `model_key`), world_size, strategy, cr or k, finetuned and metric values;
- fine-tuning cards (`kind: "prism-edge finetune"`, runtime/train/finetune.py): one
  fine-tuned record from `after`, with the card's own `exact` as its reference.
Anything else (training cards, model configs) is skipped and listed with the reason.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

#: benchmark -> (model key, metrics, primary first); the shipped tables' readers
BENCHMARKS = {
    "fidelity_vit_digits": ("vit_digits", ("accuracy", "agreement")),
    "fidelity_gpt2": ("gpt2_bytes", ("perplexity", "next_byte_accuracy", "agreement")),
    "fidelity_minilm": ("minilm", ("cos_mean", "nn_top1_agreement", "recall_at_5", "cos_p5")),
    "fidelity_smollm2": ("smollm2", ("perplexity", "agreement")),
    "fidelity_coformer": ("vit_digits", ("accuracy", "agreement")),
}
#: fine-tuning task (a card's `task`) -> the model key of its off-the-shelf table
TASK_MODELS = {"digits": "vit_digits", "stdlib-bytes": "gpt2_bytes", "stdlib-text": "minilm"}
KNOWN_METRICS = ("accuracy", "cos_mean", "perplexity", "next_byte_accuracy", "nn_top1_agreement",
                 "agreement", "recall_at_5", "cos_p5")
#: the accuracy-relevant options of a strategy and the runtime's defaults
VARIANT_FIELDS = ("log_bias", "averaged", "assign")
DEFAULT_VARIANT = {"prism": {"log_bias": True, "averaged": "output"}, "coformer": {"assign": "importance"}}
REFERENCE_STRATEGIES = ("exact", "single")     # the unpartitioned model
CARD_KIND = "prism-edge finetune"


def data_root() -> Path:
    env = os.environ.get("PRISM_EDGE_DATA")
    return (Path(env) if env else Path(__file__).resolve().parent.parent / "data") / "fidelity"


def number(v) -> Optional[float]:
    """A finite float, or None (bools, None, strings that are not numbers, NaN, inf)."""
    try:
        x = None if isinstance(v, bool) or v is None else float(v)
    except (TypeError, ValueError):
        return None
    return x if x is not None and math.isfinite(x) else None


def _rel(path: Path) -> str:
    root, p = data_root().resolve().parent.parent, path.resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(path)


def read_table(path) -> tuple:
    """(records, skipped) of one JSON file; skipped: [(what, reason)]."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return [], [(_rel(path), f"unreadable: {e}")]
    if isinstance(doc, dict) and doc.get("kind") == CARD_KIND:
        return _card(doc, _rel(path))
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        return [], [(_rel(path), "no 'rows' list (a training card or metadata)")]
    bench = BENCHMARKS.get(doc.get("benchmark"))
    key = doc.get("model_key") or (bench[0] if bench else None)
    metrics = tuple(doc.get("metrics") or (bench[1] if bench else
                                            [m for m in KNOWN_METRICS if any(m in r for r in rows)]))
    table_defaults = {f: doc[f] for f in ("world_size", "finetuned", "depth") if f in doc}
    if doc.get("benchmark") == "fidelity_smollm2":
        table_defaults["averaged"] = "output"            # the table states it in prose
    variant_fields = tuple(doc.get("variant_fields") or VARIANT_FIELDS)
    records, skipped = [], []
    for i, row in enumerate(rows):
        rec, why = (record({**table_defaults, **row}, key, metrics, variant_fields, _rel(path))
                    if isinstance(row, dict) else (None, "not an object"))
        if rec is None:
            skipped.append((f"{_rel(path)} row {i}", why))
        else:
            records.append({**rec, "row": i, "benchmark": doc.get("benchmark")})
    return records, skipped


def _card(doc: dict, source: str) -> tuple:
    """A fine-tuning card: one fine-tuned record (after), its exact values its own."""
    after, opts = doc.get("after"), doc.get("options") or {}
    key = doc.get("model_key") or TASK_MODELS.get(doc.get("task"))
    if not isinstance(after, dict) or key is None:
        return [], [(source, f"fine-tuning card without 'after' metrics or a known task "
                             f"({doc.get('task')!r}; known: {sorted(TASK_MODELS)})")]
    row = {**{k: v for k, v in opts.items() if k in ("cr", "k", *VARIANT_FIELDS)}, **after,
           "model": key, "strategy": doc.get("strategy"), "world_size": doc.get("world_size"),
           "finetuned": True, "exact": doc.get("exact")}
    metrics = [doc["metric"]] * bool(doc.get("metric")) + [m for m in KNOWN_METRICS if m != doc.get("metric")]
    rec, why = record(row, key, tuple(metrics), VARIANT_FIELDS, source)
    return ([rec], []) if rec is not None else ([], [(source, why)])


def record(r: dict, key, metrics, variant_fields, source):
    """(record, None) of one row, or (None, why it was skipped)."""
    model = r.get("model") if isinstance(r.get("model"), str) and " " not in r["model"] else key
    if not model:
        return None, "no model key (row 'model' or table 'model_key')"
    strategy = r.get("strategy")
    if not isinstance(strategy, str):
        return None, "no strategy"
    if strategy in REFERENCE_STRATEGIES or r.get("setting") == "exact":
        strategy = "exact"
    ws = number(r.get("world_size"))
    if ws is None or ws != int(ws) or ws < 1:
        return None, f"world_size {r.get('world_size')!r} is not an integer >= 1"
    cr = number(r.get("cr"))
    if r.get("cr") is not None and cr is None:
        return None, f"cr {r.get('cr')!r} is not a number (nominal CR only)"
    depth = number(r.get("depth") or r.get("n_layers"))
    k = depth if r.get("k") == "depth" else number(r.get("k"))
    if r.get("k") is not None and k is None:
        return None, f"k {r.get('k')!r} is not a number (or 'depth' with a depth field)"
    vals = {m: number(r.get(m)) for m in metrics if number(r.get(m)) is not None}
    if not vals:
        return None, f"none of the metrics {list(metrics)}"
    fin = r.get("finetuned", r.get("calibrated", False))
    variant = {**DEFAULT_VARIANT.get(strategy, {}),        # an omitted field: the runtime's default
               **{f: r[f] for f in variant_fields if r.get(f) is not None}}
    exact = r.get("exact") if isinstance(r.get("exact"), dict) else {}
    return {"model": model, "strategy": strategy, "world_size": int(ws), "cr": cr,
            "k": None if k is None else float(k), "finetuned": bool(fin),
            "variant": tuple(sorted(variant.items())), "depth": depth, "metrics": vals,
            "exact": {m: number(exact[m]) for m in vals if number(exact.get(m)) is not None},
            "source": source, "cr_resolved": number(r.get("cr_resolved")) or number(r.get("cr_effective_mean"))}, None


def load_tables(root=None) -> tuple:
    """(records, skipped) of every file under root (default data/fidelity/), recursive."""
    root = data_root() if root is None else Path(root)
    records, skipped = [], []
    for p in sorted(root.rglob("*.json")):
        rec, sk = read_table(p)
        records += rec
        skipped += sk
    return dedupe(records, skipped)


def dedupe(records: list, skipped: list) -> tuple:
    """One record per setting (model, strategy, P, cr, k, finetuned, variant). When two
    files hold the same setting, the one kept is, in order: a table row measured on GLOO
    ranks over a fine-tuning card's own figures (emulated forward); the setting's own
    table over finetune_prism's re-measurement of the base weights beside each fine-tuned
    row ("before"); else the first file in path order. Dropped rows are listed in
    `skipped` with the file that holds the kept one."""
    def key(r):
        return (r["model"], r["strategy"], r["world_size"], r["cr"], r["k"], r["finetuned"], r["variant"])

    def rank(r):
        card = r.get("row") is None
        before = r.get("benchmark") == "finetune_prism" and not r["finetuned"]
        return (card, before)

    best: dict = {}
    for r in records:
        k = key(r)
        if k not in best or rank(r) < rank(best[k]):
            best[k] = r
    kept = {id(r) for r in best.values()}
    dropped = [(r["source"] + ("" if r.get("row") is None else f" row {r['row']}"),
                f"duplicate of {best[key(r)]['source']}") for r in records if id(r) not in kept]
    return [r for r in records if id(r) in kept], list(skipped) + dropped
