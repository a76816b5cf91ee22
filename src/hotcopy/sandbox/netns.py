"""Hosts as network namespaces: one namespace per server, joined by a bridge.

hotcopy's promise that data flows from the source host to the target host directly,
and that each daemon listens on one address and admits one peer, can only be tested
when hosts have addresses of their own. Each host here is a network namespace with a
veth pair to a bridge in the root namespace; the bridge has an address too, so the
controller (hotcopy, in the root namespace) reaches every host the way it reaches
real ones: over the network. Filesystems are not separated, only the network.

Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking): it is never anybody's real
network, so nothing here can shadow a route the machine needs. Each sandbox takes one
free /24 of it, picked under a lock so sandboxes started side by side never collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from hotcopy.errors import HotcopyError
from hotcopy.hosts import CommandResult, LocalExecutor
from hotcopy.hosts.base import LineCallback
from hotcopy.sandbox.sshd import netns_argv

log = logging.getLogger(__name__)

PREFIX = "198.18"
#: 198.18.0.0/15 holds 512 /24s; 198.18.x is plenty and keeps the addresses readable.
SUBNETS = range(1, 255)
BRIDGE_HOST = 1
FIRST_HOST = 10
LOCK_FILE = Path("/run/lock/hotcopy-sandbox-netns.lock")
IFACE = "eth0"
_ADDRESS = re.compile(rf"\binet {re.escape(PREFIX)}\.(\d+)\.\d+/")


def tag_for(directory: Path) -> str:
    """A short name part unique to a sandbox directory (interface names are <= 15 chars)."""
    return hashlib.sha1(str(directory).encode(), usedforsecurity=False).hexdigest()[:8]


def namespace_name(tag: str, server: str) -> str:
    return f"hc-{tag}-{server}"


def bridge_name(tag: str) -> str:
    return f"hcb{tag}"


def veth_name(tag: str, index: int) -> str:
    return f"hcv{tag}{index}"


def address(subnet: int, host: int) -> str:
    return f"{PREFIX}.{subnet}.{host}"


class NetnsExecutor(LocalExecutor):
    """Runs commands inside one network namespace; files are shared with the root."""

    is_local = True

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.name = f"netns {netns}"

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = 300,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        return super().run([*netns_argv(self.netns), *argv], input=input, check=check,
                           timeout=timeout, env=env)

    def stream(
        self,
        argv: Sequence[str],
        on_line: LineCallback,
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        return super().stream([*netns_argv(self.netns), *argv], on_line, timeout=timeout,
                              check=check)


def _ip(*args: str, check: bool = True) -> CommandResult:
    return LocalExecutor().run(["ip", *args], check=check, timeout=30)


@contextlib.contextmanager
def subnet_lock() -> Iterator[None]:
    """Held while a sandbox picks its /24 and puts it on its bridge."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def used_subnets() -> set[int]:
    """The 198.18.x /24s that have an address in the root namespace (another sandbox's)."""
    out = _ip("-o", "-4", "addr", "show").stdout
    return {int(m.group(1)) for m in _ADDRESS.finditer(out)}


def pick_subnet(tag: str) -> int:
    """A free /24, starting at one derived from the tag so retries tend to differ."""
    used = used_subnets()
    start = int(tag, 16) % len(SUBNETS)
    for offset in range(len(SUBNETS)):
        candidate = SUBNETS[(start + offset) % len(SUBNETS)]
        if candidate not in used:
            return candidate
    raise HotcopyError(f"every {PREFIX}.x.0/24 is in use by other sandboxes",
                       hint="take some sandboxes down")


def create_bridge(bridge: str, subnet: int) -> None:
    _ip("link", "add", "name", bridge, "type", "bridge")
    _ip("addr", "add", f"{address(subnet, BRIDGE_HOST)}/24", "dev", bridge)
    _ip("link", "set", bridge, "up")


def create_host(netns: str, veth: str, bridge: str, host_address: str) -> None:
    """The namespace, its loopback, and a veth whose far end is its eth0 on the bridge."""
    _ip("netns", "add", netns)
    _ip("-n", netns, "link", "set", "lo", "up")
    _ip("link", "add", veth, "type", "veth", "peer", "name", IFACE, "netns", netns)
    _ip("-n", netns, "addr", "add", f"{host_address}/24", "dev", IFACE)
    _ip("-n", netns, "link", "set", IFACE, "up")
    _ip("link", "set", veth, "master", bridge)
    _ip("link", "set", veth, "up")


def add_interface(netns: str, veth: str, bridge: str, host_address: str,
                  interface: str) -> None:
    """One more link of an existing host, to another bridge (another network).

    A host with two links can lose one while the other carries on: a controller whose
    path to etcd is cut (``set_link`` on this veth) while its ssh and SQL to the shard's
    hosts still work is the partition the etcd fencing is there for.
    """
    _ip("link", "add", veth, "type", "veth", "peer", "name", interface, "netns", netns)
    _ip("-n", netns, "addr", "add", f"{host_address}/24", "dev", interface)
    _ip("-n", netns, "link", "set", interface, "up")
    _ip("link", "set", veth, "master", bridge)
    _ip("link", "set", veth, "up")


def remove_interface(veth: str) -> None:
    """Idempotent: a bridge-side veth made by ``add_interface`` (its peer goes with it)."""
    if Path("/sys/class/net", veth).exists():
        _ip("link", "del", veth)


def set_link(veth: str, up: bool) -> None:
    """Cut (or restore) a host's network by its bridge-side veth.

    A restored link is not enough for the next connection: an address resolution that
    began during the cut is still pending on the bridge and, when its probes run out,
    fails the first connect after the link is back with "no route to host" (seen in CI,
    reproduced by hand). So restoring also forgets the bridge's neighbour entries; the
    next packet resolves afresh over the working link.
    """
    _ip("link", "set", veth, "up" if up else "down")
    if up:
        bridge = Path("/sys/class/net", veth, "master")
        if bridge.exists():
            forget_neighbors(None, bridge.resolve().name)


def forget_neighbors(netns: str | None, device: str | None = None) -> None:
    """Drop the resolved and pending neighbour entries of one interface, or of every
    interface of a namespace (``ip neigh flush``): after a cut, in the hosts that tried
    to reach the cut one, so their next connect resolves afresh."""
    where = ("dev", device) if device else ("to", "0.0.0.0/0")
    _ip(*(("-n", netns) if netns else ()), "neigh", "flush", *where)


def link_bytes(interface: str) -> tuple[int, int]:
    """(rx, tx) byte counters of a root-namespace interface."""
    stats = Path("/sys/class/net") / interface / "statistics"
    return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())


def namespace_exists(netns: str) -> bool:
    return Path("/run/netns", netns).exists()


def namespace_pids(netns: str) -> list[int]:
    if not namespace_exists(netns):
        return []
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit() and int(tok) != os.getpid()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def kill_namespace_processes(netns: str, timeout: float = 10) -> None:
    """Whatever still runs in a host (sessions, a forgotten daemon) goes with the host."""
    pids = [p for p in namespace_pids(netns) if _alive(p)]
    if not pids:
        return
    log.info("%s: terminating %s", netns, pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return
    raise HotcopyError(f"{netns}: processes {pids} survived SIGKILL")


def remove_host(netns: str, veth: str) -> None:
    """Idempotent: processes, then the veth (its peer goes with it), then the namespace."""
    kill_namespace_processes(netns)
    if Path("/sys/class/net", veth).exists():
        _ip("link", "del", veth)
    if namespace_exists(netns):
        _ip("netns", "del", netns)


def remove_bridge(bridge: str) -> None:
    if Path("/sys/class/net", bridge).exists():
        _ip("link", "del", bridge)
