"""Topology "netns": every server of a sandbox on a host of its own.

A host is a network namespace with one address on the sandbox's bridge and its own
sshd on port 22; its mariadbd runs in that namespace, bound to that address. The
written config then reaches each server as production does (``ssh = "root@ADDR"``,
strict host keys, key-only login), so a clone in this topology exercises the ssh
executor end to end and proves where the data flows.

Every name is recorded in sandbox.json before the thing is created, so ``down`` can
remove it after a crash; everything here tolerates being undone twice.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hotcopy.errors import HotcopyError
from hotcopy.hosts import SshExecutor, SshOptions
from hotcopy.sandbox import netns, sshd
from hotcopy.sandbox.layout import (
    CLIENT_KEY,
    KNOWN_HOSTS,
    SSH_DIR,
    SandboxState,
    save_state,
)

log = logging.getLogger(__name__)

MYSQL_PORT = 3306  # every host has its own address, so all can use the usual port
REQUIRED_TOOLS = ("ip", "nsenter", "ssh", "ssh-keygen", sshd.SSHD)


def ssh_dir(directory: Path) -> Path:
    return directory / SSH_DIR


def sshd_dir(directory: Path, server: str) -> Path:
    return ssh_dir(directory) / server


def ssh_options(directory: Path) -> SshOptions:
    """The options hotcopy's Runtime builds from the written [ssh] section."""
    return SshOptions(known_hosts=str(ssh_dir(directory) / KNOWN_HOSTS),
                      identity_file=str(ssh_dir(directory) / CLIENT_KEY))


def create(directory: Path, state: SandboxState) -> None:
    """Bridge, hosts and their sshds; the names are journaled in state first."""
    tag = netns.tag_for(directory)
    with netns.subnet_lock():
        subnet = netns.pick_subnet(tag)
        state.subnet, state.bridge = subnet, netns.bridge_name(tag)
        for index, spec in enumerate(state.servers):
            spec.address = netns.address(subnet, netns.FIRST_HOST + index)
            spec.netns = netns.namespace_name(tag, spec.name)
            spec.veth = netns.veth_name(tag, index)
            spec.port = MYSQL_PORT
        save_state(state)
        # Under the lock until the bridge holds its address: that is what the next
        # sandbox's pick_subnet sees.
        netns.create_bridge(state.bridge, subnet)
    for spec in state.servers:
        assert spec.netns is not None and spec.veth is not None
        netns.create_host(spec.netns, spec.veth, state.bridge, spec.address)
    key = sshd.client_key(ssh_dir(directory) / CLIENT_KEY)
    servers = [sshd.start(sshd_dir(directory, spec.name), spec.address, authorized_key=key,
                          netns=spec.netns) for spec in state.servers]
    sshd.write_known_hosts(ssh_dir(directory) / KNOWN_HOSTS, servers)
    log.info("hosts %s on bridge %s (%s)", ", ".join(f"{s.name}={s.address}"
                                                     for s in state.servers),
             state.bridge, netns.address(subnet, netns.BRIDGE_HOST))


def check_ssh(directory: Path, state: SandboxState) -> None:
    """Every host answers over ssh exactly as hotcopy will call it, from its own netns."""
    options = ssh_options(directory)

    def probe(address: str, expected: str) -> None:
        result = SshExecutor(f"root@{address}", options).run(
            ["readlink", "/proc/self/ns/net"], timeout=60)
        if result.stdout.strip() != expected:
            raise HotcopyError(f"ssh to {address} did not land in its namespace "
                               f"({result.stdout.strip()} != {expected})")

    expected = {s.address: _namespace_id(s.netns) for s in state.servers if s.netns}
    with ThreadPoolExecutor(max_workers=len(expected) or 1) as pool:
        for future in [pool.submit(probe, a, e) for a, e in expected.items()]:
            future.result()


def _namespace_id(name: str) -> str:
    """What /proc/PID/ns/net reads as for processes inside the named namespace."""
    return f"net:[{Path('/run/netns', name).stat().st_ino}]"


def destroy(directory: Path, state: SandboxState) -> None:
    """sshds, whatever else runs in the hosts, veths, namespaces, bridge; idempotent."""
    errors: list[str] = []
    for spec in state.servers:
        try:
            sshd.stop(sshd_dir(directory, spec.name))
            if spec.netns and spec.veth:
                netns.remove_host(spec.netns, spec.veth)
        except HotcopyError as exc:
            errors.append(f"{spec.name}: {exc.message}")
    if state.bridge:
        netns.remove_bridge(state.bridge)
    if errors:
        raise HotcopyError("could not remove every host: " + "; ".join(errors))
