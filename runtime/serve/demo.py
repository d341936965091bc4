"""The main job end to end: emulated network -> profiling sweep -> cost-model fit ->
a request stream served adaptively, with a bandwidth drop mid-run, against always-single,
static Voltage and static Prism.

    python -m runtime demo --out out/demo          (what `make demo` runs)

Each request stream is `python -m runtime serve` (server.py) on P ranks.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from costmodel import checks

from ..errors import UsageError

log = logging.getLogger("runtime.demo")


# --------------------------------------------------------------------------- demo

def add_args(p) -> None:
    p.add_argument("--out", default="out/demo", help="folder for the perf map, model, plots, summary")
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--img-size", type=checks.arg_count(), default=160)
    p.add_argument("--depth", type=checks.arg_count(), default=None)
    p.add_argument("--bw-high", type=checks.arg_positive("Mbit/s"), default=400.0, help="Mbit/s before the drop")
    p.add_argument("--bw-low", type=checks.arg_positive("Mbit/s"), default=40.0, help="Mbit/s after the drop")
    p.add_argument("--batches", default="1,4,16", help="sweep batch sizes")
    p.add_argument("--stream", default="1,16,4,16,2,16,8,1,16,4,16,16",
                   help="request batch sizes (the same stream is replayed after the drop)")
    p.add_argument("--repeats", type=checks.arg_count(), default=3)
    p.add_argument("--testbed", default="auto", help="auto | netns | unshare | loopback")
    p.add_argument("--prefix", default="demo")


def _counts(flag: str, text: str) -> list:
    """Comma-separated batch sizes (integers >= 1), one line naming the flag if not."""
    try:
        out = [checks.count(flag, tok.strip()) for tok in text.split(",") if tok.strip()]
    except checks.CheckError as e:
        raise UsageError(f"{flag} {text!r}: {e}") from None
    if not out:
        raise UsageError(f"{flag} {text!r} must hold comma-separated batch sizes >= 1")
    return out


def _print_table(rows, file=sys.stdout):
    hdr = f"{'policy':<16}{'requests':>9}{'samples':>9}{'total s':>10}{'ms/sample':>11}" \
          f"{'vs voltage':>12}{'vs single':>11}"
    print(hdr, file=file)
    print("-" * len(hdr), file=file)
    base_v = next(r for r in rows if r["policy"] == "voltage")["total_ms"]
    base_s = next(r for r in rows if r["policy"] == "single")["total_ms"]
    for r in rows:
        print(f"{r['policy']:<16}{r['requests']:>9}{r['samples']:>9}{r['total_ms'] / 1e3:>10.2f}"
              f"{r['per_sample_ms']:>11.1f}{(1 - r['total_ms'] / base_v) * 100:>11.1f}%"
              f"{(1 - r['total_ms'] / base_s) * 100:>10.1f}%", file=file)


def memory_budget_case(cm, model_name, seq_len: int, batch: int, bw: float,
                       candidates=(("single", None), ("voltage", None), ("prism", 9.9))) -> dict:
    """The decision hook under a per-device memory budget, from the fitted cost model and
    costmodel.memory (no extra runs): the budget is set halfway between single's predicted
    peak and the largest device peak of the distributed candidates at `batch`, so one
    device cannot hold the job (single does not fit) and the hook picks the fastest mode
    that does. Returns the budget, every candidate's per-device peaks, predicted latency
    and whether it fits, and the choice."""
    import warnings

    from costmodel.decision import DecisionTable

    kw = dict(candidates=list(candidates), seq_len=seq_len, batches=(batch,), bws=(bw,),
              world_size=2, model_name=model_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = DecisionTable(cm, **kw)
        peaks = {lab: free._peak_mb(s, c, batch) for (s, c), lab in zip(free.candidates, free.labels)}
        dist = [max(v) for lab, v in peaks.items() if lab != "single"]
        budget = round((max(peaks["single"]) + max(dist)) / 2, 1)
        d = DecisionTable(cm, max_memory_mb=[budget, budget], **kw).choose(batch, bw)
        unbudgeted = free.choose(batch, bw)["mode"]
    rows = [{"mode": lab, "peak_mb": [round(v, 2) for v in peaks[lab]],
             "fits": all(v <= budget for v in peaks[lab]),
             "latency_ms": free.choose(batch, bw)["predicted"][lab]["latency_ms"]} for lab in free.labels]
    return {"batch": batch, "bw": bw, "max_memory_mb": budget, "rows": rows, "chosen": d["mode"],
            "chosen_without_budget": unbudgeted}


def _print_memory_case(m, file=sys.stdout):
    print(f"\nMemory budget {m['max_memory_mb']:g} MB per device (batch {m['batch']}, "
          f"{m['bw']:g} Mbit/s; cost model + costmodel.memory):", file=file)
    hdr = f"{'mode':<16}{'peak MB per device':>22}{'fits':>6}{'predicted ms':>14}"
    print(hdr, file=file)
    print("-" * len(hdr), file=file)
    for r in m["rows"]:
        mark = "  <- chosen" if r["mode"] == m["chosen"] else ""
        print(f"{r['mode']:<16}{' / '.join(f'{v:.1f}' for v in r['peak_mb']):>22}"
              f"{'yes' if r['fits'] else 'no':>6}{r['latency_ms']:>14.1f}{mark}", file=file)
    print(f"  without the budget the hook picks {m['chosen_without_budget']}", file=file)


def main(a, argv) -> int:
    import tempfile

    from costmodel import safeio
    from costmodel.model import CostModel
    from costmodel.perfmap import atomic_write_text, load_perfmap

    from ..launch import self_argv
    from ..measure.driver import Sweep
    from ..measure.spec import SweepSpec
    from ..netem.testbed import Testbed

    batches = tuple(_counts("--batches", a.batches))
    stream = _counts("--stream", a.stream)
    from ..netem.testbed import MODES
    if a.testbed not in MODES:
        raise UsageError(f"--testbed {a.testbed!r}; allowed: {', '.join(MODES)}")
    safeio.check_writable_dir(a.out)                   # before the sweep, not after it
    for name in ("perfmap.json", "perfmap.raw.jsonl", "costmodel.json", "demo.json", "demo_stream.png"):
        safeio.check_writable(os.path.join(a.out, name))
    try:
        spec = SweepSpec(models=(a.model,), batches=batches, bws=(a.bw_low, a.bw_high), crs=(9.9,),
                         img_sizes=(a.img_size,), world_sizes=(2,), depth=a.depth, repeats=a.repeats,
                         testbed=a.testbed, meter="auto")
    except ValueError as e:
        raise UsageError(str(e)) from None
    t_start = time.time()
    say = lambda *x: print(*x, flush=True)  # noqa: E731
    common = ["--model", a.model, "--img-size", str(a.img_size)] + \
        (["--depth", str(a.depth)] if a.depth else [])

    say(f"== 1/4 profiling sweep: {a.model} img {a.img_size}, batch {list(batches)}, "
        f"bw {a.bw_low:g} and {a.bw_high:g} Mbit/s, single / voltage / prism CR 9.9")
    pm_path = os.path.join(a.out, "perfmap.json")
    raw = os.path.join(a.out, "perfmap.raw.jsonl")
    if os.path.exists(raw):
        os.remove(raw)
    try:
        sweep = Sweep(spec, pm_path, raw, prefix=a.prefix, progress=True)
        sweep.prepare()
    except ValueError as e:
        raise UsageError(str(e)) from None
    safeio.ensure_dir(a.out)
    pmd = sweep.run()
    link = pmd["environment"].get("link_emulation") or {}
    say(f"   {pmd['sweep']['n_records']} configurations in {pmd['sweep']['duration_s']:.0f} s; "
        f"link: {link.get('mode', '?')}, checks {pmd['cluster'].get('link_checks')}")

    say("== 2/4 fitting the cost model on the measured perf map")
    pm = load_perfmap(pm_path)
    cm = CostModel().fit(pm)
    cm_path = os.path.join(a.out, "costmodel.json")
    cm.save(cm_path)
    sc = cm.score(pm)
    say(f"   in-sample latency median APE {sc['latency']['median_ape']:.1f} %, "
        f"within 10 %: {sc['latency']['within_10pct']:.0%}")
    mem_case = memory_budget_case(cm, None, None, max(stream), a.bw_high)   # the fitted model's shape

    say(f"== 3/4 request stream: {len(stream)} batches at {a.bw_high:g} Mbit/s, "
        f"then the link drops to {a.bw_low:g} Mbit/s for {len(stream)} more")
    full_stream = stream + stream
    results = {}
    with Testbed(2, a.bw_high, mode=a.testbed, prefix=a.prefix) as tb:
        shaped = tb.mode != "loopback"
        if shaped:
            tb.measure_bw()
        for pol in ("adaptive", "single", "voltage", "prism"):
            if shaped:
                tb.set_bw(a.bw_high)
            sync = tempfile.mkdtemp(prefix="switch", dir=a.out)
            rows = []

            def on_line(line, rows=rows, sync=sync, pol=pol):
                try:
                    ev = json.loads(line)
                except ValueError:
                    return
                if ev.get("event") == "switch":
                    if shaped:
                        tb.set_bw(a.bw_low)
                    open(os.path.join(sync, "switched"), "w").close()
                    say(f"   [{pol}] link now {a.bw_low:g} Mbit/s" + ("" if shaped else " (loopback: NOT shaped)"))
                elif ev.get("event") == "request":
                    rows.append(ev)
                    if pol == "adaptive":
                        say(f"   [{pol}] #{ev['i']:>2} batch {ev['batch']:>2}: {ev['executed']:<16}"
                            f"{ev['latency_ms']:8.1f} ms  bw est {ev['bw_estimate'] or 0:7.1f} Mbit/s"
                            f"  ({ev['source']}, margin {(ev['margin'] or 0) * 100:.0f} %)")
                elif ev.get("event") == "done":
                    rows.append(ev)

            argv = self_argv(["serve", *common, "--world-size", "2", "--policy", pol,
                              "--costmodel", cm_path, "--perfmap", pm_path,
                              "--stream", ",".join(map(str, full_stream)),
                              "--switch-at", str(len(stream)), "--sync-dir", sync,
                              "--initial-bw", str(tb.link.get("bw_measured") or a.bw_high)])
            tb.launch(argv, timeout_s=1800, on_stdout_line=on_line)
            results[pol] = rows
        link = dict(tb.link)

    say("== 4/4 summary")
    summary = []
    for pol, rows in results.items():
        req = [r for r in rows if r.get("event") == "request"]
        tot = sum(r["latency_ms"] for r in req)
        n = sum(r["batch"] for r in req)
        summary.append({"policy": pol if pol != "prism" else "prism (cr 9.9)", "requests": len(req),
                        "samples": n, "total_ms": tot, "per_sample_ms": tot / max(n, 1)})
    for r in summary:
        r["policy"] = r["policy"] if r["policy"] != "prism (cr 9.9)" else "prism"
    _print_table(summary)
    _print_memory_case(mem_case)
    ad_rows = [r for r in results["adaptive"] if r.get("event") == "request"]
    modes = {}
    for r in ad_rows:
        phase = "before drop" if r["i"] < len(stream) else "after drop"
        modes.setdefault(phase, {}).setdefault(r["executed"], []).append(r["batch"])
    say("\nWhen distributing paid (adaptive choices, batch sizes per mode):")
    for phase, m in modes.items():
        say(f"  {phase}: " + "; ".join(f"{k}: {sorted(v)}" for k, v in m.items()))
    doc = {"schema_version": 1, "link": link, "perfmap": pm_path, "costmodel": cm_path,
           "stream": full_stream, "bw_high": a.bw_high, "bw_low": a.bw_low, "summary": summary,
           "requests": results, "memory_budget": mem_case, "duration_s": time.time() - t_start}
    atomic_write_text(os.path.join(a.out, "demo.json"), json.dumps(doc, indent=1))
    try:
        _plots(a.out, results, stream, a)
        say(f"plots: {a.out}/demo_stream.png")
    except Exception as e:  # noqa: BLE001 - plots are a bonus; the table is the result
        log.warning("plot failed: %s", e)
    say(f"done in {time.time() - t_start:.0f} s; results in {a.out}/demo.json")
    return 0


def _plots(out, results, stream, a):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = {"adaptive": "C3", "single": "C0", "voltage": "C1", "prism": "C2"}
    for pol, rows in results.items():
        req = [r for r in rows if r.get("event") == "request"]
        ax.plot([r["i"] for r in req], [r["per_sample_ms"] for r in req], "o-", ms=4,
                color=colors[pol], label=pol if pol != "prism" else "prism (CR 9.9)", lw=1.5 if pol == "adaptive" else 1)
    ax.axvline(len(stream) - 0.5, color="k", ls="--", lw=1)
    ax.text(len(stream) - 0.3, ax.get_ylim()[1] * 0.95, f"link {a.bw_high:g} -> {a.bw_low:g} Mbit/s",
            va="top", fontsize=9)
    ax.set_xlabel("request index (batch sizes vary)")
    ax.set_ylabel("latency per sample (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{a.model} (img {a.img_size}) on 2 emulated devices: adaptive vs static modes")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    from costmodel import safeio
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    safeio.write_bytes(os.path.join(out, "demo_stream.png"), buf.getvalue())
    plt.close(fig)
