"""Table checksums: the evidence that two servers hold the same rows."""

from __future__ import annotations

from typing import Any

from hotcopy.mysql.flavor.base import checksum_tables, user_tables
from hotcopy.mysql.server import Server

BATCH = 50


def list_tables(server: Server) -> list[tuple[str, str]]:
    return [(str(r["TABLE_SCHEMA"]), str(r["TABLE_NAME"])) for r in server.query(user_tables())]


def table_checksums(server: Server, tables: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """``schema.table`` -> CHECKSUM TABLE ... EXTENDED value, for every user table."""
    tables = list_tables(server) if tables is None else tables
    sums: dict[str, Any] = {}
    for i in range(0, len(tables), BATCH):
        for row in server.query(checksum_tables(tables[i:i + BATCH])):
            sums[str(row["Table"])] = row["Checksum"]
    return sums


def differing_tables(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    names = set(expected) | set(actual)
    return sorted(n for n in names if expected.get(n) != actual.get(n))
