"""Everything the checks look at, read once per server (read-only).

Checks are pure functions of these facts, so the same checks run against a live
server and against recorded output (the MySQL dialects, which cannot run here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hotcopy.errors import HotcopyError
from hotcopy.mysql.flavor import Flavor, ReplicaStatus
from hotcopy.mysql.flavor import catalog as sql
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)

TRANSACTIONAL_ENGINES = frozenset({"innodb", "rocksdb", "tokudb", "ndbcluster"})


@dataclass(frozen=True)
class UniqueKey:
    name: str
    columns: tuple[str, ...]
    nullable: tuple[str, ...]  # the columns of the key that admit NULL

    @property
    def identifies_rows(self) -> bool:
        return self.name == "PRIMARY" or not self.nullable


@dataclass(frozen=True)
class TableFacts:
    """One user table as the catalog describes it (rows: estimate for InnoDB)."""

    schema: str
    name: str
    engine: str
    rows: int
    data_bytes: int
    row_format: str = ""
    create_options: str = ""
    keys: tuple[UniqueKey, ...] = ()

    @property
    def full_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def row_key(self) -> UniqueKey | None:
        """The key a replica can find a row by: the primary key, else a NOT NULL unique."""
        usable = [k for k in self.keys if k.identifies_rows]
        usable.sort(key=lambda k: (k.name != "PRIMARY", len(k.columns), k.name))
        return usable[0] if usable else None

_TRUE = {"ON", "1", "TRUE", "YES"}
_FALSE = {"OFF", "0", "FALSE", "NO"}


def normalise(value: Any) -> str:
    """ON/1/TRUE and OFF/0/FALSE compare equal; everything else upper-case text."""
    text = "" if value is None else str(value).strip().upper()
    if text in _TRUE:
        return "ON"
    if text in _FALSE:
        return "OFF"
    return text


@dataclass
class Facts:
    flavor: Flavor
    version: str
    variables: dict[str, str]
    channels: list[ReplicaStatus] = field(default_factory=list)
    position_engines: dict[str, str] = field(default_factory=dict)
    user_tables: dict[str, list[str]] = field(default_factory=dict)  # engine -> tables
    tables: list[TableFacts] = field(default_factory=list)
    downstream: list[str] = field(default_factory=list)
    read_only: dict[str, bool] = field(default_factory=dict)
    #: options of the server's defaults file (dashes, lower case), None when unread
    configured: dict[str, str] | None = None
    configured_source: str = ""
    persisted: dict[str, str] = field(default_factory=dict)

    def name(self, generic: str) -> str:
        return self.flavor.variable_name(generic)

    def var(self, generic: str) -> str | None:
        value = self.variables.get(self.name(generic))
        return None if value is None else str(value)

    def has(self, generic: str) -> bool:
        return self.name(generic) in self.variables

    def is_on(self, generic: str) -> bool:
        return normalise(self.var(generic)) == "ON"

    def number(self, generic: str, default: int = 0) -> int:
        value = self.var(generic)
        try:
            return int(value) if value not in (None, "") else default
        except ValueError:
            return default

    def dynamic(self, variable: str) -> bool:
        """Can SET GLOBAL change it? The server's catalog first, then the flavor's table."""
        if variable in self.read_only:
            return not self.read_only[variable]
        known = self.flavor.is_dynamic(variable)
        return bool(known)

    def configured_value(self, variable: str) -> str | None:
        """What a restart would bring back: SET PERSIST first, then the defaults file."""
        if variable in self.persisted:
            return self.persisted[variable]
        if self.configured is None:
            return None
        option = variable.replace("_", "-")
        if option in self.configured:
            value = self.configured[option]
            return "ON" if value == "" else value
        if f"skip-{option}" in self.configured or f"disable-{option}" in self.configured:
            return "OFF"
        return None

    @property
    def is_replica(self) -> bool:
        return bool(self.channels)

    @property
    def binlogging(self) -> bool:
        return self.is_on("log_bin")

    def table(self, schema: str, name: str) -> TableFacts | None:
        return next((t for t in self.tables if t.schema == schema and t.name == name), None)

    def engines_of_user_tables(self) -> set[str]:
        return {e.lower() for e in self.user_tables}


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def read_tables(server: Server) -> list[TableFacts]:
    """Every user table with its unique keys: two catalog reads for the whole server,
    however many tables it has (no per-table statement)."""
    keys: dict[tuple[str, str], dict[str, tuple[list[str], list[str]]]] = {}
    for row in server.query(sql.data_unique_keys()):
        index = keys.setdefault((str(row["TABLE_SCHEMA"]), str(row["TABLE_NAME"])), {})
        columns, nullable = index.setdefault(str(row["INDEX_NAME"]), ([], []))
        column = str(row["COLUMN_NAME"])
        columns.append(column)
        if str(row["NULLABLE"] or "").upper() == "YES":
            nullable.append(column)
    tables = []
    for row in server.query(sql.data_tables()):
        schema, name = str(row["TABLE_SCHEMA"]), str(row["TABLE_NAME"])
        indexes = keys.get((schema, name), {})
        tables.append(TableFacts(
            schema, name, str(row["ENGINE"] or ""), _int(row["TABLE_ROWS"]),
            _int(row["DATA_LENGTH"]), str(row["ROW_FORMAT"] or ""),
            str(row["CREATE_OPTIONS"] or ""),
            tuple(UniqueKey(index, tuple(cols), tuple(nulls))
                  for index, (cols, nulls) in indexes.items())))
    return tables


def _rows_to_map(rows: list[dict[str, Any]], key: str, value: str) -> dict[str, Any]:
    return {str(r[key]): r[value] for r in rows}


def gather(server: Server, *, options: Callable[[], tuple[dict[str, str], str]] | None = None,
           ) -> Facts:
    """Read the facts of one server; ``options`` reads its defaults file (may fail)."""
    flavor = server.flavor
    variables = {str(k).lower(): str(v) for k, v in
                 _rows_to_map(server.query(sql.global_variables()), "Variable_name",
                              "Value").items()}
    facts = Facts(flavor=flavor, version=server.version_string, variables=variables)
    facts.channels = [flavor.parse_replica_status(r) for r in server.query(flavor.replica_status())]
    facts.position_engines = {
        str(r["TABLE_NAME"]): str(r["ENGINE"] or "")
        for r in server.query(sql.table_engines("mysql", flavor.position_tables(),
                                                flavor.position_table_prefix()))}
    facts.tables = read_tables(server)
    for table in facts.tables:
        facts.user_tables.setdefault(table.engine or "unknown", []).append(table.full_name)
    facts.downstream = [str(r["HOST"]) for r in server.query(flavor.binlog_dump_threads())]
    info = flavor.variable_info()
    if info is not None:
        facts.read_only = {str(r["name"]): str(r["read_only"]).upper() == "YES"
                           for r in server.query(info)}
    persisted = flavor.persisted_variables()
    if persisted is not None:
        facts.persisted = {str(r["name"]).lower(): str(r["value"]) for r in server.query(persisted)}
    if options is not None:
        try:
            facts.configured, facts.configured_source = options()
        except HotcopyError as exc:
            log.info("%s: defaults file not read: %s", server.name, exc.message)
            facts.configured_source = f"not read: {exc.message}"
    return facts
