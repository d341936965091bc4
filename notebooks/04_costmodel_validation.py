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
# # 4. Cost-model validation on held-out configurations
#
# Leave one value out: for every axis with at least two values (batch, bw, cr, seq_len,
# world_size), fit a `CostModel` on the perf map without that value and predict the rows
# that have it. Panel (a) shows predicted vs measured batch latency with the model's
# prediction interval, panel (b) the absolute error per held-out axis with the share of
# measurements inside the interval. These are out-of-sample numbers: no held-out row is
# ever in the fit that predicts it.
#
# Fits use 3 folds and 60 trees (instead of 5 and 150) to keep the notebook under a
# minute; `benchmarks/bench_costmodel.py` runs the full settings.

# %%
# %matplotlib inline
import os
from pathlib import Path

from IPython.display import display

import costmodel
from costmodel import evaluate, plots
from costmodel.perfmap import load_perfmap

DATA = evaluate.data_dir()
FIG_DIR = Path(os.environ.get("PRISM_EDGE_FIGURES", DATA.parent / "out" / "figures"))
JETSON = DATA / "perfmaps" / "jetson_orin_nano_paper.json"
TESTBED = evaluate.testbed_maps()
QUICK = dict(cv_folds=3, residual_estimators=60)


def show(summary):
    for ax, s in summary.items():
        print(f"held out {ax:10}: {s['values']} values, {s['n']:3d} rows, median APE {s['median_ape']:5.1f} %, "
              f"P90 {s['p90_ape']:5.1f} %, inside interval {100 * s['coverage']:3.0f} %")


# %% [markdown]
# ## Jetson paper figures
#
# Only the batch axis varies in Table 2 (one CR, one unstated link rate, taken as the
# profile's assumed 1000 Mbit/s), so only batch is held out; holding out batch 1 or 32
# is an extrapolation.

# %%
unshaped = costmodel.load_profile("jetson-orin-nano").training_["unshaped_bw"]
res = evaluate.leave_one_value_out(load_perfmap(JETSON), unshaped_bw=unshaped, **QUICK)
show(evaluate.validation_summary(res))
fig = plots.plot_validation(res, level=0.8,
                            title="Cost-model validation, leave one batch out (Jetson paper, Table 2)")
plots.save_figure(fig, FIG_DIR / "jetson_validation.png")
fig

# %% [markdown]
# ## Emulated testbed

# %%
if not TESTBED:
    print("NOTE: no testbed perf map found (data/perfmaps/testbed_*.json); the testbed figure "
          "is skipped. Set PRISM_EDGE_TESTBED_MAP to a perf map to use another one.")
else:
    testbed = load_perfmap(TESTBED[0])
    res_t = evaluate.leave_one_value_out(testbed, **QUICK)
    print(f"{TESTBED[0].name} ({testbed.source}); folds skipped: {res_t['skipped'] or 'none'}")
    show(evaluate.validation_summary(res_t))
    f = plots.plot_validation(res_t, level=0.8,
                              title=f"Cost-model validation, leave one value out (testbed, {TESTBED[0].name})")
    plots.save_figure(f, FIG_DIR / "testbed_validation.png")
    display(f)
