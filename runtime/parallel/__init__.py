"""Parallel strategies applied to a plain model, one module each.

base.py (registry, DistContext, Runner, Strategy), single.py, voltage.py, prism.py,
tensor_parallel.py, galaxy.py (tp_layout.py: what the last two share), coformer.py, pipeline.py, exchange.py
(process groups, the per-block exchange, phase timing), planner.py (uneven splits for
heterogeneous devices). Importing the package registers every built-in strategy.
"""
from .base import (DistContext, Result, Runner, Strategy, create_strategy, list_strategies,  # noqa: F401
                   option_fields, register_strategy, strategy_class, unregister_strategy)
from . import coformer, galaxy, pipeline, prism, single, tensor_parallel, tp_layout_hf, voltage  # noqa: E402,F401  - register

__all__ = ["DistContext", "Result", "Runner", "Strategy", "create_strategy", "list_strategies",
           "option_fields", "register_strategy", "strategy_class", "unregister_strategy"]
