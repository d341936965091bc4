"""prism-edge cost model: torch-free analytical formulas and a fitted regression.

`formulas` (shapes, partitions) and `strategies` (each strategy's Formula, make_plan)
are imported eagerly (the runtime needs them); the fitted model, the one-call `predict`,
`choose` and the profile registry load scikit-learn/scipy only when first used.
"""
from .formulas import ModelShape, Plan, shape_for, vit_shape, block_flops  # noqa: F401
from .strategies import get_formula, list_strategies, make_plan, register_formula  # noqa: F401

__all__ = ["ModelShape", "Plan", "make_plan", "shape_for", "vit_shape", "block_flops",
           "get_formula", "list_strategies", "register_formula", "choose",
           "CostModel", "predict", "list_profiles", "load_profile", "load_perfmap",
           "save_perfmap", "validate_perfmap", "PerfMap"]

_LAZY = {
    "CostModel": ("model", "CostModel"),
    "ModelFileError": ("model", "ModelFileError"),
    "OutOfRangeWarning": ("model", "OutOfRangeWarning"),
    "QueryError": ("features", "QueryError"),
    "predict": ("api", "predict"),
    "choose": ("decision", "choose"),
    "list_profiles": ("api", "list_profiles"),
    "load_profile": ("api", "load_profile"),
    "PerfMap": ("perfmap", "PerfMap"),
    "PerfMapError": ("perfmap", "PerfMapError"),
    "load_perfmap": ("perfmap", "load_perfmap"),
    "save_perfmap": ("perfmap", "save_perfmap"),
    "validate_perfmap": ("perfmap", "validate_perfmap"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{mod}", __name__), attr)
        globals()[name] = value           # later look-ups skip this hook (costmodel.predict: ~2 us)
        return value
    raise AttributeError(f"module 'costmodel' has no attribute {name!r}")
