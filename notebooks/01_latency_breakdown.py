# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Latency breakdown vs batch: where the time goes
#
# The Jetson paper's Fig. 4(a) from its own figures (Table 2), and the same plot from an
# emulated-testbed perf map. Bars split each strategy's latency into compute, CPU-GPU
# staging and communication (what the phase timers do not claim is "other"); a star marks
# the adaptive choice, the fastest measured strategy at that batch. Latency is shown **per
# sample** (batch latency / batch) so batch 1 and batch 32 share one readable axis.
#
# Everything comes from the perf maps in `data/perfmaps/` through `costmodel`; nothing is
# profiled or re-derived here.

# %%
# %matplotlib inline
import csv
import os
from pathlib import Path

from IPython.display import display

from costmodel import evaluate, plots
from costmodel.perfmap import load_perfmap

DATA = evaluate.data_dir()
FIG_DIR = Path(os.environ.get("PRISM_EDGE_FIGURES", DATA.parent / "out" / "figures"))
JETSON = DATA / "perfmaps" / "jetson_orin_nano_paper.json"
TESTBED = evaluate.testbed_maps()
print("figures go to", FIG_DIR)
print("testbed perf maps:", [str(p) for p in TESTBED] or "none")

# %% [markdown]
# ## Jetson Orin Nano, ViT-B/16 (paper Table 2)

# %%
jetson = load_perfmap(JETSON)
table, sel = evaluate.measured_table(jetson)
choice = evaluate.adaptive_choice(table)
print(f"{'strategy':8} {'batch':>5} {'compute':>8} {'staging':>8} {'comm':>8} {'total ms':>9}")
for s, t in table.items():
    for i, b in enumerate(t["batch"]):
        mark = "  <- adaptive" if choice[int(b)] == s else ""
        print(f"{s:8} {b:5d} {t['compute_ms'][i]:8.1f} {t['staging_ms'][i]:8.1f} "
              f"{t['comm_ms'][i]:8.1f} {t['latency_ms'][i]:9.1f}{mark}")

# %% [markdown]
# The adaptive choice read off the perf map must be the policy of the paper's Table 4
# (single device at batch 1-4, Prism from batch 8):

# %%
with open(DATA / "jetson-orin-nano" / "adaptive_vs_voltage.csv") as f:
    paper_mode = {int(r["batch"]): r["prism_adaptive_mode"] for r in csv.DictReader(f)}
print("paper Table 4:", paper_mode)
print("perf map     :", choice)
assert choice == paper_mode, "the fastest measured strategy differs from the paper's adaptive policy"

# %%
fig = plots.plot_breakdown(jetson, title="Latency breakdown vs batch, Jetson Orin Nano (paper Table 2)")
plots.save_figure(fig, FIG_DIR / "jetson_breakdown.png")
fig

# %% [markdown]
# Voltage's CPU-GPU staging alone exceeds the single-device time at batch 1 (94 ms vs
# 80.6 ms); Prism's segment means shrink staging and communication enough to win from
# batch 8 on.
#
# ## Emulated testbed
#
# The first `data/perfmaps/testbed_*.json` (or the map named by `PRISM_EDGE_TESTBED_MAP`),
# at its highest and lowest link rate.

# %%
if not TESTBED:
    print("NOTE: no testbed perf map found (data/perfmaps/testbed_*.json); the testbed figures "
          "are skipped. Produce one with `python -m runtime profile ... --out "
          "data/perfmaps/testbed_<name>.json` or set PRISM_EDGE_TESTBED_MAP to a perf map.")
else:
    testbed = load_perfmap(TESTBED[0])
    print(f"{TESTBED[0].name}: source={testbed.source}, {len(testbed.usable())} usable records")
    figs = {}
    for which in ("max", "min"):
        t, s = evaluate.measured_table(testbed, bw=which)
        if which == "min" and s["bw"] == figs.get("max"):
            break
        figs[which] = s["bw"]
        f = plots.plot_breakdown(testbed, bw=which,
                                 title=f"Latency breakdown vs batch, testbed ({TESTBED[0].name})")
        plots.save_figure(f, FIG_DIR / f"testbed_breakdown_{which}_bw.png")
        print(f"bw = {s['bw']} Mbit/s: adaptive choice", evaluate.adaptive_choice(t))
        display(f)
