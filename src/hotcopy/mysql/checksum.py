"""Table checksums: the evidence that two servers hold the same rows."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hotcopy.errors import HotcopyError, MySQLError
from hotcopy.mysql.connection import ER_LOCK_WAIT_TIMEOUT, Row, error_code
from hotcopy.mysql.flavor.base import (
    Statement,
    checksum_tables,
    set_session_lock_wait_timeout,
    user_tables,
)
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)

BATCH = 50


def list_tables(server: Server) -> list[tuple[str, str]]:
    return [(str(r["TABLE_SCHEMA"]), str(r["TABLE_NAME"])) for r in server.query(user_tables())]


def table_checksums(server: Server, tables: list[tuple[str, str]] | None = None, *,
                    deadline: float | None = None) -> dict[str, Any]:
    """``schema.table`` -> CHECKSUM TABLE ... EXTENDED value, for every user table.

    With a deadline (time.monotonic()), the checksums run on a session of their own
    whose read timeout and lock_wait_timeout end there: a table locked by someone else
    or a slow disk cannot hold the caller (and a paused source) without bound.
    """
    tables = list_tables(server) if tables is None else tables
    if deadline is None:
        return _checksums(server.query, tables)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ChecksumTimeout(f"{server.name}: no time left for the checksums")
    session = server.new_session(read_timeout=remaining)
    try:
        session.execute(*set_session_lock_wait_timeout(max(1, int(remaining))))

        def query(statement: Statement) -> list[Row]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChecksumTimeout(f"{server.name}: the checksums did not finish in time")
            return session.query(*statement)

        try:
            sums = _checksums(query, tables)
        except MySQLError as exc:
            if time.monotonic() >= deadline - 1 or error_code(exc) == ER_LOCK_WAIT_TIMEOUT:
                raise ChecksumTimeout(f"{server.name}: the checksums did not finish in time "
                                      f"({exc.message})") from exc
            raise
        # A table CHECKSUM TABLE could not lock within lock_wait_timeout has a NULL sum
        # (a warning, not an error): at the deadline that is "out of time", not "differs".
        unread = [name for name, value in sums.items() if value is None]
        if unread and time.monotonic() >= deadline - 2:
            raise ChecksumTimeout(f"{server.name}: the checksums did not finish in time "
                                  f"({', '.join(unread[:5])} stayed locked)")
        return sums
    finally:
        session.close()


class ChecksumTimeout(HotcopyError):
    """The bounded checksum phase ran out of time."""


def _checksums(query: Callable[[Statement], list[Row]],
               tables: list[tuple[str, str]]) -> dict[str, Any]:
    sums: dict[str, Any] = {}
    for i in range(0, len(tables), BATCH):
        for row in query(checksum_tables(tables[i:i + BATCH])):
            sums[str(row["Table"])] = row["Checksum"]
    return sums


def differing_tables(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    names = set(expected) | set(actual)
    return sorted(n for n in names if expected.get(n) != actual.get(n))
