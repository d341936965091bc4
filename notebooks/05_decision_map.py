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
# # 5. The decision map: which mode to run, and what it gains
#
# The runtime's decision hook (`costmodel.decision.DecisionTable`) precomputes the best
# candidate (single device, Voltage, Prism at CR 3.3 / 4.95 / 9.9) over a batch x bw
# grid. Left: the chosen mode; right: the latency gain of that choice over running on one
# device (0 where one device is chosen), with the single / distributed boundary. Two
# sequence lengths: the decision depends on N as well as on batch and bandwidth (paper
# Section 5.2, "Limitations").

# %%
# %matplotlib inline
import os
import warnings
from pathlib import Path

import numpy as np
from IPython.display import display

import costmodel
from costmodel import evaluate, plots
from costmodel.decision import choose
from costmodel.model import CostModel
from costmodel.perfmap import load_perfmap

DATA = evaluate.data_dir()
FIG_DIR = Path(os.environ.get("PRISM_EDGE_FIGURES", DATA.parent / "out" / "figures"))
TESTBED = evaluate.testbed_maps()

# %% [markdown]
# ## Jetson profile: ViT-B/16 at 224 px (N = 197) and at 384 px (N = 577)
#
# The profile was fitted at N = 197 only, so the N = 577 map is an extrapolation by the
# model's physics (FLOPs and bytes grow with N), and the bandwidth axis extrapolates from
# the one assumed link rate (notebook 3). Read it as the model's prediction of the
# paper's remark that long sequences can make distribution pay even at batch 1.

# %%
profile = costmodel.load_profile("jetson-orin-nano")
for n in (197, 577):
    g = evaluate.decision_grid(profile, seq_len=n)
    cells = {plots.mode_name(lab): float(np.mean(g["best"] == i)) for i, lab in enumerate(g["labels"])}
    print(f"N = {n}: share of (batch 1-32, bw 50-1000) cells per mode:",
          {k: f"{100 * v:.0f} %" for k, v in cells.items() if v > 0})
for batch, bw in ((1, 900), (8, 500), (16, 250), (32, 900)):
    d = choose(batch, bw)
    print(f"choose(batch={batch}, bw={bw}) -> {d['mode']:14} margin over runner-up {100 * d['margin']:4.1f} %")

# %%
fig = plots.plot_decision_map(profile, seq_lens=(197, 577),
                              title="Decision map (latency), Jetson Orin Nano profile")
plots.save_figure(fig, FIG_DIR / "jetson_decision.png")
fig

# %% [markdown]
# ## Emulated testbed: a model fitted on the testbed map, with its measured entries
# overriding the model where they exist

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
    ns = sorted({r["seq_len"] for r in testbed.usable() if r["model"] == sel["model"]})
    seq_lens = (ns[0], ns[-1]) if len(ns) > 1 else (ns[0], evaluate.longer_seq_len(ns[0]))
    print(f"{TESTBED[0].name} ({testbed.source}): model {sel['model']}, seq_lens {seq_lens}, "
          f"world size {sel['world_size']}")
    f = plots.plot_decision_map(cm, seq_lens=seq_lens, world_size=sel["world_size"], perfmap=testbed,
                                model_name=sel["model"],
                                title=f"Decision map (latency), testbed ({TESTBED[0].name})")
    plots.save_figure(f, FIG_DIR / "testbed_decision.png")
    display(f)
