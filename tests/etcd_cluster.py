"""Real etcd for tests: one member or a cluster on free loopback ports, data under tmp.

Reusable by any test (journal, agent): ``EtcdCluster(tmp, size).start()`` waits, bounded,
until every member answers and a leader exists; ``kill(i)`` SIGKILLs a member,
``leader()`` says which one leads; ``stop()`` always reaps every process. Without the
etcd binary, tests skip, unless CI=true (or HOTCOPY_REQUIRE_ALL=1), where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ETCD = shutil.which("etcd")
START_TIMEOUT_S = 30.0


def require_etcd() -> str:
    if ETCD is None:
        message = "etcd is not installed (Debian etcd-server): run scripts/bootstrap.sh"
        if os.environ.get("CI") == "true" or os.environ.get("HOTCOPY_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return ETCD


def free_ports(count: int) -> list[int]:
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
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
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
        m = self.members[i]
        m.data_dir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{m.peer_port}"
        with m.log.open("ab") as log:
            m.proc = subprocess.Popen(
                [require_etcd(), "--name", m.name, "--data-dir", str(m.data_dir),
                 "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", self._initial, "--initial-cluster-state", state,
                 "--initial-cluster-token", f"t-{self.root.name}",
                 "--heartbeat-interval", "100", "--election-timeout", "1000"],
                stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> EtcdCluster:
        for i in range(self.size):
            self.start_member(i)
        self.wait_ready()
        return self

    def wait_ready(self, members: list[int] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        wanted = list(range(self.size)) if members is None else members
        while time.monotonic() < deadline:
            if self.leader(wanted) is not None:
                return
            time.sleep(0.1)
        logs = "\n".join(m.log.read_text(errors="replace")[-2000:] for m in self.members)
        raise RuntimeError(f"etcd did not become ready within {START_TIMEOUT_S} s:\n{logs}")

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
            assert isinstance(header, dict)
            ids[str(header["member_id"])] = i
            leader_ids.add(str(status.get("leader")))
        if len(leader_ids) != 1:
            return None
        (leader_id,) = leader_ids
        return ids.get(leader_id) if leader_id in ids else None

    def kill(self, i: int) -> None:
        proc = self.members[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self.members[i].proc = None

    def stop(self) -> None:
        for i in range(self.size):
            self.kill(i)


@pytest.fixture(scope="session")
def etcd_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One member for the whole session; tests keep apart by using their own prefix."""
    require_etcd()
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), 1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def etcd_cluster3(tmp_path: Path) -> Iterator[EtcdCluster]:
    require_etcd()
    cluster = EtcdCluster(tmp_path / "etcd3", 3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


_counter = iter(range(1, 1 << 30))


def unique_prefix() -> str:
    """A fresh tree per journal: tests share one etcd without seeing each other."""
    return f"/t{os.getpid()}-{next(_counter)}"


class CuttableLink:
    """TCP proxies in front of etcd members: one controller's path to etcd that a test
    can cut (new connections are accepted and then left unanswered, as when packets are
    dropped) and restore, while everything else (the data path, other controllers)
    stays up."""

    def __init__(self, targets: list[str]) -> None:
        import threading

        self._threading = threading
        self.cut = threading.Event()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listeners: list[socket.socket] = []
        self.endpoints: list[str] = []
        self._closing = threading.Event()
        for url in targets:
            port = int(url.rsplit(":", 1)[1])
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            self._listeners.append(listener)
            self.endpoints.append(f"http://127.0.0.1:{listener.getsockname()[1]}")
            threading.Thread(target=self._accept, args=(listener, port), daemon=True).start()

    def _accept(self, listener: socket.socket, port: int) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                with self._lock:
                    self._held.append(conn)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, upstream), (upstream, conn)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.cut.clear()
        with self._lock:
            held, self._held = self._held, []
        for conn in held:
            conn.close()

    def close(self) -> None:
        self._closing.set()
        self.restore()
        for listener in self._listeners:
            listener.close()
