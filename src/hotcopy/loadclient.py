"""A write client that remembers every commit the server acknowledged, and follows the
master through an endpoint file.

A switchover or failover is only proven when no acknowledged commit is lost; this
client is the witness. Each write is one autocommit INSERT of a sequence number, so
"acknowledged" means the server returned OK for that commit. It reads the master's
``host:port`` from a file (what a proxy or a VIP does in production; a hook rewrites
the file) and reconnects after every error, so its log also shows the write outage:
the time between its last commit on the old master and its first on the new one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hotcopy.errors import MySQLError
from hotcopy.mysql.connection import Connection, ServerAddress, connect

log = logging.getLogger(__name__)

SCHEMA = "app"
TABLE = "acked"


@dataclass(frozen=True)
class Ack:
    n: int
    endpoint: str
    at: float  # time.monotonic() when the OK arrived


def create_table(address: ServerAddress, option_file: str) -> None:
    conn = connect(address, option_file)
    try:
        conn.execute(f"CREATE DATABASE IF NOT EXISTS {SCHEMA}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{TABLE} (n BIGINT PRIMARY KEY, "
                     "endpoint VARCHAR(64) NOT NULL, note VARCHAR(64) NOT NULL) ENGINE=InnoDB")
    finally:
        conn.close()


def write_endpoint(path: Path, host: str, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{host}:{port}\n")
    tmp.replace(path)


class AckedWriter:
    """Background writer; ``acks`` lists every acknowledged commit, in order."""

    def __init__(self, endpoint_file: Path, option_file: str, *, pause_s: float = 0.002,
                 first: int | None = None, retry_s: float = 0.01) -> None:
        self.endpoint_file = endpoint_file
        self.option_file = option_file
        self.pause_s = pause_s
        self.retry_s = retry_s
        self.acks: list[Ack] = []
        self.errors = 0
        self._next = first  # None: after the highest number already in the table
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="acked-writer", daemon=True)

    def __enter__(self) -> AckedWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def wait_for_acks(self, count: int, timeout: float = 30) -> bool:
        """Until ``count`` more commits were acknowledged (bounded)."""
        goal = len(self.acks) + count
        deadline = time.monotonic() + timeout
        while len(self.acks) < goal and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.acks) >= goal

    def _connect(self) -> tuple[Connection, str]:
        endpoint = self.endpoint_file.read_text().strip()
        host, _, port = endpoint.rpartition(":")
        conn = connect(ServerAddress("app", host, int(port)), self.option_file,
                       connect_timeout=2, read_timeout=10)
        return conn, endpoint

    def _run(self) -> None:
        conn: Connection | None = None
        endpoint = ""
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn, endpoint = self._connect()
                if self._next is None:
                    self._next = int(conn.scalar(f"SELECT COALESCE(MAX(n), 0) + 1 FROM "
                                                 f"{SCHEMA}.{TABLE}"))
                n = self._next
                conn.execute(f"INSERT INTO {SCHEMA}.{TABLE} (n, endpoint, note) "
                             "VALUES (%s, %s, %s)", (n, endpoint, f"commit {n}"))
                self.acks.append(Ack(n, endpoint, time.monotonic()))
                self._next += 1
            except (MySQLError, OSError, ValueError) as exc:
                # The outcome of a commit whose OK never came is unknown: not acknowledged,
                # and the next attempt uses a new number so it is never counted twice.
                if self._next is not None:
                    self._next += 1
                self.errors += 1
                log.debug("acked writer: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(self.retry_s)
                continue
            if self.pause_s:
                time.sleep(self.pause_s)
        if conn is not None:
            conn.close()

    def outage_s(self, old: str, new: str) -> float | None:
        """Last acknowledged commit on ``old`` to the first on ``new`` (endpoints)."""
        last_old = max((a.at for a in self.acks if a.endpoint == old), default=None)
        first_new = min((a.at for a in self.acks if a.endpoint == new), default=None)
        if last_old is None or first_new is None:
            return None
        return first_new - last_old
