"""Catalog statements every dialect shares: engines, columns, keys, one row by its key.

The audit reads where replication keeps its position (which engine) and, when a
replica stopped on a duplicate key or a missing row, looks the row up by key to tell
whether the failing transaction is already in the data. information_schema answers
the same way on MariaDB 10.x/11.x and MySQL 5.7-8.4, so these live outside the two
flavor classes. Identifiers come from the server's own catalog or the replica's error
message and are quoted; every value travels as a parameter.
"""

from __future__ import annotations

from typing import Any

from hotcopy.mysql.flavor.base import Statement, quote_identifier

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")

#: How a decoded row value is compared with the stored one: most types compare as
#: they are; TIMESTAMP is written to the binlog as seconds since the epoch, and ENUM,
#: SET and BIT as numbers, so the stored side is converted the same way; strings
#: compare byte for byte (a case-insensitive collation would call 'a' and 'A' equal).
_COMPARE_EXPRESSIONS = {
    "timestamp": "UNIX_TIMESTAMP({col})",
    "number_of": "{col} + 0",
    "binary": "CAST({col} AS BINARY)",
}


def table_engines(schema: str, names: list[str], prefix: str | None = None) -> Statement:
    """ENGINE of the named tables of one schema (and of those whose name starts with prefix)."""
    args: list[Any] = [schema]
    conditions = []
    if names:
        conditions.append("TABLE_NAME IN (" + ", ".join(["%s"] * len(names)) + ")")
        args += names
    if prefix:
        conditions.append("TABLE_NAME LIKE %s")
        args.append(prefix.replace("_", "\\_") + "%")
    where = " OR ".join(conditions) or "FALSE"
    return ("SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA = %s AND ({where}) ORDER BY TABLE_NAME", tuple(args))


def user_table_engines() -> Statement:
    """Every user table with its engine (system schemas excluded)."""
    placeholders = ", ".join(["%s"] * len(SYSTEM_SCHEMAS))
    return ("SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE FROM information_schema.TABLES "
            f"WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ({placeholders}) "
            "ORDER BY TABLE_SCHEMA, TABLE_NAME", SYSTEM_SCHEMAS)


def alter_engine(schema: str, table: str, engine: str) -> Statement:
    if not engine.isalnum():
        raise ValueError(f"not an engine name: {engine!r}")
    return (f"ALTER TABLE {quote_identifier(schema)}.{quote_identifier(table)} ENGINE={engine}",
            ())


def global_variables() -> Statement:
    return ("SHOW GLOBAL VARIABLES", ())


def table_columns(schema: str, table: str) -> Statement:
    return ("SELECT COLUMN_NAME, ORDINAL_POSITION, DATA_TYPE, COLUMN_TYPE "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
            "ORDER BY ORDINAL_POSITION", (schema, table))


def unique_keys(schema: str, table: str) -> Statement:
    """Unique indexes with their columns in order, the primary key first."""
    return ("SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND NON_UNIQUE = 0 "
            "ORDER BY INDEX_NAME <> 'PRIMARY', INDEX_NAME, SEQ_IN_INDEX", (schema, table))


def compare_row(schema: str, table: str, key: list[tuple[str, str, Any]],
                values: list[tuple[str, str, Any]]) -> Statement:
    """One row looked up by key; one 0/1 column per value: does the stored value match?

    ``key`` and ``values`` are (column, comparison kind, value) triples; NULL-safe
    equality (<=>) makes a NULL in the image match a NULL in the row.
    """
    if not key:
        raise ValueError("a row lookup needs at least one key column")

    def expression(column: str, kind: str) -> str:
        template = _COMPARE_EXPRESSIONS.get(kind, "{col}")
        return template.format(col=quote_identifier(column))

    selected = [f"{expression(c, k)} <=> %s AS {quote_identifier(f'v{i}')}"
                for i, (c, k, _) in enumerate(values)] or ["1 AS `v`"]
    where = " AND ".join(f"{expression(c, k)} <=> %s" for c, k, _ in key)
    args = tuple(v for _, _, v in values) + tuple(v for _, _, v in key)
    return (f"SELECT {', '.join(selected)} FROM {quote_identifier(schema)}."
            f"{quote_identifier(table)} WHERE {where} LIMIT 1", args)


def data_tables() -> Statement:
    """Every user base table with what the data audit needs, in one catalog read.

    TABLE_ROWS is exact for MyISAM/Aria and the optimizer's estimate for InnoDB (what
    the severity by size needs, without counting rows); CREATE_OPTIONS and ROW_FORMAT
    tell an Aria TRANSACTIONAL=0 table from a crash-safe one.
    """
    placeholders = ", ".join(["%s"] * len(SYSTEM_SCHEMAS))
    return ("SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE, TABLE_ROWS, DATA_LENGTH, ROW_FORMAT, "
            "CREATE_OPTIONS FROM information_schema.TABLES "
            f"WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ({placeholders}) "
            "ORDER BY TABLE_SCHEMA, TABLE_NAME", SYSTEM_SCHEMAS)


def data_unique_keys() -> Statement:
    """Every unique index column of the user tables, with its nullability, in one read.

    A row is identifiable only by a primary key or a unique key whose columns are all
    NOT NULL (a unique key admits any number of NULL rows), so NULLABLE comes along.
    """
    placeholders = ", ".join(["%s"] * len(SYSTEM_SCHEMAS))
    return ("SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, COLUMN_NAME, NULLABLE "
            "FROM information_schema.STATISTICS "
            f"WHERE NON_UNIQUE = 0 AND TABLE_SCHEMA NOT IN ({placeholders}) "
            "ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX", SYSTEM_SCHEMAS)


def add_primary_key(schema: str, table: str, columns: list[str]) -> Statement:
    """A primary key on existing columns (they become NOT NULL; refused if a NULL exists)."""
    if not columns:
        raise ValueError("a primary key needs at least one column")
    listed = ", ".join(quote_identifier(c) for c in columns)
    return (f"ALTER TABLE {quote_identifier(schema)}.{quote_identifier(table)} "
            f"ADD PRIMARY KEY ({listed})", ())


def add_row_id_column(schema: str, table: str, column: str, *, invisible: bool) -> Statement:
    """A new BIGINT AUTO_INCREMENT primary key column, first (what the flavors build on)."""
    hidden = " INVISIBLE" if invisible else ""
    return (f"ALTER TABLE {quote_identifier(schema)}.{quote_identifier(table)} "
            f"ADD COLUMN {quote_identifier(column)} BIGINT UNSIGNED NOT NULL AUTO_INCREMENT"
            f"{hidden} PRIMARY KEY FIRST", ())
