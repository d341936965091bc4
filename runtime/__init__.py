"""prism-edge runtime: distributed Transformer inference over torch.distributed GLOO."""
from .strategies import create_strategy, list_strategies, register_strategy  # noqa: F401
