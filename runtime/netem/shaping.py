"""Shaping a real device's own link with tc tbf (profile-cluster --shape-iface).

The emulated network (testbed.py) shapes veth pairs it created; this shapes an existing
interface of a real board, as root, and removes its qdisc again on close().
"""
from __future__ import annotations

import os
import socket
import subprocess
from typing import Optional

from .testbed import is_root, tbf_args


class Shaper:
    """tc tbf on this device's egress of `iface` (root qdisc); removed by close()."""

    def __init__(self, iface: str):
        """iface must exist (check_shaping says so before)."""
        self.iface = iface
        self.installed = False
        with open(f"/sys/class/net/{iface}/mtu") as f:
            self.mtu = int(f.read().strip())

    def set(self, bw: float) -> None:
        cmd = ["tc", "qdisc", "replace", "dev", self.iface, "root", "tbf", *tbf_args(bw, self.mtu)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
        self.installed = True

    def close(self) -> None:
        if self.installed:
            subprocess.run(["tc", "qdisc", "del", "dev", self.iface, "root"], capture_output=True, timeout=30)
            self.installed = False


def check_shaping(iface: str) -> Optional[str]:
    """Why this device cannot shape `iface` (None if it can)."""
    if not is_root():
        return f"--shape-iface needs root on {socket.gethostname()} (tc changes the device's qdisc)"
    if subprocess.run(["sh", "-c", "command -v tc"], capture_output=True).returncode != 0:
        return f"--shape-iface needs tc (iproute2) on {socket.gethostname()}"
    if not os.path.exists(f"/sys/class/net/{iface}"):
        return (f"--shape-iface {iface!r}: no such interface on {socket.gethostname()}; "
                f"allowed: {sorted(os.listdir('/sys/class/net'))}")
    return None


