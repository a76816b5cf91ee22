"""A host's link cut and restored: the first connection after it must go through.

Tests that cut a host (failover detection, partitions, a controller's death) go on
right after restoring the link, and the first connect used to fail now and then with
"no route to host": an address resolution begun during the cut was still pending on
the bridge and failed the new connection when its probes ran out (CI, test_promotion_netns;
three times in five by hand). ``set_link(up=True)`` forgets those entries. Real
namespaces, a real veth and bridge, a real listener in the host.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.sandbox import netns
from hotcopy.sandbox.sshd import netns_argv

from ..real_parts import missing_tools, needs

pytestmark = needs(missing_tools(("ip", "socat"), "network namespace link tests"))

PORT = 4406
CYCLES = 5


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(bridge-side veth, address) of one host with a TCP listener, removed at the end."""
    tag = netns.tag_for(tmp_path)
    bridge, ns, veth = netns.bridge_name(tag), netns.namespace_name(tag, "h"), \
        netns.veth_name(tag, 0)
    with netns.subnet_lock():
        subnet = netns.pick_subnet(tag)
        netns.create_bridge(bridge, subnet)
    listener = None
    try:
        ip = netns.address(subnet, netns.FIRST_HOST)
        netns.create_host(ns, veth, bridge, ip)
        listener = subprocess.Popen(
            [*netns_argv(ns), "socat", f"TCP-LISTEN:{PORT},bind={ip},fork,reuseaddr",
             "SYSTEM:true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert _connects(ip, timeout=2, attempts=100), "the listener never came up"
        yield veth, ip
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(timeout=10)
        netns.remove_host(ns, veth)
        netns.remove_bridge(bridge)


def _connects(ip: str, timeout: float, attempts: int = 1) -> bool:
    for attempt in range(attempts):
        try:
            socket.create_connection((ip, PORT), timeout=timeout).close()
            return True
        except OSError:
            if attempt + 1 < attempts:
                time.sleep(0.1)
    return False


def test_the_first_connect_after_a_restored_link_succeeds(host: tuple[str, str]) -> None:
    veth, ip = host
    for cycle in range(CYCLES):
        netns.set_link(veth, up=False)
        try:
            # Fails with "no route to host" once its resolution's probes ran out (3 s);
            # the entry the next cycle's attempt leaves pending is what bit after restore.
            assert not _connects(ip, timeout=5), "the cut host answered"
        finally:
            netns.set_link(veth, up=True)
        try:
            socket.create_connection((ip, PORT), timeout=10).close()
        except OSError as exc:
            pytest.fail(f"cycle {cycle}: the first connect after the link came back: {exc}")
