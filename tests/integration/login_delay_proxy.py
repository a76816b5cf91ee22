"""A TCP proxy in front of a MariaDB server that holds back one account's logins.

A replica told START SLAVE shows its IO thread as "Connecting" until the master has
accepted its login. On loopback that takes a millisecond or two, so a check made right
after START SLAVE sees "Connecting" only sometimes. This proxy makes the slow master
certain: while armed, it forwards a login of ``user`` (the replication account) only
after ``delay_s``; every other session (the controller's own) passes straight through.

The login is the client's first packet after the server's greeting (protocol 4.1: four
bytes of capabilities, four of max packet size, one of charset, 23 of filler, then the
NUL-terminated user name). A 32-byte first packet is an SSL request: its user name comes
encrypted, so such a session passes through unheld (the sandbox does not use TLS).
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from types import TracebackType

_USER_OFFSET = 32


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed mid-packet")
        data += chunk
    return data


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def login_user(payload: bytes) -> str | None:
    """The user name of a handshake response, or None for an SSL request."""
    if len(payload) <= _USER_OFFSET:
        return None
    end = payload.find(b"\0", _USER_OFFSET)
    return payload[_USER_OFFSET:end if end >= 0 else None].decode(errors="replace")


class LoginDelayProxy:
    """``with LoginDelayProxy(port, "repl") as proxy: proxy.arm(4.0)``; ``proxy.port``."""

    def __init__(self, upstream_port: int, user: str) -> None:
        self.user = user
        self.delay_s = 0.0
        #: How many logins of ``user`` were held back.
        self.held = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._relay(self.request, upstream_port)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def arm(self, delay_s: float) -> None:
        with self._lock:
            self.delay_s = delay_s

    def _relay(self, client: socket.socket, upstream_port: int) -> None:
        upstream = socket.create_connection(("127.0.0.1", upstream_port), timeout=10)
        upstream.settimeout(None)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        try:
            header = _read_exactly(client, 4)
            payload = _read_exactly(client, int.from_bytes(header[:3], "little"))
        except (ConnectionError, OSError):
            upstream.close()
            return
        with self._lock:
            delay = self.delay_s if login_user(payload) == self.user else 0.0
        if delay:
            time.sleep(delay)
            with self._lock:
                self.held += 1
        upstream.sendall(header + payload)
        _pump(client, upstream)

    def __enter__(self) -> LoginDelayProxy:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
