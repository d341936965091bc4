"""CPU quotas: make one emulated device slower than the others (cgroup CFS bandwidth).

    with cpu_quota(0.5):        # this process (every thread) at most half a core
        ...

The planner (parallel/planner.py) does not assume the fraction: it uses the speeds
measured under the quota.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

CGROUP_ROOT = "/sys/fs/cgroup"


@contextlib.contextmanager
def cpu_quota(fraction: float, *, period_us: int = 10_000, root: str = CGROUP_ROOT,
              pid: Optional[int] = None):
    """Run process `pid` (default: this one, every thread) under a CFS quota of
    `fraction` of one CPU per `period_us`; restores the cgroup on exit. Needs write access
    to the cpu controller (root); raises PermissionError/RuntimeError with the reason."""
    if not 0.01 <= float(fraction) <= 64:
        raise ValueError(f"fraction={fraction} CPUs must be in [0.01, 64]")
    if not 1000 <= int(period_us) <= 1_000_000:
        raise ValueError(f"period_us={period_us} must be in [1000, 1000000]")
    pid = os.getpid() if pid is None else int(pid)
    quota = max(1000, int(round(fraction * period_us)))
    v2 = os.path.exists(os.path.join(root, "cgroup.controllers"))
    base = root if v2 else os.path.join(root, "cpu")
    if not os.path.isdir(base):
        raise RuntimeError(f"no cpu cgroup controller under {root}; cpu_quota needs cgroup v1 cpu "
                           "or v2 with the cpu controller")
    cg = os.path.join(base, f"prism-edge-quota-{pid}")
    with open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    prev = next((ln.split(":", 2)[2] for ln in lines
                 if (ln.startswith("0::") if v2 else ":cpu:" in ln or ":cpu," in ln)), "/")
    os.makedirs(cg, exist_ok=True)
    try:
        if v2:
            _write(os.path.join(cg, "cpu.max"), f"{quota} {period_us}")
        else:
            _write(os.path.join(cg, "cpu.cfs_period_us"), str(period_us))
            _write(os.path.join(cg, "cpu.cfs_quota_us"), str(quota))
        _write(os.path.join(cg, "cgroup.procs"), str(pid))
        yield cg
    finally:
        with contextlib.suppress(OSError):
            _write(os.path.join(base + prev if prev != "/" else base, "cgroup.procs"), str(pid))
        with contextlib.suppress(OSError):
            os.rmdir(cg)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
