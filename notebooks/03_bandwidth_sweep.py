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
# # 3. Bandwidth sweep: from which link rate does distributing pay?
#
# Per-sample latency of single device, Voltage and Prism (CR 9.9) over 200-900 Mbit/s
# from the fitted cost model, with the Prism / single-device crossover found on the
# model's curves and annotated. The paper states Prism "crosses the single-device
# baseline near 340 Mbps" (its Fig. 6, whose batch size is not legible).
#
# **Caveat.** Table 2 has no bandwidth axis, so the Jetson profile was fitted at one link
# rate (the unthrottled link, assumed 1000 Mbit/s): its bandwidth dependence comes from
# the physics (bytes / (bw x efficiency)), calibrated there, and the curves below
# extrapolate. The crossover therefore scales with that assumption (docs/costmodel.md).
# The testbed maps sweep bw, so there the model interpolates between measured rates.

# %%
# %matplotlib inline
import os
import warnings
from pathlib import Path

import numpy as np
from IPython.display import display

import costmodel
from costmodel import evaluate, plots
from costmodel.model import CostModel
from costmodel.perfmap import load_perfmap

DATA = evaluate.data_dir()
FIG_DIR = Path(os.environ.get("PRISM_EDGE_FIGURES", DATA.parent / "out" / "figures"))
JETSON = DATA / "perfmaps" / "jetson_orin_nano_paper.json"
TESTBED = evaluate.testbed_maps()

# %% [markdown]
# ## Jetson profile
#
# `costmodel.predict` is the one-call API on the shipped profile; the crossover search
# uses the same fitted `CostModel` over a 5 Mbit/s grid.

# %%
print("costmodel.predict(16, 340, 9.9):",
      {k: round(v, 1) for k, v in costmodel.predict(16, 340, 9.9)["breakdown"].items()})
profile = costmodel.load_profile("jetson-orin-nano")
jetson = load_perfmap(JETSON)
claim = next(c["bw"] for c in jetson.meta["claims"] if c["kind"] == "bw_crossover")
for b in (4, 8, 16, 32):
    sw = evaluate.bandwidth_sweep(profile, batch=b, cr=9.9)
    x = sw["crossover_bw"]["prism"]
    v = sw["crossover_bw"]["voltage"]
    print(f"batch {b:2d}: Prism beats single above "
          + (f"{x:5.0f} Mbit/s" if x else "  -- (no crossover in 200-900)")
          + f";  Voltage {'never does' if v is None else f'above {v:.0f} Mbit/s'}  (paper: ~{claim:g})")

# %%
fig = plots.plot_bandwidth(profile, perfmap=jetson, batches=(8, 16, 32), cr=9.9,
                           bws=np.arange(200.0, 900.1, 5.0),
                           title="Bandwidth sweep, Jetson Orin Nano profile (cost model)")
plots.save_figure(fig, FIG_DIR / "jetson_bandwidth.png")
fig

# %% [markdown]
# Voltage stays bandwidth-bound and above the single device over the whole range, and
# Prism crosses it between about 250 and 450 Mbit/s depending on the batch, bracketing the
# paper's ~340 Mbit/s.
#
# ## Emulated testbed: measured points and a model fitted on them

# %%
if not TESTBED:
    print("NOTE: no testbed perf map found (data/perfmaps/testbed_*.json); the testbed figure "
          "is skipped. Set PRISM_EDGE_TESTBED_MAP to a perf map to use another one.")
else:
    testbed = load_perfmap(TESTBED[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = CostModel(cv_folds=3, residual_estimators=60).fit(testbed)
    sel = evaluate.select_slice(testbed)
    batches = sorted({r["batch"] for r in testbed.usable() if r["strategy"] != "single"})[-3:]
    print(f"{TESTBED[0].name} ({testbed.source}): bw range {cm.ranges_['bw']} Mbit/s, slice {sel}")
    for b in batches:
        sw = evaluate.bandwidth_sweep(cm, batch=b, cr=sel["cr"], bws=evaluate.default_bws(cm),
                                   seq_len=sel["seq_len"], world_size=sel["world_size"], model_name=sel["model"])
        x = sw["crossover_bw"]["prism"]
        print(f"batch {b:3d}: Prism beats single above " + (f"{x:.0f} Mbit/s" if x else "-- (none in range)"))
    f = plots.plot_bandwidth(cm, perfmap=testbed, batches=batches, cr=sel["cr"], seq_len=sel["seq_len"],
                             world_size=sel["world_size"], model_label="model", model_name=sel["model"],
                             title=f"Bandwidth sweep, testbed ({TESTBED[0].name}): measured and fitted")
    plots.save_figure(f, FIG_DIR / "testbed_bandwidth.png")
    display(f)
