"""prism-edge cost model: torch-free analytical formulas and a fitted regression."""
from .formulas import ModelShape, Plan, make_plan, shape_for, vit_shape, block_flops  # noqa: F401
