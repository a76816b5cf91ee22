"""Connections to the servers of a shard, with credentials from option files only.

Passwords never appear in argv, logs, the journal or error messages: they come from the
``[client]`` group of an option file (hotcopy.mysql.option_file), which gives only the
account and TLS settings; where a session goes comes from the config alone.
Driver errors are translated into messages that say which server and what to check.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.connections
import pymysql.cursors

from hotcopy.errors import MySQLError
from hotcopy.mysql.option_file import ClientOptions, read_client_options

log = logging.getLogger(__name__)

Row = dict[str, Any]

ER_ACCESS_DENIED = 1045
ER_CONN_HOST_ERROR = 2003
ER_SERVER_GONE = 2006
ER_SERVER_LOST = 2013
ER_LOCK_WAIT_TIMEOUT = 1205
ER_QUERY_INTERRUPTED = 1317
ER_NO_SUCH_THREAD = 1094


@dataclass(frozen=True)
class ServerAddress:
    name: str
    host: str
    port: int
    #: Set only by code that owns the server (the sandbox's root login); never read from
    #: an option file, where a stray socket= would redirect every session.
    unix_socket: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.host}:{self.port})"


class Connection:
    """One session on one server; queries return rows as dicts keyed by column name."""

    def __init__(self, address: ServerAddress, raw: Any) -> None:
        self.address = address
        self._raw = raw

    @property
    def thread_id(self) -> int:
        return int(self._raw.thread_id())

    def query(self, sql: str, args: Sequence[Any] | None = None) -> list[Row]:
        log.debug("%s: %s", self.address.name, sql)
        try:
            with self._raw.cursor(pymysql.cursors.DictCursor) as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        except pymysql.err.MySQLError as exc:
            raise translate(self.address, exc, sql) from exc

    def one(self, sql: str, args: Sequence[Any] | None = None) -> Row | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def scalar(self, sql: str, args: Sequence[Any] | None = None) -> Any:
        row = self.one(sql, args)
        return None if row is None else next(iter(row.values()))

    def execute(self, sql: str, args: Sequence[Any] | None = None) -> None:
        self.query(sql, args)

    def close(self) -> None:
        try:
            self._raw.close()
        except Exception:
            log.debug("closing %s failed", self.address, exc_info=True)


class _SharedTLSConnection(pymysql.connections.Connection):  # type: ignore[misc]
    """PyMySQL builds a new TLS context for every session, even in its default
    "preferred" mode against a server that offers no TLS, and each one loads the
    system's CA store: 24 ms of CPU, 0.24 s of a sandbox clone's 1.5 s (10 sessions).
    One context per set of TLS settings serves every session of the process (a
    context is made to be shared by many sockets); how it is built stays PyMySQL's."""

    _contexts: dict[tuple[tuple[str, Any], ...], ssl.SSLContext] = {}
    _lock = threading.Lock()

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        if not isinstance(sslp, dict):
            return super()._create_ssl_ctx(sslp)  # type: ignore[no-any-return]
        key = tuple(sorted(sslp.items()))
        with self._lock:
            if key not in self._contexts:
                self._contexts[key] = super()._create_ssl_ctx(sslp)
            return self._contexts[key]


def connect(
    address: ServerAddress,
    option_file: str | None,
    *,
    connect_timeout: float = 5,
    read_timeout: float | None = None,
) -> Connection:
    """Open a session as the account in option_file's ``[client]`` group.

    Without an option file the session logs in as the OS user (unix_socket
    authentication, with address.unix_socket): no password exists then.
    """
    options = read_client_options(option_file) if option_file else ClientOptions()
    try:
        raw = _SharedTLSConnection(
            host=address.host,
            port=address.port,
            unix_socket=address.unix_socket,
            user=options.user,
            password=options.password or "",
            ssl=options.ssl or None,
            ssl_disabled=options.ssl_disabled or None,
            connect_timeout=connect_timeout,
            # PyMySQL reads the server's greeting with read_timeout, not connect_timeout:
            # a mysqld that accepts TCP but is stuck in startup would hang us forever.
            read_timeout=connect_timeout if read_timeout is None else read_timeout,
            autocommit=True,
            charset="utf8mb4",
        )
    except pymysql.err.MySQLError as exc:
        raise translate(address, exc, None, option_file=option_file) from exc
    if read_timeout is None:
        raw._read_timeout = None  # once greeted, sessions may run long (CHECKSUM TABLE)
    return Connection(address, raw)


@contextmanager
def session(address: ServerAddress, option_file: str, **kwargs: Any) -> Iterator[Connection]:
    conn = connect(address, option_file, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number behind a (translated) error, if there is one."""
    cause = exc.__cause__ if isinstance(exc, MySQLError) else exc
    if isinstance(cause, pymysql.err.MySQLError) and cause.args and isinstance(cause.args[0], int):
        return int(cause.args[0])
    return None


def translate(address: ServerAddress, exc: pymysql.err.MySQLError, sql: str | None, *,
              option_file: str | None = None) -> MySQLError:
    """A driver error as a message naming the server; never echoes the password."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    if code == ER_ACCESS_DENIED:
        where = f"the option file {option_file}" if option_file else "the admin option file"
        return MySQLError(
            f"{address}: access denied for the admin account ({text})",
            hint=f"check user and password in {where} (config key mysql.option_file), "
                 f"and that the account exists on {address.name} and may connect from "
                 "this host")
    if code == ER_CONN_HOST_ERROR:
        return MySQLError(
            f"{address}: cannot connect ({_connect_reason(exc, text)})",
            hint=f"is mysqld running on {address.name} and listening on "
                 f"{address.host}:{address.port}? Check host and port of "
                 f"servers.{address.name} in the config, and any firewall in between")
    if code in (ER_SERVER_GONE, ER_SERVER_LOST):
        return MySQLError(f"{address}: connection lost ({text})")
    where = f" in `{sql[:120]}`" if sql else ""
    return MySQLError(f"{address}: error {code}{where}: {text}")


def _connect_reason(exc: pymysql.err.MySQLError, text: str) -> str:
    """The OS-level cause (refused, timed out, unknown host) without PyMySQL's preamble."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    if isinstance(cause, OSError) and str(cause):
        return str(cause)
    return text
