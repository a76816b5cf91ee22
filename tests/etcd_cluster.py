"""Real etcd for tests: the cluster of hotcopy.sandbox.etcd plus pytest's fixtures.

The cluster itself lives in src/ so that the benchmark starts the same one. Without
the etcd binary, tests skip, unless CI=true (or HOTCOPY_REQUIRE_ALL=1), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.sandbox.etcd import EtcdCluster, Member, etcd_binary, free_ports

__all__ = ["CuttableLink", "EtcdCluster", "Member", "free_ports", "require_etcd",
           "unique_prefix"]

ETCD = etcd_binary()


def require_etcd() -> str:
    if ETCD is None:
        message = "etcd is not installed (Debian etcd-server): run scripts/bootstrap.sh"
        if os.environ.get("CI") == "true" or os.environ.get("HOTCOPY_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return ETCD


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
