"""Figures of perf maps and cost-model predictions (matplotlib only, torch-free).

Each `plot_*` function takes package objects (a PerfMap, a fitted CostModel) and returns a
matplotlib `Figure` (object-oriented API, no pyplot state, so it works headless and in
notebooks); `save_figure` writes it as a PNG atomically. Nothing here re-derives a formula
or evaluates the model: the numbers behind each figure come from costmodel.evaluate
(measured tables, bandwidth sweeps, held-out validation, decision grids), which notebooks
can print and check; its names are re-exported here for old callers.

    pm = load_perfmap("data/perfmaps/jetson_orin_nano_paper.json")
    save_figure(plot_breakdown(pm), "out/breakdown.png")
    save_figure(plot_bandwidth(load_profile(), perfmap=pm), "out/bandwidth.png")

  style.py       names, colours, markers, rc style, save_figure
  breakdown.py   1 latency breakdown, 2 per-sample latency / energy and gains
  bandwidth.py   3 bandwidth sweep
  validation.py  4 held-out validation
  decision.py    5 decision map
  figures.py     standard_figures, and `python -m costmodel plot all --out DIR [--perfmap MAP]`
"""
from ..evaluate import (adaptive_choice, adaptive_gains, bandwidth_sweep, crossover_bw,  # noqa: F401
                        data_dir, decision_grid, default_bws, leave_one_value_out, longer_seq_len,
                        measured_table, select_slice, testbed_maps, validation_summary)
from .bandwidth import plot_bandwidth  # noqa: F401
from .breakdown import plot_breakdown, plot_per_sample  # noqa: F401
from .decision import plot_decision_map  # noqa: F401
from .figures import FIGURES, PLOTTED_STRATEGIES, add_cli, run_cli, standard_figures  # noqa: F401
from .style import (COLOR, HATCH, MARKER, MODE_COLOR, NAME, PHASE_COLOR, PHASE_LABEL, PHASES,  # noqa: F401
                    SHORT, STRATEGIES, STYLE, mode_name, save_figure)
from .validation import AXIS_COLOR, AXIS_LABEL, plot_validation  # noqa: F401
