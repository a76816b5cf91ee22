"""MariaDB 10.x and 11.x: BACKUP STAGE locks and gtid_slave_pos.

BACKUP STAGE BLOCK_COMMIT is the lightest lock that makes a filesystem snapshot
consistent for every engine: it blocks only commits (and DDL), not reads, and on a
replica whose SQL thread is stopped it usually blocks nothing at all. It exists from
10.4.1; older servers get FLUSH TABLES WITH READ LOCK.

A MariaDB replica is crash-safe when ``mysql.gtid_slave_pos`` (where the SQL thread
records each GTID it applies, inside the applied transaction) is transactional and it
replicates by GTID. The statements kept the SLAVE/MASTER words, which every 10.x and
11.x release accepts; named connections (multi-source) are string literals, so they
travel as parameters.
"""

from __future__ import annotations

from typing import Any

from hotcopy.mysql.flavor.base import (
    Coordinates,
    LockStage,
    ReplicaStatus,
    Statement,
    checked_variable,
    option_clauses,
    ssl_and_delay_options,
)
from hotcopy.mysql.flavor.catalog import add_row_id_column

#: Variables mariadbd accepts only at startup (a fallback: the audit asks the server's
#: information_schema.SYSTEM_VARIABLES, which knows better).
_STATIC = frozenset({"log_bin", "log_slave_updates"})
_DYNAMIC = frozenset({"sync_binlog", "innodb_flush_log_at_trx_commit", "binlog_format",
                      "gtid_strict_mode", "relay_log_recovery", "slave_parallel_threads",
                      "slave_parallel_mode", "gtid_pos_auto_engines"})
#: Other dialects' spellings of the same settings.
_ALIASES = {"slave_parallel_workers": "slave_parallel_threads",
            "replica_parallel_workers": "slave_parallel_threads",
            "log_replica_updates": "log_slave_updates"}


def _int(value: Any, default: int = 0) -> int:
    if value is None or value == "":
        return default
    return int(value)


class MariaDB:
    name = "mariadb"

    def __init__(self, version: tuple[int, int, int]) -> None:
        self.version = version

    @staticmethod
    def _on(verb: str, channel: str, rest: str = "") -> Statement:
        """``STOP SLAVE 'conn' SQL_THREAD``: a named connection goes between the words."""
        tail = f" {rest}" if rest else ""
        if channel:
            return (f"{verb} %s{tail}", (channel,))
        return (f"{verb}{tail}", ())

    def stop_sql_thread(self, channel: str = "") -> Statement:
        return self._on("STOP SLAVE", channel, "SQL_THREAD")

    def start_sql_thread(self, channel: str = "") -> Statement:
        return self._on("START SLAVE", channel, "SQL_THREAD")

    def start_replica(self, channel: str = "") -> Statement:
        return self._on("START SLAVE", channel)

    def stop_replica(self, channel: str = "") -> Statement:
        return self._on("STOP SLAVE", channel)

    def reset_replica_all(self) -> Statement:
        return ("RESET SLAVE ALL", ())

    def replica_status(self) -> Statement:
        return ("SHOW ALL SLAVES STATUS", ())

    def parse_replica_status(self, row: dict[str, Any]) -> ReplicaStatus:
        behind = row.get("Seconds_Behind_Master")
        return ReplicaStatus(
            master_host=str(row.get("Master_Host") or ""),
            master_port=_int(row.get("Master_Port"), 3306),
            master_user=str(row.get("Master_User") or ""),
            io_running=str(row.get("Slave_IO_Running") or "No"),
            sql_running=str(row.get("Slave_SQL_Running") or "No"),
            seconds_behind=None if behind is None else int(behind),
            relay_master_log_file=str(row.get("Relay_Master_Log_File") or ""),
            exec_master_log_pos=_int(row.get("Exec_Master_Log_Pos")),
            last_io_error=str(row.get("Last_IO_Error") or ""),
            last_sql_error=str(row.get("Last_SQL_Error") or ""),
            last_sql_errno=_int(row.get("Last_SQL_Errno")),
            using_gtid=str(row.get("Using_Gtid") or "No"),
            channel=str(row.get("Connection_name") or ""),
            relay_log_file=str(row.get("Relay_Log_File") or ""),
            relay_log_pos=_int(row.get("Relay_Log_Pos")),
            master_server_id=_int(row.get("Master_Server_Id")),
        )

    def lock_ladder(self) -> list[LockStage]:
        if self.version < (10, 4, 1):
            return [LockStage("flush_tables_read_lock", "FLUSH TABLES WITH READ LOCK",
                              blocks_writes=True)]
        return [
            LockStage("backup_start", "BACKUP STAGE START", blocks_writes=False),
            LockStage("backup_flush", "BACKUP STAGE FLUSH", blocks_writes=False),
            LockStage("backup_block_ddl", "BACKUP STAGE BLOCK_DDL", blocks_writes=False),
            LockStage("backup_block_commit", "BACKUP STAGE BLOCK_COMMIT", blocks_writes=True),
        ]

    def unlock(self) -> list[Statement]:
        if self.version < (10, 4, 1):
            return [("UNLOCK TABLES", ())]
        return [("BACKUP STAGE END", ())]

    def flush_engine_logs(self) -> Statement:
        return ("FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS", ())

    def gtid_variable(self) -> str:
        return "gtid_slave_pos"

    def furthest_gtid_position(self, positions: list[str]) -> str:
        """Per replication domain, the GTID with the highest sequence number.

        Under gtid_strict_mode sequence numbers only grow within a domain, so the
        highest one is the furthest point, whichever server id wrote it.
        """
        best: dict[int, tuple[int, int]] = {}
        for position in positions:
            for item in filter(None, (part.strip() for part in position.split(","))):
                domain, server_id, seq = (int(x) for x in item.split("-"))
                if domain not in best or seq > best[domain][1]:
                    best[domain] = (server_id, seq)
        return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(best.items()))

    def gtid_position(self) -> Statement:
        return ("SELECT @@GLOBAL.gtid_slave_pos AS gtid", ())

    def replica_gtid_position(self) -> Statement:
        return ("SELECT @@GLOBAL.gtid_slave_pos AS gtid", ())

    def master_gtid_position(self) -> Statement:
        return ("SELECT @@GLOBAL.gtid_binlog_pos AS gtid", ())

    def change_master(self, coords: Coordinates, user: str, password: str) -> Statement:
        # The source's TLS, delay and heartbeat travel too: a new replica must not
        # replicate in cleartext (or undelayed) where its source did not.
        extra, extra_args = option_clauses(coords.extra.get("replication_options") or {},
                                           "MASTER")
        if coords.gtid:
            return ("CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
                    "MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 5"
                    + extra,
                    (coords.master_host, coords.master_port, user, password, *extra_args))
        return ("CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
                "MASTER_PASSWORD = %s, MASTER_LOG_FILE = %s, MASTER_LOG_POS = %s, "
                "MASTER_USE_GTID = no, MASTER_CONNECT_RETRY = 5" + extra,
                (coords.master_host, coords.master_port, user, password,
                 coords.master_log_file, coords.master_log_pos, *extra_args))

    def prepare_gtid_position(self, gtid: str) -> list[Statement]:
        return [("SET GLOBAL gtid_slave_pos = %s", (gtid,))]

    def start_replica_until(self, gtid: str) -> Statement:
        return ("START SLAVE UNTIL master_gtid_pos = %s", (gtid,))

    def wait_for_gtid(self, gtid: str, timeout_s: float) -> Statement:
        return ("SELECT MASTER_GTID_WAIT(%s, %s) AS result", (gtid, float(timeout_s)))

    def binlog_dump_threads(self) -> Statement:
        return ("SELECT ID, USER, HOST FROM information_schema.PROCESSLIST "
                "WHERE COMMAND IN ('Binlog Dump', 'Binlog Dump GTID')", ())

    # -- crash safety (the audit) and the rest of the dialect ------------------------

    def variable_name(self, generic: str) -> str:
        return _ALIASES.get(generic, generic)

    def set_variable(self, variable: str, value: Any) -> Statement:
        """SET GLOBAL: MariaDB has no SET PERSIST, so the audit also gives the cnf line."""
        return (f"SET GLOBAL {checked_variable(variable)} = %s", (value,))

    def persist_only(self, variable: str, value: Any) -> Statement | None:
        return None

    @property
    def persists_settings(self) -> bool:
        return False

    def is_dynamic(self, variable: str) -> bool | None:
        if variable in _STATIC:
            return False
        return True if variable in _DYNAMIC else None

    def variable_info(self) -> Statement | None:
        return ("SELECT LOWER(VARIABLE_NAME) AS name, READ_ONLY AS read_only "
                "FROM information_schema.SYSTEM_VARIABLES", ())

    def persisted_variables(self) -> Statement | None:
        return None

    def position_tables(self) -> list[str]:
        return ["gtid_slave_pos"]

    def position_table_prefix(self) -> str | None:
        """``gtid_pos_auto_engines`` adds one gtid_slave_pos_<engine> table per engine."""
        return "gtid_slave_pos_"

    def use_gtid_positioning(self, channel: str = "") -> Statement:
        if channel:
            return ("CHANGE MASTER %s TO MASTER_USE_GTID = slave_pos", (channel,))
        return ("CHANGE MASTER TO MASTER_USE_GTID = slave_pos", ())

    def binlog_gtid_pos(self, log_file: str, log_pos: int) -> Statement | None:
        """On the master: the GTID state at a binlog file/position (a replica's old position)."""
        return ("SELECT BINLOG_GTID_POS(%s, %s) AS gtid", (log_file, int(log_pos)))

    def binlog_status(self) -> Statement:
        return ("SHOW MASTER STATUS", ())

    def replica_hosts(self) -> Statement:
        return ("SHOW SLAVE HOSTS", ())

    def log_status(self) -> Statement | None:
        return None

    def binlog_decoder(self) -> str:
        return "mariadb-binlog" if self.version >= (10, 5, 2) else "mysqlbinlog"

    def decode_relay_log(self, path: str, start: int) -> list[str]:
        """Row events as commented pseudo-SQL with column types (-vv)."""
        return [self.binlog_decoder(), "--verbose", "--verbose", "--base64-output=decode-rows",
                f"--start-position={int(start)}", path]

    def mark_transaction_applied(self, gtid: str, current: str) -> list[Statement]:
        """Move the position past one GTID of its domain; only after checking the data."""
        domain = gtid.split("-", 1)[0]
        kept = [p for p in current.split(",") if p.strip() and p.split("-", 1)[0] != domain]
        position = ",".join([*kept, gtid])
        return [self.stop_replica(), ("SET GLOBAL gtid_slave_pos = %s", (position,)),
                self.start_replica()]

    def add_row_id_primary_key(self, schema: str, table: str) -> Statement:
        """A new AUTO_INCREMENT primary key column, INVISIBLE (10.3.3+) so that
        SELECT * and INSERT without a column list keep working."""
        return add_row_id_column(schema, table, "hc_row_id",
                                 invisible=self.version >= (10, 3, 3))

    def generated_primary_key_variable(self) -> str | None:
        """MariaDB has no setting that gives new tables a primary key by itself."""
        return None

    def tablespace_files(self) -> Statement:
        return ("SELECT NAME AS name, FILENAME AS path "
                "FROM information_schema.INNODB_SYS_TABLESPACES", ())

    def replication_options(self, row: dict[str, Any]) -> dict[str, Any]:
        options = ssl_and_delay_options(row, "Master")
        period = row.get("Slave_heartbeat_period")  # SHOW ALL SLAVES STATUS has it
        if period is not None:
            options["heartbeat_period"] = float(period)
        return options
