"""Emulated edge network: P devices as P network namespaces behind a shaped bridge.

    with Testbed(world_size=2, bw=300) as tb:
        tb.measure_bw()                       # bulk TCP transfer, Mbit/s
        out = tb.launch(argv, timeout_s=600)  # ranks run inside the namespaces
        tb.set_bw(500)                        # live rate change (tc qdisc change)

Topology (mode "netns", root):

    <prefix>-<pid>-<k>-d0 [eth0 10.77.0.1] --veth-- p0 ┐
    <prefix>-<pid>-<k>-d1 [eth0 10.77.0.2] --veth-- p1 ┼ br0   in <prefix>-<pid>-<k>-br
    ...                                               ┘

Every device link is shaped in BOTH directions with tc tbf: on the egress of the device
side (eth0, device -> bridge) and on the egress of the bridge side (p_i, bridge ->
device). A packet from device i to device j crosses eth0_i and p_j, so no rank's traffic
escapes a shaper; links are full duplex (a switched network, each direction at `bw`).

`bw` is the TCP *payload* rate (what `comm_bytes * 8 / bw` in the cost model means): the
tbf rate is set `(mtu + 14) / (mtu - 52)` higher to pay for Ethernet/IP/TCP headers
(about 4.6 % at MTU 1500). Both numbers go into `.link`.

Delay: netem when the kernel has it (one-way delay on each device's egress); this
kernel may not ship netem, and then no delay is added. The link description always
says which (`delay_method`, `delay_ms` applied, `delay_ms_requested`) — a requested
delay that could not be applied is never silently reported as applied.

Modes: "netns" (root, `ip netns`), "unshare" (no root: everything lives in a private
user+net+mount namespace held by a helper process, entered with nsenter), "loopback"
(no emulation: ranks on 127.0.0.1, bandwidth recorded as unshaped), "auto" (netns if
root, else unshare if permitted, else loopback with a warning).

Teardown is unconditional: on exit, on exceptions, on SIGINT/SIGTERM (handlers are
installed while a testbed is open) and at interpreter exit; `cleanup_stale(prefix)`
removes namespaces left by a killed process (its pid is in the name).
"""
from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Callable, Optional, Sequence

log = logging.getLogger("runtime.testbed")

MODES = ("auto", "netns", "unshare", "loopback")
DEFAULT_PREFIX = "pe"
SUBNET = "10.77.0"
IFNAME = "eth0"
_SERIAL = [0]
_CMD_TIMEOUT_S = 20.0


class TestbedError(RuntimeError):
    """The emulated network could not be set up (permissions, missing tools)."""

    __test__ = False  # not a pytest class


class BypassError(TestbedError):
    """A set-up in which rank traffic would not cross a shaper."""


def l2_overhead_factor(mtu: int) -> float:
    """L2 bytes on the wire per TCP payload byte for full-size segments: Ethernet header
    (14) over the MSS (mtu - 20 IP - 32 TCP with timestamps)."""
    return (mtu + 14) / (mtu - 52)


def tbf_args(bw: float, mtu: int = 1500) -> list:
    """tc tbf parameters for a TCP payload rate bw (Mbit/s) on a link of this MTU:
    the L2 rate, a burst of about 1 ms of traffic (at least 4 full frames) and a queue
    of about 50 ms."""
    rate = bw * 1e6 * l2_overhead_factor(mtu)          # bit/s on the wire
    burst = max(4 * (mtu + 14), int(rate / 8 * 1e-3))
    limit = max(2 * burst, int(rate / 8 * 0.05))
    return ["rate", f"{int(rate)}bit", "burst", str(burst), "limit", str(limit)]


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None


def _run(cmd: Sequence[str], *, check: bool = True, timeout: float = _CMD_TIMEOUT_S) -> str:
    p = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise TestbedError(f"`{' '.join(cmd)}` failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def unshare_permitted() -> bool:
    """Whether this user may create a private user+net namespace (`unshare -rn`)."""
    if not _have("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-rnm", "true"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_mode(mode: str) -> str:
    """The mode that will actually run; raises TestbedError when an explicitly requested
    mode is not permitted here."""
    if mode not in MODES:
        raise ValueError(f"unknown testbed mode {mode!r}; allowed: {list(MODES)}")
    tools = _have("ip") and _have("tc")
    if mode == "netns":
        if not is_root():
            raise TestbedError("mode 'netns' needs root (ip netns add); use --testbed unshare "
                               "or --testbed loopback")
        if not tools:
            raise TestbedError("mode 'netns' needs `ip` and `tc` (Debian: apt-get install iproute2)")
        return "netns"
    if mode == "unshare":
        if not tools or not _have("nsenter"):
            raise TestbedError("mode 'unshare' needs `ip`, `tc`, `unshare` and `nsenter` (util-linux, iproute2)")
        if not unshare_permitted():
            raise TestbedError("mode 'unshare': this user may not create user namespaces "
                               "(unshare -rn failed; see /proc/sys/user/max_user_namespaces)")
        return "unshare"
    if mode == "loopback":
        return "loopback"
    if tools and is_root():
        return "netns"
    if tools and _have("nsenter") and unshare_permitted():
        return "unshare"
    log.warning("testbed: no root and no user namespaces (or no ip/tc): falling back to "
                "LOOPBACK — traffic is NOT shaped, bandwidth is recorded as unshaped (null)")
    return "loopback"


def netem_available(prefix_cmd: Sequence[str] = ()) -> bool:
    """Whether `tc qdisc add ... netem` works (probed on a throw-away dummy link)."""
    name = f"pen{os.getpid() % 100000}"
    pre = list(prefix_cmd)
    try:
        _run(pre + ["ip", "link", "add", name, "type", "dummy"])
    except (TestbedError, subprocess.TimeoutExpired):
        return False
    try:
        return subprocess.run(pre + ["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=_CMD_TIMEOUT_S).returncode == 0
    finally:
        subprocess.run(pre + ["ip", "link", "del", name], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=_CMD_TIMEOUT_S)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces(prefix: str = DEFAULT_PREFIX) -> list:
    """Names of the network namespaces made by testbeds with this prefix."""
    if not _have("ip"):
        return []
    out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, timeout=_CMD_TIMEOUT_S).stdout
    pat = re.compile(rf"^{re.escape(prefix)}-(\d+)-(\d+)-(br|d\d+)$")
    return [ln.split()[0] for ln in out.splitlines() if ln.split() and pat.match(ln.split()[0])]


def cleanup_stale(prefix: str = DEFAULT_PREFIX, *, all_: bool = False) -> list:
    """Delete namespaces of testbeds whose owning process is gone (or all with `all_`),
    killing processes left inside them (ranks of a SIGKILLed sweep). Returns the names."""
    gone = []
    for ns in list_namespaces(prefix):
        pid = int(ns.split("-")[-3])
        if not all_ and (pid == os.getpid() or _pid_alive(pid)):
            continue
        pids = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, timeout=_CMD_TIMEOUT_S).stdout
        for p in pids.split():
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=_CMD_TIMEOUT_S)
        gone.append(ns)
    if gone:
        log.info("testbed: removed %d stale namespaces: %s", len(gone), " ".join(gone))
    return gone


# bulk-transfer helpers, run with the current interpreter inside the namespaces
_RECV = textwrap.dedent("""
    import json, socket, sys, time
    addr, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1); s.settimeout(60)
    print("ready", flush=True)
    c, _ = s.accept(); c.settimeout(60)
    got, t_skip, n_skip = 0, None, total // 10
    buf = bytearray(1 << 20)
    while got < total:
        n = c.recv_into(buf)
        if not n:
            break
        got += n
        if t_skip is None and got >= n_skip:
            t_skip, n_skip = time.perf_counter(), got
    t_end = time.perf_counter()
    c.sendall(b"k"); c.close()
    print(json.dumps({"bytes": got, "timed_bytes": got - n_skip, "timed_s": t_end - t_skip}))
""")
_SEND = textwrap.dedent("""
    import socket, sys, time
    addr, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for _ in range(200):
        try:
            s = socket.create_connection((addr, port), timeout=60); break
        except OSError:
            time.sleep(0.05)
    chunk = b"\\0" * (1 << 18); left = total
    while left > 0:
        n = min(left, len(chunk)); s.sendall(chunk[:n]); left -= n
    s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
""")


class Testbed:
    """P emulated devices joined by a shaped bridge (see the module docstring).

    world_size: devices P (ranks). bw: TCP payload rate of every device link, in
    Mbit/s (None: unshaped, only meaningful in loopback mode). delay_ms: one-way delay
    added per packet, in ms (netem; recorded as not applied where netem is missing).
    cores: CPU cores; rank r is pinned to cores[r % len(cores)] (default: the cores
    this process may use). mtu: MTU of the device links, bytes.
    """

    __test__ = False

    def __init__(self, world_size: int, bw: Optional[float] = None, *, delay_ms: float = 0.0,
                 mode: str = "auto", prefix: str = DEFAULT_PREFIX,
                 cores: Optional[Sequence[int]] = None, mtu: int = 1500,
                 install_signal_handlers: bool = True):
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size={world_size!r} must be an integer >= 1")
        if bw is not None and not float(bw) > 0:
            raise ValueError(f"bw={bw} Mbit/s must be > 0 (or None for an unshaped link)")
        if delay_ms < 0:
            raise ValueError(f"delay_ms={delay_ms} must be >= 0")
        if mode not in MODES:
            raise ValueError(f"unknown testbed mode {mode!r}; allowed: {list(MODES)}")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", prefix):
            raise ValueError(f"prefix={prefix!r} must be 1-12 lowercase letters/digits, starting with a letter")
        if not 576 <= mtu <= 65535:
            raise ValueError(f"mtu={mtu} must be in [576, 65535]")
        self.world_size, self.bw, self.delay_ms = world_size, bw, float(delay_ms)
        self.mode_requested, self.prefix, self.mtu = mode, prefix, mtu
        avail = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.cores = list(cores) if cores is not None else avail
        self.install_signal_handlers = install_signal_handlers
        self.mode: Optional[str] = None
        self.link: dict = {}
        self.namespaces: list = []
        self.bridge_ns: Optional[str] = None
        self._holder: Optional[subprocess.Popen] = None
        self._old_handlers: dict = {}
        self._open = False
        self._lock = threading.Lock()
        self._netem = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Testbed":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "Testbed":
        self.mode = resolve_mode(self.mode_requested)
        if self.mode == "loopback" and self.bw is not None:
            log.warning("testbed: loopback mode cannot shape: the requested bw=%s Mbit/s is NOT "
                        "applied and records carry bw=null (unshaped)", self.bw)
        self._open = True
        self._install_handlers()
        atexit.register(self.close)
        try:
            if self.mode != "loopback":
                self._create()
        except BaseException:
            self.close()
            raise
        self._describe()
        return self

    def close(self) -> None:
        """Remove every namespace, link and qdisc of this testbed (idempotent)."""
        with self._lock:
            if not self._open:
                return
            self._open = False
        try:
            if self.mode == "netns":
                for ns in [*self.namespaces, *( [self.bridge_ns] if self.bridge_ns else [])]:
                    subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=_CMD_TIMEOUT_S)
            elif self.mode == "unshare" and self._holder is not None:
                # the namespaces live only in the holder's mount namespace: they go with it
                if self._holder.poll() is None:
                    self._holder.kill()
                self._holder.wait(timeout=10)
        finally:
            self._restore_handlers()
            try:
                atexit.unregister(self.close)
            except Exception:  # noqa: BLE001
                pass
            log.info("testbed: torn down (%s)", self.mode)

    def _install_handlers(self) -> None:
        if not self.install_signal_handlers or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(sig)
            if old == signal.SIG_IGN:       # e.g. SIGINT of a background job: stays ignored
                continue
            self._old_handlers[sig] = old
            signal.signal(sig, self._on_signal)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, h in self._old_handlers.items():
            try:
                signal.signal(sig, h)
            except (ValueError, TypeError):
                pass
        self._old_handlers = {}

    def _on_signal(self, signum, frame) -> None:
        old = self._old_handlers.get(signum, signal.SIG_DFL)
        log.warning("testbed: signal %d, tearing down the emulated network", signum)
        self.close()
        if callable(old):
            old(signum, frame)
        elif signum == signal.SIGINT and old != signal.SIG_IGN:
            raise KeyboardInterrupt
        elif old == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    # ------------------------------------------------------------------ commands
    def _pre(self) -> list:
        """Prefix that runs a command in the testbed's outer context."""
        if self.mode == "unshare":
            return ["nsenter", "-t", str(self._holder.pid), "-U", "-n", "-m"]
        return []

    def _ip(self, ns: Optional[str], *args) -> str:
        return _run(self._pre() + ["ip"] + (["-n", ns] if ns else []) + [str(a) for a in args])

    def _tc(self, ns: str, *args, check=True) -> str:
        return _run(self._pre() + ["tc", "-n", ns] + [str(a) for a in args], check=check)

    def ns_exec(self, rank: int) -> list:
        """argv prefix that runs a command inside rank's namespace (empty for loopback)."""
        if self.mode == "loopback":
            return []
        return self._pre() + ["ip", "netns", "exec", self.namespaces[rank]]

    def addr(self, rank: int) -> str:
        return "127.0.0.1" if self.mode == "loopback" else f"{SUBNET}.{rank + 1}"

    def ifname(self) -> str:
        return "lo" if self.mode == "loopback" else IFNAME

    def core(self, rank: int) -> Optional[int]:
        return self.cores[rank % len(self.cores)] if self.cores else None

    # ------------------------------------------------------------------ creation
    def _start_holder(self) -> None:
        watch = os.getpid()
        script = ("mount -t tmpfs tmpfs /run && mkdir -p /run/netns && echo ready && "
                  f"while [ -e /proc/{watch} ]; do sleep 1; done")
        self._holder = subprocess.Popen(["unshare", "-rnm", "--propagation", "private", "sh", "-c", script],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self._holder.stdout.readline().strip()
        if line != "ready":
            err = self._holder.stderr.read() if self._holder.poll() is not None else ""
            raise TestbedError(f"mode 'unshare': could not prepare a private namespace: {err.strip() or line!r}")

    def _create(self) -> None:
        if self.mode == "unshare":
            self._start_holder()
        _SERIAL[0] += 1
        base = f"{self.prefix}-{os.getpid()}-{_SERIAL[0]}"
        self.bridge_ns = f"{base}-br"
        self.namespaces = [f"{base}-d{i}" for i in range(self.world_size)]
        if self.mode == "netns":
            cleanup_stale(self.prefix)
        pre = self._pre()
        # namespaces are recorded before creation so that a failure half-way is torn down
        for ns in [self.bridge_ns, *self.namespaces]:
            _run(pre + ["ip", "netns", "add", ns])
        br = self.bridge_ns
        self._ip(br, "link", "add", "br0", "type", "bridge")
        self._ip(br, "link", "set", "br0", "up")
        self._ip(br, "link", "set", "lo", "up")
        for i, ns in enumerate(self.namespaces):
            _run(pre + ["ip", "link", "add", IFNAME, "netns", ns, "mtu", str(self.mtu), "type", "veth",
                        "peer", "name", f"p{i}", "netns", br, "mtu", str(self.mtu)])
            self._ip(br, "link", "set", f"p{i}", "master", "br0")
            self._ip(br, "link", "set", f"p{i}", "up")
            self._ip(ns, "addr", "add", f"{self.addr(i)}/24", "dev", IFNAME)
            self._ip(ns, "link", "set", IFNAME, "up")
            self._ip(ns, "link", "set", "lo", "up")
        self._netem = netem_available(pre)
        if self.delay_ms > 0 and not self._netem:
            log.warning("testbed: delay_ms=%s requested but netem is not available in this kernel: "
                        "NO delay is added (recorded as delay_method='none: netem unavailable')",
                        self.delay_ms)
        self._shape(self.bw, verb="add")
        self._wait_links_up()

    def _wait_links_up(self, timeout_s: float = 10.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            states = [json.loads(self._ip(ns, "-j", "link", "show", IFNAME))[0]["operstate"]
                      for ns in self.namespaces]
            if all(s == "UP" for s in states):
                return
            time.sleep(0.05)
        raise TestbedError(f"device links did not come up within {timeout_s} s")

    def tbf_args(self, bw: float) -> list:
        return tbf_args(bw, self.mtu)

    def _shape(self, bw: Optional[float], verb: str) -> None:
        """Install (verb add) or change the shapers on both sides of every device link."""
        if bw is None:
            raise TestbedError(f"mode {self.mode!r} needs a bandwidth (bw > 0)")
        tbf = self.tbf_args(bw)
        delay = self.delay_ms > 0 and self._netem
        for i, ns in enumerate(self.namespaces):
            if delay:
                # device egress: netem (delay) at the root, tbf below it
                if verb == "add":
                    self._tc(ns, "qdisc", "add", "dev", IFNAME, "root", "handle", "1:", "netem",
                             "delay", f"{self.delay_ms}ms", "limit", "100000")
                self._tc(ns, "qdisc", verb, "dev", IFNAME, "parent", "1:", "handle", "2:", "tbf", *tbf)
            else:
                self._tc(ns, "qdisc", "add" if verb == "add" else "change", "dev", IFNAME,
                         "root", "handle", "1:", "tbf", *tbf)
            self._tc(self.bridge_ns, "qdisc", "add" if verb == "add" else "change", "dev", f"p{i}",
                     "root", "handle", "1:", "tbf", *tbf)

    def set_bw(self, bw: float) -> None:
        """Change the rate of every shaper live (tc qdisc change), in Mbit/s. The measured
        rate in `.link` is reset to None until the next `measure_bw()`."""
        if not float(bw) > 0:
            raise ValueError(f"bw={bw} Mbit/s must be > 0")
        if self.mode == "loopback":
            log.warning("testbed: loopback mode: set_bw(%s) has no effect (unshaped)", bw)
            self.bw = bw
            self._describe()
            return
        self._shape(float(bw), verb="change")
        self.bw = float(bw)
        self._describe()

    def _describe(self) -> None:
        shaped = self.mode != "loopback"
        if not shaped:
            dm = "none: loopback (unshaped)"
        elif self.delay_ms > 0 and self._netem:
            dm = "netem on device egress"
        elif self.delay_ms > 0:
            dm = "none: netem unavailable"
        else:
            dm = "none: 0 ms requested" + ("" if self._netem else " (netem unavailable)")
        self.link = {
            "mode": self.mode,
            "topology": (f"{self.world_size} netns devices, veth to a bridge in its own netns, "
                         "full duplex" if shaped else "loopback, all ranks in one namespace"),
            "shaper": ("tc tbf on both directions of every device link (device egress and "
                       "bridge-port egress)") if shaped else None,
            "bw": float(self.bw) if shaped and self.bw is not None else None,
            "bw_requested": self.bw,
            "bw_measured": None,
            "bw_meaning": "TCP payload rate, Mbit/s (tbf rate includes L2/L3/L4 headers)",
            "shaper_rate_mbit": (round(self.bw * l2_overhead_factor(self.mtu), 3)
                                 if shaped and self.bw else None),
            "mtu": self.mtu,
            "delay_method": dm,
            "delay_ms": self.delay_ms if (shaped and self._netem) else 0.0,
            "delay_ms_requested": self.delay_ms,
            "netem_available": self._netem if shaped else None,
            "pinning": {str(r): self.core(r) for r in range(self.world_size)},
            "cores_shared": bool(self.cores) and self.world_size > len(self.cores),
        }

    # ------------------------------------------------------------------ checks
    def verify(self, master_addr: Optional[str] = None) -> None:
        """Refuse a set-up where rank traffic could bypass the shapers: two ranks in one
        namespace, a loopback master address, a device link whose peer end sits in the
        same namespace, a route not leaving through the shaped link, a missing shaper."""
        if self.mode is None or not self._open:
            raise TestbedError("testbed is not started (use `with Testbed(...) as tb:`)")
        if self.mode == "loopback":
            return
        if len(set(self.namespaces)) != len(self.namespaces):
            raise BypassError(f"ranks share a namespace ({self.namespaces}): their traffic would not cross a shaper")
        master = master_addr or self.addr(0)
        if ipaddress.ip_address(master).is_loopback:
            raise BypassError(f"master address {master} is a loopback address: traffic would bypass the shaper")
        for i, ns in enumerate(self.namespaces):
            info = json.loads(self._ip(ns, "-j", "link", "show", IFNAME))[0]
            if "link_netnsid" not in info:
                raise BypassError(f"both ends of {ns}'s device link are in one namespace")
            peer = self.addr(1 if i == 0 else 0) if self.world_size > 1 else master
            rt = json.loads(self._ip(ns, "-j", "route", "get", peer))[0]
            if rt.get("dev") != IFNAME:
                raise BypassError(f"{ns}: route to {peer} leaves via {rt.get('dev')!r}, not the shaped {IFNAME}")
            kinds = {q["kind"] for q in json.loads(self._tc(ns, "-j", "qdisc", "show", "dev", IFNAME))}
            if "tbf" not in kinds:
                raise BypassError(f"{ns}: no tbf shaper on {IFNAME} (qdiscs: {sorted(kinds)})")
            kinds = {q["kind"] for q in json.loads(self._tc(self.bridge_ns, "-j", "qdisc", "show", "dev", f"p{i}"))}
            if "tbf" not in kinds:
                raise BypassError(f"bridge port p{i}: no tbf shaper (qdiscs: {sorted(kinds)})")
        if ipaddress.ip_address(master) not in {ipaddress.ip_address(self.addr(r)) for r in range(self.world_size)}:
            raise BypassError(f"master address {master} is not a testbed device address")

    # ------------------------------------------------------------------ measurement
    def measure_bw(self, *, src: int = 1, dst: int = 0, nbytes: Optional[int] = None,
                   seconds: float = 1.0) -> float:
        """Bulk TCP transfer from rank `src` to rank `dst`; payload rate in Mbit/s. The
        first tenth of the bytes is excluded from the timing (tbf burst, slow start).
        The result is stored in `.link["bw_measured"]`."""
        if self.world_size < 2:
            raise TestbedError("measure_bw needs world_size >= 2")
        if nbytes is None:
            rate = (self.bw or 1000.0) * 1e6 / 8
            nbytes = int(max(4 << 20, rate * seconds * 10 / 9))
        port = 15000 + os.getpid() % 20000
        addr = self.addr(dst)
        rx = subprocess.Popen(self.ns_exec(dst) + [sys.executable, "-c", _RECV, addr, str(port), str(nbytes)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        tx = None
        try:
            if rx.stdout.readline().strip() != "ready":
                raise TestbedError(f"bandwidth receiver failed: {rx.stderr.read().strip()}")
            tx = subprocess.Popen(self.ns_exec(src) + [sys.executable, "-c", _SEND, addr, str(port), str(nbytes)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            limit = 60 + nbytes * 8 / 1e6 / max(1.0, (self.bw or 1000.0) / 4)
            out, err = rx.communicate(timeout=limit)
            tx.wait(timeout=30)
            if rx.returncode != 0 or tx.returncode != 0:
                raise TestbedError(f"bandwidth transfer failed: {err.strip()} {tx.stderr.read().strip()}")
            res = json.loads(out.strip().splitlines()[-1])
        finally:
            for p in (rx, tx):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        mbps = res["timed_bytes"] * 8 / res["timed_s"] / 1e6
        self.link["bw_measured"] = round(mbps, 3)
        self.link["bw_measured_bytes"] = nbytes
        return mbps

    # ------------------------------------------------------------------ ranks
    def rank_env(self, rank: int) -> dict:
        env = {"GLOO_SOCKET_IFNAME": self.ifname(), "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "PRISM_EDGE_TESTBED": self.mode or ""}
        c = self.core(rank)
        if c is not None:
            env["PRISM_EDGE_CORE"] = str(c)
        return env

    def wrap(self, rank: int, argv: list) -> list:
        c = self.core(rank)
        pin = ["taskset", "-c", str(c)] if c is not None and _have("taskset") else []
        return self.ns_exec(rank) + pin + list(argv)

    def launch(self, argv: Sequence[str], timeout_s: float, *, stderr=None,
               on_stdout_line: Optional[Callable[[str], None]] = None) -> str:
        """Run argv as ranks 0..P-1 inside the namespaces (rank r pinned to its core, one
        thread), MASTER_ADDR = rank 0's address; returns rank 0's stdout."""
        from ..launch import launch

        self.verify()
        return launch(list(argv), self.world_size, master_addr=self.addr(0), timeout_s=timeout_s,
                      wrap=self.wrap, env_per_rank=self.rank_env, stderr=stderr,
                      on_stdout_line=on_stdout_line)


# --------------------------------------------------------------------------- CLI

def add_args(p) -> None:
    p.add_argument("action", choices=("check", "cleanup"),
                   help="check: build the testbed, measure the rate, tear down; "
                        "cleanup: remove namespaces left by killed processes")
    from costmodel import checks

    p.add_argument("--world-size", type=checks.arg_count(minimum=2), default=2)
    p.add_argument("--bw", type=checks.arg_positive("Mbit/s"), default=300.0,
                   help="link rate, Mbit/s (TCP payload)")
    p.add_argument("--delay", type=checks.arg_nonnegative("ms"), default=0.0, help="one-way delay, ms (netem)")
    p.add_argument("--mode", default="auto", help=f"one of {list(MODES)}")
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--seconds", type=checks.arg_positive("s"), default=1.0,
                   help="duration of the bulk transfer, s")
    p.add_argument("--all", action="store_true", help="cleanup: also namespaces of live processes")


def main(a, argv_tail) -> int:
    from ..errors import UsageError

    if a.action == "cleanup":
        print(json.dumps({"removed": cleanup_stale(a.prefix, all_=a.all)}))
        return 0
    if a.mode not in MODES:
        raise UsageError(f"--mode {a.mode!r}; allowed: {list(MODES)}")
    if not a.bw > 0:
        raise UsageError(f"--bw {a.bw} Mbit/s must be > 0")
    if a.world_size < 2:
        raise UsageError(f"--world-size {a.world_size} must be >= 2 for a link check")
    try:
        tb = Testbed(a.world_size, a.bw, delay_ms=a.delay, mode=a.mode, prefix=a.prefix, mtu=a.mtu)
        with tb:
            tb.verify()
            mbps = tb.measure_bw(seconds=a.seconds)
            link = dict(tb.link)
    except (ValueError, TestbedError) as e:
        raise UsageError(str(e))
    nominal = link["bw"]
    print(json.dumps({
        "bw": nominal, "bw_measured": round(mbps, 3),
        "error_pct": None if nominal is None else round(100 * (mbps - nominal) / nominal, 2),
        "link": link}))
    return 0
