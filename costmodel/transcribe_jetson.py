"""Transcribe the Jetson Orin Nano paper's figures into a perf map (source "transcribed").

    python -m costmodel.transcribe_jetson [--src data/jetson-orin-nano] \
        [--out data/perfmaps/jetson_orin_nano_paper.json]

Reads the CSV transcriptions of the paper's tables in data/jetson-orin-nano/ and writes
one perf map. What is measured in the
paper and what is derived here, record by record (`provenance`):

- Table 2 (18 rows): strategy x batch 1..32 with compute / "Other" (CPU-GPU staging) /
  communication / total, means over 20 runs: *measured*. The link rate of this table is
  not stated in the text (the value was lost with the paper's math), so `bw` is null and
  `link.rate_mbit` is null; the cost model needs an assumption for it (docs/costmodel.md).
- Table 4 energies (J per batch, jtop/INA3221): *measured*; attached to the Table 2 rows
  whose latencies Table 4 repeats (Voltage b1..32, Prism b8..32, single b1..4 — the
  adaptive policy's "single" mode). Table 4 gives 80.7 ms at b1 where Table 2 has 80.6.
  Whether the energy is one board's or both boards' is not stated.
- The batch-16 run of section 5.3 (Prism 1.10 s / 8.61 J, Voltage 2.30 s / 18.50 J): a
  separate run under unstated conditions, 56 % slower than Table 2's Prism b16; kept as
  rows with no breakdown and `exclude` set, so fitting and scoring skip them.
- Text claims (not rows): per-sample latency at b32 (about 42 / 120 / 58 ms: Table 2
  divided by 32, i.e. derived), the Prism-vs-single bandwidth crossover near 340 Mbit/s
  (the batch of that sweep is not legible in the text), the adaptive crossover at batch 8.
- `per_sample_ms` is latency / batch (derived); `comm_bytes` / `staged_bytes` are null
  (the paper reports no byte counts; the cost model computes them from formulas.py).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

from .formulas import vit_shape
from .perfmap import SCHEMA_VERSION, model_entry, save_perfmap

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SRC = REPO / "data" / "jetson-orin-nano"
DEFAULT_OUT = REPO / "data" / "perfmaps" / "jetson_orin_nano_paper.json"
PAPER = ("Profiling-Driven Adaptive Distributed Transformer Inference on Embedded Edge "
         "Deployment (Jetson Orin Nano, Prism case study)")
MODEL = "vit_base_patch16_224"
LINK = {"medium": "WiFi 6E, Intel AX210 (paper: up to 1 Gbps), one router",
        "shaper": "tc netem on the terminal device (200-900 Mbit/s in the sweep)",
        "rate_mbit": None,
        "note": "rate of Table 2 not stated in the text; most likely the unthrottled link"}


def _f(x: str):
    return None if x == "" else float(x)


def _row(strategy, batch, total, compute, staging, comm, *, provenance, cr=None, m=None,
         energy=None, exclude=None):
    dist = strategy != "single"
    r = {
        "strategy": strategy, "model": MODEL, "seq_len": 197, "world_size": 2 if dist else 1,
        "batch": batch, "bw": None, "bw_measured": None, "cr": cr, "m": m,
        "exchange": "allgather", "partition": [99, 98] if dist else [197],
        "latency_ms": {"median": None, "mean": total, "p10": None, "p90": None, "n": 20},
        "per_sample_ms": round(total / batch, 4),
        "compute_ms": compute, "staging_ms": staging, "comm_ms": comm,
        "comm_bytes": None, "staged_bytes": None,
        "energy_j": energy, "energy_est_j": None,
        "energy_source": "jtop" if energy is not None else "none", "energy_model": None,
        "link": dict(LINK) if dist else None, "error": None, "provenance": provenance,
    }
    if exclude:
        r["exclude"] = exclude
    return r


def build(src: Path = DEFAULT_SRC) -> dict:
    """The perf map dict (deterministic: same CSVs, same bytes)."""
    src = Path(src)
    with open(src / "latency_breakdown.csv") as f:
        t2 = list(csv.DictReader(f))
    with open(src / "adaptive_vs_voltage.csv") as f:
        t4 = {int(r["batch"]): r for r in csv.DictReader(f)}
    records = []
    for r in t2:
        s, b = r["strategy"], int(r["batch"])
        total, comp, stag, comm = (float(r[k]) for k in ("total_ms", "compute_ms", "staging_ms", "comm_ms"))
        prov = "Table 2 (latency breakdown, mean of 20 runs)"
        energy = None
        row4 = t4.get(b)
        if row4 is not None:
            if s == "voltage" and abs(float(row4["voltage_latency_ms"]) - total) < 0.05:
                energy = float(row4["voltage_energy_j"])
            elif s in ("single", "prism") and row4["prism_adaptive_mode"] == s:
                lat4 = float(row4["prism_adaptive_latency_ms"])
                if abs(lat4 - total) > 0.5:
                    raise ValueError(f"Table 4 b{b} {s} latency {lat4} does not match Table 2 {total}")
                energy = float(row4["prism_adaptive_energy_j"])
                if lat4 != total:
                    prov += f"; Table 4 repeats it as {lat4} ms"
            if energy is not None:
                prov += "; energy_j from Table 4 (jtop, J per batch)"
        if s == "single":
            records.append(_row("single", b, total, comp, stag, comm, provenance=prov,
                                energy=energy))
        elif s == "prism":
            records.append(_row("prism", b, total, comp, stag, comm, provenance=prov,
                                cr=float(r["cr"]), m=int(r["segment_means"]), energy=energy))
        elif s == "voltage":
            # the CSV writes Voltage as 99 "means" / CR 1 (full features); the schema has cr null
            records.append(_row("voltage", b, total, comp, stag, comm, provenance=prov,
                                energy=energy))
        else:
            raise ValueError(f"unknown strategy {s!r} in {src / 'latency_breakdown.csv'}")
    why = ("separate run (section 5.3, Fig. 5) under unstated conditions; Prism is 56 % "
           "slower than Table 2 at the same batch, so it is kept for reference only")
    records.append(_row("prism", 16, 1100.0, None, None, None, cr=9.9, m=10, energy=8.61,
                        provenance="text section 5.3: 'Prism completes this batch in 1.10 s with 8.61 J'",
                        exclude=why))
    records.append(_row("voltage", 16, 2300.0, None, None, None, energy=18.50,
                        provenance="text section 5.3: '2.30 s and 18.50 J for Voltage'",
                        exclude=why))
    # CIFAR-10 head; the paper's Prism averaged the CLS row with the patches (no prefix row)
    shape = dataclasses.replace(vit_shape(MODEL, num_classes=10), prefix_tokens=0)
    return {
        "schema_version": SCHEMA_VERSION, "kind": "prism-edge.perfmap", "source": "transcribed",
        "created": "transcribed from the paper text (../shared/seeds/prism-jetson-profiling-paper.txt)",
        "units": {"latency_ms": "ms", "bw": "Mbit/s", "energy_j": "J", "comm_bytes": "bytes",
                  "per_sample_ms": "ms", "compute_ms": "ms", "staging_ms": "ms", "comm_ms": "ms"},
        "environment": {"torch": "2.x (paper: 'PyTorch 2.x')", "python": None, "kernel": None,
                        "cpu": "ARM Cortex (Jetson Orin Nano SoC)",
                        "gpu": "Ampere iGPU, 1024 CUDA cores, unified 8 GB LPDDR5",
                        "backend": "gloo (CPU-staged; NCCL unavailable on the iGPU)",
                        "power": "7-25 W configurable power mode (paper Table 1)",
                        "link_emulation": {"method": "tc netem on the terminal device",
                                           "range_mbit": [200, 900]}},
        "cluster": {"world_sizes": [1, 2], "devices": "2x NVIDIA Jetson Orin Nano 8 GB (homogeneous)",
                    "link": LINK["medium"], "staging": "GPU->CPU->net->CPU->GPU per exchanged tensor"},
        "models": [model_entry(shape)],
        "protocol": {"warmup": "a few (not stated)", "repeats": 20, "statistic": "mean",
                     "exchange": "allgather", "energy": "jtop (INA3221), J per batch"},
        "sweep": {"axes": {"strategy": ["single", "voltage", "prism"], "batch": [1, 2, 4, 8, 16, 32],
                           "bw": [None], "cr": [9.9], "seq_len": [197], "world_size": [1, 2]},
                  "duration_s": None},
        "paper": {"title": PAPER, "text": "../shared/seeds/prism-jetson-profiling-paper.txt",
                  "tables": {"2": "latency breakdown", "3": "GFLOPs and accuracy", "4": "adaptive vs Voltage"}},
        "claims": [
            {"kind": "bw_crossover", "a": "prism", "b": "single", "cr": 9.9, "bw": 340.0,
             "batch": None, "status": "stated in text, figure not available",
             "text": "Prism crosses the single-device baseline near 340 Mbps and continues to improve above it"},
            {"kind": "batch_crossover", "a": "prism", "b": "single", "cr": 9.9, "batch": 8,
             "status": "stated in text; consistent with Table 2 (single wins at 1..4, Prism at 8..32)",
             "text": "From batch 8 onward, distributed Prism consistently outperforms single-device inference"},
            {"kind": "per_sample_ms", "batch": 32, "values": {"prism": 42.0, "voltage": 120.0, "single": 58.0},
             "status": "derived: Table 2 totals / 32 (41.9 / 120.1 / 58.3)",
             "text": "At batch 32, Prism achieves approximately 42 ms per sample, compared to 120 ms for Voltage and 58 ms for single-device execution"},
        ],
        "records": records,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=str(DEFAULT_SRC))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)
    p = save_perfmap(build(Path(a.src)), a.out)
    print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
