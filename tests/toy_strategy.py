"""A toy strategy in ONE module, for the registry proof (tests/test_registry.py).

Everything a new strategy needs is here: its analytical half (a costmodel Formula: what
it sends and computes) and its runtime half (a Strategy dataclass: its options and the
per-block step). Nothing else in the project is edited; the CLI, sweeps, decision
candidates, features, the planner and the adaptive runner find it through the registries.
"""
from __future__ import annotations

from dataclasses import dataclass

from costmodel.strategies import Voltage as VoltageFormula
from costmodel.strategies import register_formula, unregister_formula
from runtime.parallel.base import opt, register_strategy, unregister_strategy
from runtime.parallel.voltage import Voltage

NAME = "toy_voltage"


class ToyFormula(VoltageFormula):
    """Voltage's traffic and FLOPs (the toy runs Voltage's exchange)."""

    name, label = NAME, "toy"


@dataclass(frozen=True)
class Toy(Voltage):
    """Voltage, with an option the CLI must pick up."""

    note: str = opt("hello", "a toy option (ignored)")


def register() -> None:
    register_formula(ToyFormula())
    register_strategy(NAME)(Toy)


def unregister() -> None:
    unregister_strategy(NAME)
    unregister_formula(NAME)
