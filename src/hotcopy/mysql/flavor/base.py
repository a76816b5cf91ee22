"""What every dialect provides, and the value types they share.

MariaDB and the MySQL releases disagree on statement names (SLAVE/REPLICA,
MASTER/SOURCE), status columns, GTID variables and backup locks. Workflows ask the
flavor for a statement by intent ("stop the SQL thread", "record coordinates") and get
SQL text plus parameters; user-supplied values always travel as parameters.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

Statement = tuple[str, tuple[Any, ...]]

_IDENTIFIER_OK = re.compile(r"^[^\x00]{1,64}$")


def quote_identifier(name: str) -> str:
    """Backtick-quote a schema or table name taken from the server's own catalog."""
    if not _IDENTIFIER_OK.match(name):
        raise ValueError(f"not a valid identifier: {name!r}")
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class ReplicaStatus:
    """One replication channel, with the dialect's column names normalised."""

    master_host: str
    master_port: int
    master_user: str
    io_running: str
    sql_running: str
    seconds_behind: int | None
    relay_master_log_file: str
    exec_master_log_pos: int
    last_io_error: str
    last_sql_error: str
    last_sql_errno: int
    using_gtid: str
    channel: str = ""
    relay_log_file: str = ""
    relay_log_pos: int = 0
    #: @@server_id of the server the IO thread last reached (0 before it connected).
    master_server_id: int = 0

    @property
    def running(self) -> bool:
        return self.io_running == "Yes" and self.sql_running == "Yes"


@dataclass(frozen=True)
class Coordinates:
    """Where the source's data stood in the master's history when the snapshot was taken."""

    master_host: str
    master_port: int
    master_user: str
    master_log_file: str
    master_log_pos: int
    gtid: str
    gtid_variable: str
    flavor: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Coordinates:
        return cls(**data)


@dataclass(frozen=True)
class LockStage:
    """One rung of the lock ladder; ``blocks_writes`` marks where the write lock begins."""

    name: str
    sql: str
    blocks_writes: bool


class Flavor(Protocol):
    name: str
    version: tuple[int, int, int]

    def stop_sql_thread(self, channel: str = "") -> Statement: ...
    def start_sql_thread(self, channel: str = "") -> Statement: ...
    def start_replica(self, channel: str = "") -> Statement: ...
    def stop_replica(self, channel: str = "") -> Statement: ...
    def reset_replica_all(self) -> Statement: ...
    def replica_status(self) -> Statement: ...
    def parse_replica_status(self, row: dict[str, Any]) -> ReplicaStatus: ...
    def lock_ladder(self) -> list[LockStage]: ...
    def unlock(self) -> list[Statement]: ...
    def flush_engine_logs(self) -> Statement: ...
    def gtid_position(self) -> Statement: ...
    def gtid_variable(self) -> str: ...
    def furthest_gtid_position(self, positions: list[str]) -> str:
        """The position at or past every one given (each a replica's executed position)."""
        ...
    def change_master(self, coords: Coordinates, user: str, password: str) -> Statement: ...
    def prepare_gtid_position(self, gtid: str) -> list[Statement]: ...
    def start_replica_until(self, gtid: str) -> Statement: ...
    def replica_gtid_position(self) -> Statement: ...
    def master_gtid_position(self) -> Statement: ...
    def wait_for_gtid(self, gtid: str, timeout_s: float) -> Statement: ...
    def binlog_dump_threads(self) -> Statement: ...
    # -- crash safety (the audit) and the rest of the dialect ------------------------
    def variable_name(self, generic: str) -> str: ...
    def set_variable(self, variable: str, value: Any) -> Statement: ...
    def persist_only(self, variable: str, value: Any) -> Statement | None: ...
    @property
    def persists_settings(self) -> bool: ...
    def is_dynamic(self, variable: str) -> bool | None: ...
    def variable_info(self) -> Statement | None: ...
    def persisted_variables(self) -> Statement | None: ...
    def position_tables(self) -> list[str]: ...
    def position_table_prefix(self) -> str | None: ...
    def use_gtid_positioning(self, channel: str = "") -> Statement: ...
    def binlog_gtid_pos(self, log_file: str, log_pos: int) -> Statement | None: ...
    def binlog_status(self) -> Statement: ...
    def replica_hosts(self) -> Statement: ...
    def log_status(self) -> Statement | None: ...
    def binlog_decoder(self) -> str: ...
    def decode_relay_log(self, path: str, start: int) -> list[str]: ...
    def mark_transaction_applied(self, gtid: str, current: str) -> list[Statement]: ...
    def add_row_id_primary_key(self, schema: str, table: str) -> Statement: ...
    def generated_primary_key_variable(self) -> str | None: ...
    def tablespace_files(self) -> Statement:
        """Every InnoDB tablespace file, one row each with its ``path`` as the server has it."""
        ...
    def replication_options(self, row: dict[str, Any]) -> dict[str, Any]:
        """TLS, delay and heartbeat of a replica's channel, to carry into a new replica."""
        ...


#: Normalised replication options (replication_options) -> the CHANGE MASTER words.
SSL_OPTION_WORDS = {"ssl_ca": "SSL_CA", "ssl_capath": "SSL_CAPATH", "ssl_cert": "SSL_CERT",
                    "ssl_key": "SSL_KEY", "ssl_cipher": "SSL_CIPHER", "ssl_crl": "SSL_CRL",
                    "ssl_crlpath": "SSL_CRLPATH"}


def _yes(value: Any) -> bool:
    return str(value or "").strip().lower() in ("yes", "1", "on", "true")


def ssl_and_delay_options(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    """From a SHOW SLAVE/REPLICA STATUS row whose columns start with prefix (Master/Source)."""
    options: dict[str, Any] = {"ssl": _yes(row.get(f"{prefix}_SSL_Allowed")),
                               "ssl_verify_server_cert":
                                   _yes(row.get(f"{prefix}_SSL_Verify_Server_Cert")),
                               "delay": int(row.get("SQL_Delay") or 0)}
    columns = {"ssl_ca": "SSL_CA_File", "ssl_capath": "SSL_CA_Path", "ssl_cert": "SSL_Cert",
               "ssl_key": "SSL_Key", "ssl_cipher": "SSL_Cipher", "ssl_crl": "SSL_Crl",
               "ssl_crlpath": "SSL_Crlpath"}
    for key, column in columns.items():
        value = row.get(f"{prefix}_{column}")
        if value:
            options[key] = str(value)
    return options


def option_clauses(options: dict[str, Any], prefix: str) -> tuple[str, tuple[Any, ...]]:
    """", MASTER_SSL = 1, MASTER_SSL_CA = %s, ..." and its arguments (prefix MASTER/SOURCE)."""
    clauses: list[str] = []
    args: list[Any] = []
    if options.get("ssl"):
        clauses.append(f"{prefix}_SSL = 1")
    for key, word in SSL_OPTION_WORDS.items():
        if options.get(key):
            clauses.append(f"{prefix}_{word} = %s")
            args.append(str(options[key]))
    if options.get("ssl_verify_server_cert"):
        clauses.append(f"{prefix}_SSL_VERIFY_SERVER_CERT = 1")
    if int(options.get("delay") or 0) > 0:
        clauses.append(f"{prefix}_DELAY = %s")
        args.append(int(options["delay"]))
    if options.get("heartbeat_period") is not None:
        clauses.append(f"{prefix}_HEARTBEAT_PERIOD = %s")
        args.append(float(options["heartbeat_period"]))
    return "".join(f", {c}" for c in clauses), tuple(args)


def set_session_lock_wait_timeout(seconds: int) -> Statement:
    return ("SET SESSION lock_wait_timeout = %s", (int(seconds),))


def set_global(variable: str, value: Any) -> Statement:
    if not re.fullmatch(r"[a-z_]{1,64}", variable):
        raise ValueError(f"refusing to SET GLOBAL an unexpected variable name: {variable!r}")
    return (f"SET GLOBAL {variable} = %s", (value,))


def checked_variable(variable: str) -> str:
    """A system variable name is pasted into SQL: only plain lower-case names pass."""
    if not re.fullmatch(r"[a-z_]{1,64}", variable):
        raise ValueError(f"unexpected variable name: {variable!r}")
    return variable


def get_global(variable: str) -> Statement:
    if not re.fullmatch(r"[a-z_]{1,64}", variable):
        raise ValueError(f"unexpected variable name: {variable!r}")
    return (f"SELECT @@GLOBAL.{variable} AS value", ())


def latency_probe() -> Statement:
    """The latency throttle's probe: a read through InnoDB from the buffer pool, as cheap
    as a client's point select, on a table every MariaDB and MySQL has."""
    return ("SELECT 1 FROM mysql.innodb_table_stats LIMIT 1", ())


def integer_primary_key(schema: str, table: str) -> Statement:
    """The primary key's columns with their types: the table probe needs one integer."""
    return ("SELECT k.COLUMN_NAME AS name, c.DATA_TYPE AS type FROM "
            "information_schema.KEY_COLUMN_USAGE k JOIN information_schema.COLUMNS c "
            "ON c.TABLE_SCHEMA = k.TABLE_SCHEMA AND c.TABLE_NAME = k.TABLE_NAME "
            "AND c.COLUMN_NAME = k.COLUMN_NAME WHERE k.TABLE_SCHEMA = %s "
            "AND k.TABLE_NAME = %s AND k.CONSTRAINT_NAME = 'PRIMARY'", (schema, table))


def key_range(schema: str, table: str, column: str) -> Statement:
    name = f"{quote_identifier(schema)}.{quote_identifier(table)}"
    key = quote_identifier(column)
    return (f"SELECT MIN({key}) AS low, MAX({key}) AS high FROM {name}", ())


def point_read(schema: str, table: str, column: str, key: int) -> Statement:
    """One row at or after KEY, through the primary key: a client's point select."""
    name = f"{quote_identifier(schema)}.{quote_identifier(table)}"
    column = quote_identifier(column)
    return (f"SELECT * FROM {name} WHERE {column} >= %s ORDER BY {column} LIMIT 1", (key,))


def kill_connection(thread_id: int) -> Statement:
    return ("KILL CONNECTION %s", (int(thread_id),))


def connection_owner(thread_id: int) -> Statement:
    return ("SELECT ID, USER, COMMAND, STATE FROM information_schema.PROCESSLIST WHERE ID = %s",
            (int(thread_id),))


def sql_log_bin(enabled: bool) -> Statement:
    """Session-only: repairs of a replica's own tables must not become local GTIDs."""
    return ("SET SESSION sql_log_bin = %s", (1 if enabled else 0,))


def checksum_tables(tables: list[tuple[str, str]]) -> Statement:
    names = ", ".join(f"{quote_identifier(s)}.{quote_identifier(t)}" for s, t in tables)
    return (f"CHECKSUM TABLE {names} EXTENDED", ())


def user_tables() -> Statement:
    return ("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES "
            "WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN "
            "('mysql', 'information_schema', 'performance_schema', 'sys') "
            "ORDER BY TABLE_SCHEMA, TABLE_NAME", ())


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise ValueError(f"cannot read a version from {text!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def detect(version_string: str) -> Flavor:
    """Pick the dialect from ``SELECT VERSION()``."""
    from hotcopy.mysql.flavor.mariadb import MariaDB
    from hotcopy.mysql.flavor.mysql import MySQL

    if "mariadb" in version_string.lower():
        # Over the wire (and through some proxies) MariaDB prefixes "5.5.5-".
        return MariaDB(parse_version(version_string.removeprefix("5.5.5-")))
    version = parse_version(version_string)
    return MySQL(version)
