"""prism-edge runtime: distributed Transformer inference over torch.distributed GLOO.

Submodules that do not need torch (energy meters) import without it: the strategy
registry is loaded lazily on first use.
"""
_LAZY = {"create_strategy", "list_strategies", "register_strategy"}


def __getattr__(name):
    if name in _LAZY:
        from . import strategies
        return getattr(strategies, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
