"""Power models: a labelled estimate of energy from phase times (torch-free).

    est_j, label = estimate_energy_j({"compute_ms": 80.6, "wall_ms": 80.6}, world_size=1)

Never a measurement: the runtime's meters (runtime/measure/meters.py) measure; these
estimate, and every estimate carries its model's name. Units: joules (J), watts (W),
milliseconds for phase times. Derivation of the default power figures: docs/energy.md.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import List, Mapping, Sequence, Tuple, Union

from .perfmap import PHASES as PHASE_KEYS

@dataclass(frozen=True)
class PowerModel:
    """Per-device power in watts for `estimate_energy_j`.

    compute_w, staging_w, comm_w: power above idle while a device is in that phase.
    idle_w: drawn by every participating device for the whole wall time.
    basis: where the figures come from; assumed: True when they are not fitted to data.
    """

    name: str
    compute_w: float
    staging_w: float
    comm_w: float
    idle_w: float
    basis: str
    assumed: bool = False

    def __post_init__(self):
        for k in ("compute_w", "staging_w", "comm_w", "idle_w"):
            v = getattr(self, k)
            if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
                raise ValueError(f"PowerModel {self.name!r}: {k}={v!r}; must be finite W >= 0")

    def to_dict(self) -> dict:
        """JSON-serialisable parameters."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "PowerModel":
        return cls(**d)


# Fitted to the paper's Table 4 with Table 2's phase times: docs/energy.md.
JETSON_ORIN_NANO = PowerModel(
    name="jetson-orin-nano-table4", compute_w=6.14, staging_w=0.0, comm_w=0.0, idle_w=0.0,
    basis="least squares on paper Table 4 energies (single b1-4, Prism b8-32 on 2 boards) "
          "against Table 2 compute times; idle/staging/comm fitted to 0, so this is energy "
          "above the boards' idle floor")
CPU_HOST = PowerModel(
    name="cpu-host-assumed", compute_w=8.0, staging_w=8.0, comm_w=4.0, idle_w=2.0,
    basis="assumption, not measured: one pinned x86 core per rank, ~8 W busy, ~4 W in "
          "GLOO send/recv, ~2 W share of package idle", assumed=True)
POWER_MODELS = {m.name: m for m in (JETSON_ORIN_NANO, CPU_HOST)}

def estimate_energy_j(phase_ms: Mapping[str, Union[float, Sequence[float]]], world_size: int,
                      model: PowerModel = JETSON_ORIN_NANO) -> Tuple[float, str]:
    """Modelled energy of one pass over all devices, in joules, with the model's label.

    phase_ms: `compute_ms`, `staging_ms`, `comm_ms` (ms; one number = rank 0's figure on
    every device, or a list with one per rank; missing = 0) and `wall_ms` (the pass latency,
    ms; default: the longest rank's phase sum).
    J = sum over ranks of phase power x phase time + idle_w x world_size x wall time.
    """
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"world_size={world_size!r}; must be an int >= 1")
    unknown = sorted(set(phase_ms) - set(PHASE_KEYS) - {"wall_ms"})
    if unknown:
        raise ValueError(f"unknown phase keys {unknown}; allowed: {', '.join(PHASE_KEYS)}, wall_ms")

    def per_rank(key: str) -> List[float]:
        v = phase_ms.get(key, 0.0)
        vals = [v] * world_size if isinstance(v, numbers.Real) else list(v)
        if len(vals) != world_size or not all(
                isinstance(x, numbers.Real) and math.isfinite(x) and x >= 0 for x in vals):
            raise ValueError(f"{key}={v!r}; must be ms >= 0, one number or {world_size} numbers")
        return [float(x) for x in vals]

    phases = {k: per_rank(k) for k in PHASE_KEYS}
    wall = phase_ms.get("wall_ms")
    if wall is None:
        wall = max(sum(p[r] for p in phases.values()) for r in range(world_size))
    elif not (isinstance(wall, numbers.Real) and math.isfinite(wall) and wall >= 0):
        raise ValueError(f"wall_ms={wall!r}; must be ms >= 0")
    watts = {"compute_ms": model.compute_w, "staging_ms": model.staging_w,
             "comm_ms": model.comm_w}
    active_ms_w = sum(watts[k] * sum(v) for k, v in phases.items())
    return (active_ms_w + model.idle_w * world_size * wall) / 1e3, model.name
