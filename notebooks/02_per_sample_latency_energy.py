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
# # 2. Per-sample latency and energy: adaptive vs Voltage vs single device
#
# The paper's Table 4 and Section 5.2: per-sample latency and energy vs batch for the
# profiling-driven adaptive choice (the fastest measured mode at each batch), static
# Voltage and a single device, with the adaptive gains in %. Energies the perf map does
# not hold (Table 4 gives no single-device energy from batch 8, none for Prism below it)
# are filled by the fitted cost model's energy calibration and drawn with open markers;
# gains that use such an estimate are starred.

# %%
# %matplotlib inline
import csv
import os
import warnings
from pathlib import Path

from IPython.display import display

import costmodel
from costmodel import evaluate, plots
from costmodel.model import CostModel
from costmodel.perfmap import load_perfmap

DATA = evaluate.data_dir()
FIG_DIR = Path(os.environ.get("PRISM_EDGE_FIGURES", DATA.parent / "out" / "figures"))
JETSON = DATA / "perfmaps" / "jetson_orin_nano_paper.json"
TESTBED = evaluate.testbed_maps()


def show_gains(g):
    print(f"{'batch':>5} {'mode':>7} | {'ms/sample: single':>17} {'Voltage':>8} {'adaptive':>9} | "
          f"{'J/sample: Voltage':>17} {'adaptive':>9} | {'gain vs V: lat %':>16} {'energy %':>9} | "
          f"{'vs single: lat %':>16}")
    for j, b in enumerate(g["batch"]):
        L, E, G = g["latency_ms"], g["energy_j"], g["gain_pct"]
        print(f"{b:5d} {g['adaptive_mode'][j]:>7} | {L['single'][j]:17.1f} {L['voltage'][j]:8.1f} "
              f"{L['adaptive'][j]:9.1f} | {E['voltage'][j]:17.3f} {E['adaptive'][j]:9.3f} | "
              f"{G['latency_vs_voltage'][j]:16.1f} {G['energy_vs_voltage'][j]:9.1f} | "
              f"{G['latency_vs_single'][j]:16.1f}")


# %% [markdown]
# ## Jetson Orin Nano (paper Tables 2 and 4; model: the shipped `jetson-orin-nano` profile)

# %%
jetson = load_perfmap(JETSON)
profile = costmodel.load_profile("jetson-orin-nano")
g = evaluate.adaptive_gains(jetson, model=profile)
show_gains(g)

# %% [markdown]
# The gains computed from the perf map agree with the gains the paper prints in Table 4
# (the paper rounds its energies, so energy gains can differ by a few tenths):

# %%
with open(DATA / "jetson-orin-nano" / "adaptive_vs_voltage.csv") as f:
    table4 = {int(r["batch"]): r for r in csv.DictReader(f)}
for j, b in enumerate(g["batch"]):
    lat, en = g["gain_pct"]["latency_vs_voltage"][j], g["gain_pct"]["energy_vs_voltage"][j]
    t = table4[int(b)]
    print(f"batch {b:2d}: latency gain {lat:5.1f} % (paper {t['latency_gain_pct']} %), "
          f"energy gain {en:5.1f} % (paper {t['energy_gain_pct']} %)")
    assert abs(lat - float(t["latency_gain_pct"])) < 0.5 and abs(en - float(t["energy_gain_pct"])) < 0.5

# %%
fig = plots.plot_per_sample(jetson, model=profile,
                            title="Per-sample latency and energy, Jetson Orin Nano (paper Tables 2 and 4)")
plots.save_figure(fig, FIG_DIR / "jetson_per_sample.png")
fig

# %% [markdown]
# At batch 32 the adaptive choice (Prism) takes about 42 ms per sample against 120 ms for
# Voltage and 58 ms on one board, the numbers the paper's text states.
#
# ## Emulated testbed
#
# Energy on the testbed comes from the power model (`energy_est_j`, labelled) unless the
# map holds a measured `energy_j`. The model that fills gaps is fitted here on the map.

# %%
if not TESTBED:
    print("NOTE: no testbed perf map found (data/perfmaps/testbed_*.json); the testbed figure "
          "is skipped. Set PRISM_EDGE_TESTBED_MAP to a perf map to use another one.")
else:
    testbed = load_perfmap(TESTBED[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = CostModel(cv_folds=3, residual_estimators=60).fit(testbed)
    for which in ("max", "min"):
        gt = evaluate.adaptive_gains(testbed, model=cm, bw=which)
        print(f"\n{TESTBED[0].name} ({testbed.source}), bw = {gt['selection']['bw']} Mbit/s")
        show_gains(gt)
    f = plots.plot_per_sample(testbed, model=cm, bw="max",
                              title=f"Per-sample latency and energy, testbed ({TESTBED[0].name})")
    plots.save_figure(f, FIG_DIR / "testbed_per_sample.png")
    display(f)
