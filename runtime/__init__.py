"""prism-edge runtime: distributed Transformer inference over torch.distributed GLOO.

    models/    plain models behind an adapter (timm ViTs, HF BERT / GPT-2), the family registry
    parallel/  the strategy registry and one module per strategy; exchange and process groups
    measure/   the run loop and its timing, sweeps into perf maps, host check, energy meters
    netem/     the emulated network (namespaces, tc shaping) and CPU quotas
    serve/     the adaptive runner (per-batch decision hook), policies, the demo

Torch-free submodules (measure.meters) import without torch: the strategy registry is
loaded lazily on first use of these names.
"""
_LAZY = {"create_strategy", "list_strategies", "register_strategy", "DistContext"}


def __getattr__(name):
    if name in _LAZY:
        from . import parallel
        return getattr(parallel, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
