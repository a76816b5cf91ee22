"""A throwaway etcd cluster on free loopback ports, data under a given directory.

Shared by the tests (tests/etcd_cluster.py wraps it with pytest's skip/fail) and the
benchmark (``scripts/bench --journal etcd``), so both measure and test against the same
cluster shape: ``EtcdCluster(root, size).start()`` waits, bounded, until every member
answers and agrees on a leader; ``kill(i)`` SIGKILLs a member; ``stop()`` reaps all.
Heartbeat 100 ms and election timeout 1 s, as etcd recommends for a LAN.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hotcopy.errors import HotcopyError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (all held open together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _post(url: str, body: dict[str, object], timeout: float = 2.0) -> dict[str, object]:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"not a loopback member URL: {url}")
    request = urllib.request.Request(url, json.dumps(body).encode(),  # noqa: S310 (checked)
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return dict(json.loads(response.read()))


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    root: Path
    size: int = 1
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        for i in range(self.size):
            name = f"m{i}"
            self.members.append(Member(name, ports[2 * i], ports[2 * i + 1],
                                       self.root / name, self.root / f"{name}.log"))
        self._initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}"
                                 for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def start_member(self, i: int, state: str = "new") -> None:
        binary = etcd_binary()
        if binary is None:
            raise HotcopyError("etcd is not installed",
                               hint="apt-get install etcd-server (scripts/bootstrap.sh does)")
        m = self.members[i]
        m.data_dir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{m.peer_port}"
        with m.log.open("ab") as out:
            m.proc = subprocess.Popen(
                [binary, "--name", m.name, "--data-dir", str(m.data_dir),
                 "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", self._initial, "--initial-cluster-state", state,
                 "--initial-cluster-token", f"t-{self.root.name}",
                 "--heartbeat-interval", "100", "--election-timeout", "1000"],
                stdout=out, stderr=subprocess.STDOUT)

    def start(self) -> EtcdCluster:
        for i in range(self.size):
            self.start_member(i)
        self.wait_ready()
        log.info("etcd: %d member(s) up at %s", self.size, ", ".join(self.endpoints))
        return self

    def wait_ready(self, members: list[int] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        wanted = list(range(self.size)) if members is None else members
        while time.monotonic() < deadline:
            if self.leader(wanted) is not None:
                return
            time.sleep(0.1)
        logs = "\n".join(m.log.read_text(errors="replace")[-2000:] for m in self.members
                         if m.log.exists())
        raise HotcopyError(f"etcd did not become ready within {START_TIMEOUT_S} s:\n{logs}")

    def leader(self, among: list[int] | None = None) -> int | None:
        """Index of the leader, if every member in ``among`` answers and agrees on one."""
        leader_ids: set[str] = set()
        ids: dict[str, int] = {}
        for i in among if among is not None else range(self.size):
            m = self.members[i]
            try:
                status = _post(f"{m.url}/v3/maintenance/status", {})
            except OSError:
                return None
            header = status.get("header")
            if not isinstance(header, dict):
                return None
            ids[str(header["member_id"])] = i
            leader_ids.add(str(status.get("leader")))
        if len(leader_ids) != 1:
            return None
        (leader_id,) = leader_ids
        return ids.get(leader_id)

    def kill(self, i: int) -> None:
        proc = self.members[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self.members[i].proc = None

    def stop(self) -> None:
        for i in range(self.size):
            self.kill(i)
