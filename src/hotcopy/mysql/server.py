"""A handle on one server of the shard: its address, its dialect, its admin session."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from hotcopy.errors import MySQLError
from hotcopy.mysql.connection import Connection, Row, ServerAddress, connect
from hotcopy.mysql.flavor import Flavor, Statement, detect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerIdentity:
    server_id: int
    hostname: str
    datadir: str

    def __str__(self) -> str:
        return f"server_id {self.server_id}, {self.hostname}:{self.datadir}"


class Server:
    """Lazily connects; reconnects once when the cached session died (e.g. a restart)."""

    def __init__(self, address: ServerAddress, option_file: str, connect_timeout: float = 5):
        self.address = address
        self.option_file = option_file
        self.connect_timeout = connect_timeout
        self._session: Connection | None = None

    @property
    def name(self) -> str:
        return self.address.name

    def new_session(self, *, read_timeout: float | None = None) -> Connection:
        """A dedicated session, e.g. for a lock that must live exactly as long as it."""
        return connect(self.address, self.option_file, connect_timeout=self.connect_timeout,
                       read_timeout=read_timeout)

    def session(self) -> Connection:
        if self._session is None:
            self._session = self.new_session()
        return self._session

    def query(self, statement: Statement) -> list[Row]:
        sql, args = statement
        try:
            return self.session().query(sql, args)
        except MySQLError:
            if self._session is None:
                raise
            self.close()
            return self.session().query(sql, args)

    def one(self, statement: Statement) -> Row | None:
        rows = self.query(statement)
        return rows[0] if rows else None

    def scalar(self, statement: Statement) -> Any:
        row = self.one(statement)
        return None if row is None else next(iter(row.values()))

    def execute(self, statement: Statement) -> None:
        self.query(statement)

    @cached_property
    def version_string(self) -> str:
        return str(self.scalar(("SELECT VERSION()", ())))

    @cached_property
    def flavor(self) -> Flavor:
        return detect(self.version_string)

    def variable(self, name: str) -> Any:
        row = self.one(("SHOW GLOBAL VARIABLES LIKE %s", (name,)))
        return None if row is None else row["Value"]

    def status_variable(self, name: str) -> Any:
        row = self.one(("SHOW GLOBAL STATUS LIKE %s", (name,)))
        return None if row is None else row["Value"]

    def identity(self) -> ServerIdentity:
        """Who answers at this address: tells three configured servers truly apart."""
        row = self.one(("SELECT @@server_id AS server_id, @@hostname AS hostname, "
                        "@@datadir AS datadir", ())) or {}
        return ServerIdentity(int(row.get("server_id") or 0), str(row.get("hostname") or ""),
                              os.path.normpath(str(row.get("datadir") or "")))

    def forget_flavor(self) -> None:
        """After the server was replaced (new datadir), its version may differ."""
        self.__dict__.pop("flavor", None)
        self.__dict__.pop("version_string", None)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
