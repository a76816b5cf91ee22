"""MySQL 5.7, 8.0 and 8.4: the statement and column names changed in 8.0.22/8.0.23.

8.4 removed the SLAVE/MASTER spellings, so the flavor picks by version rather than
always using the old words: SHOW REPLICA STATUS and START/STOP REPLICA from 8.0.22,
CHANGE REPLICATION SOURCE TO and the Source_* columns from 8.0.23, the replica_*
variable names from 8.0.26, SHOW BINARY LOG STATUS from 8.2. MySQL servers are not run
in tests here: this dialect is checked against recorded status output and the
documented syntax.

A MySQL replica is crash-safe when its applier position lives in InnoDB tables
(relay_log_info_repository=TABLE, the default from 8.0), relay_log_recovery is on and,
with parallel workers, commits keep the source's order; GTID auto-positioning makes
the restart independent of relay log coordinates.
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

#: 8.0.26 renamed these; the old names became deprecated aliases.
_RENAMED_8026 = {"log_slave_updates": "log_replica_updates",
                 "slave_parallel_workers": "replica_parallel_workers",
                 "slave_preserve_commit_order": "replica_preserve_commit_order",
                 "slave_parallel_type": "replica_parallel_type",
                 "sync_master_info": "sync_source_info"}
_OLD_NAMES = {new: old for old, new in _RENAMED_8026.items()}
_STATIC = frozenset({"relay_log_recovery", "log_bin", "log_slave_updates",
                     "log_replica_updates"})
_DYNAMIC = frozenset({"sync_binlog", "innodb_flush_log_at_trx_commit", "binlog_format",
                      "relay_log_info_repository", "master_info_repository",
                      "slave_parallel_workers", "replica_parallel_workers",
                      "slave_preserve_commit_order", "replica_preserve_commit_order",
                      "slave_parallel_type", "replica_parallel_type", "gtid_mode",
                      "enforce_gtid_consistency"})


def _int(value: Any, default: int = 0) -> int:
    if value is None or value == "":
        return default
    return int(value)


class MySQL:
    name = "mysql"

    def __init__(self, version: tuple[int, int, int]) -> None:
        self.version = version

    @property
    def _replica_words(self) -> bool:
        return self.version >= (8, 0, 22)

    @property
    def _source_words(self) -> bool:
        return self.version >= (8, 0, 23)

    def _replica(self) -> str:
        return "REPLICA" if self._replica_words else "SLAVE"

    @staticmethod
    def _for_channel(sql: str, channel: str) -> Statement:
        if channel:
            return (f"{sql} FOR CHANNEL %s", (channel,))
        return (sql, ())

    def stop_sql_thread(self, channel: str = "") -> Statement:
        return self._for_channel(f"STOP {self._replica()} SQL_THREAD", channel)

    def start_sql_thread(self, channel: str = "") -> Statement:
        return self._for_channel(f"START {self._replica()} SQL_THREAD", channel)

    def start_replica(self, channel: str = "") -> Statement:
        return self._for_channel(f"START {self._replica()}", channel)

    def stop_replica(self, channel: str = "") -> Statement:
        return self._for_channel(f"STOP {self._replica()}", channel)

    def reset_replica_all(self) -> Statement:
        return (f"RESET {self._replica()} ALL", ())

    def replica_status(self) -> Statement:
        return (f"SHOW {self._replica()} STATUS", ())

    def parse_replica_status(self, row: dict[str, Any]) -> ReplicaStatus:
        def col(new: str, old: str) -> Any:
            return row.get(new, row.get(old))

        behind = col("Seconds_Behind_Source", "Seconds_Behind_Master")
        auto = col("Auto_Position", "Auto_Position")
        return ReplicaStatus(
            master_host=str(col("Source_Host", "Master_Host") or ""),
            master_port=_int(col("Source_Port", "Master_Port"), 3306),
            master_user=str(col("Source_User", "Master_User") or ""),
            io_running=str(col("Replica_IO_Running", "Slave_IO_Running") or "No"),
            sql_running=str(col("Replica_SQL_Running", "Slave_SQL_Running") or "No"),
            seconds_behind=None if behind is None else int(behind),
            relay_master_log_file=str(col("Relay_Source_Log_File", "Relay_Master_Log_File") or ""),
            exec_master_log_pos=_int(col("Exec_Source_Log_Pos", "Exec_Master_Log_Pos")),
            last_io_error=str(row.get("Last_IO_Error") or ""),
            last_sql_error=str(row.get("Last_SQL_Error") or ""),
            last_sql_errno=_int(row.get("Last_SQL_Errno")),
            using_gtid="Yes" if str(auto) == "1" else "No",
            channel=str(row.get("Channel_Name") or ""),
            relay_log_file=str(row.get("Relay_Log_File") or ""),
            relay_log_pos=_int(row.get("Relay_Log_Pos")),
            master_server_id=_int(col("Source_Server_Id", "Master_Server_Id")),
        )

    def lock_ladder(self) -> list[LockStage]:
        if self.version >= (8, 0, 0):
            return [
                LockStage("lock_instance_for_backup", "LOCK INSTANCE FOR BACKUP",
                          blocks_writes=False),
                LockStage("flush_tables_read_lock", "FLUSH TABLES WITH READ LOCK",
                          blocks_writes=True),
            ]
        return [LockStage("flush_tables_read_lock", "FLUSH TABLES WITH READ LOCK",
                          blocks_writes=True)]

    def unlock(self) -> list[Statement]:
        if self.version >= (8, 0, 0):
            return [("UNLOCK TABLES", ()), ("UNLOCK INSTANCE", ())]
        return [("UNLOCK TABLES", ())]

    def flush_engine_logs(self) -> Statement:
        return ("FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS", ())

    def gtid_variable(self) -> str:
        return "gtid_executed"

    def furthest_gtid_position(self, positions: list[str]) -> str:
        """The union of GTID sets: a comma-joined list is a valid (overlapping) set."""
        return ",".join(p.replace("\n", "").strip() for p in positions if p.strip())

    def gtid_position(self) -> Statement:
        return ("SELECT @@GLOBAL.gtid_executed AS gtid", ())

    def replica_gtid_position(self) -> Statement:
        return ("SELECT @@GLOBAL.gtid_executed AS gtid", ())

    def master_gtid_position(self) -> Statement:
        return ("SELECT @@GLOBAL.gtid_executed AS gtid", ())

    def change_master(self, coords: Coordinates, user: str, password: str) -> Statement:
        if self._source_words:
            head, host, port, usr, pwd, auto, logf, logp = (
                "CHANGE REPLICATION SOURCE TO", "SOURCE_HOST", "SOURCE_PORT", "SOURCE_USER",
                "SOURCE_PASSWORD", "SOURCE_AUTO_POSITION", "SOURCE_LOG_FILE", "SOURCE_LOG_POS")
        else:
            head, host, port, usr, pwd, auto, logf, logp = (
                "CHANGE MASTER TO", "MASTER_HOST", "MASTER_PORT", "MASTER_USER",
                "MASTER_PASSWORD", "MASTER_AUTO_POSITION", "MASTER_LOG_FILE", "MASTER_LOG_POS")
        common = f"{head} {host} = %s, {port} = %s, {usr} = %s, {pwd} = %s"
        extra, extra_args = option_clauses(coords.extra.get("replication_options") or {},
                                           "SOURCE" if self._source_words else "MASTER")
        if coords.gtid:
            return (f"{common}, {auto} = 1{extra}",
                    (coords.master_host, coords.master_port, user, password, *extra_args))
        return (f"{common}, {logf} = %s, {logp} = %s{extra}",
                (coords.master_host, coords.master_port, user, password,
                 coords.master_log_file, coords.master_log_pos, *extra_args))

    def prepare_gtid_position(self, gtid: str) -> list[Statement]:
        reset = "RESET BINARY LOGS AND GTIDS" if self.version >= (8, 4, 0) else "RESET MASTER"
        return [(reset, ()), ("SET GLOBAL gtid_purged = %s", (gtid,))]

    def start_replica_until(self, gtid: str) -> Statement:
        return (f"START {self._replica()} UNTIL SQL_AFTER_GTIDS = %s", (gtid,))

    def wait_for_gtid(self, gtid: str, timeout_s: float) -> Statement:
        return ("SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s) AS result", (gtid, float(timeout_s)))

    def binlog_dump_threads(self) -> Statement:
        return ("SELECT ID, USER, HOST FROM information_schema.PROCESSLIST "
                "WHERE COMMAND IN ('Binlog Dump', 'Binlog Dump GTID')", ())

    # -- crash safety (the audit) and the rest of the dialect ------------------------

    def variable_name(self, generic: str) -> str:
        if self.version >= (8, 0, 26):
            return _RENAMED_8026.get(generic, generic)
        return _OLD_NAMES.get(generic, generic)

    def set_variable(self, variable: str, value: Any) -> Statement:
        """SET PERSIST from 8.0: the change survives a restart (mysqld-auto.cnf)."""
        verb = "SET PERSIST" if self.persists_settings else "SET GLOBAL"
        return (f"{verb} {checked_variable(variable)} = %s", (value,))

    def persist_only(self, variable: str, value: Any) -> Statement | None:
        """For read-only variables: recorded now, in effect at the next start."""
        if not self.persists_settings:
            return None
        return (f"SET PERSIST_ONLY {checked_variable(variable)} = %s", (value,))

    @property
    def persists_settings(self) -> bool:
        return self.version >= (8, 0, 0)

    def is_dynamic(self, variable: str) -> bool | None:
        if variable in _STATIC:
            return False
        return True if variable in _DYNAMIC else None

    def variable_info(self) -> Statement | None:
        return None

    def persisted_variables(self) -> Statement | None:
        if not self.persists_settings:
            return None
        return ("SELECT VARIABLE_NAME AS name, VARIABLE_VALUE AS value "
                "FROM performance_schema.persisted_variables", ())

    def position_tables(self) -> list[str]:
        """The applier/connection metadata tables; 8.4 kept these names."""
        return ["slave_master_info", "slave_relay_log_info", "slave_worker_info"]

    def position_table_prefix(self) -> str | None:
        return None

    def use_gtid_positioning(self, channel: str = "") -> Statement:
        if self._source_words:
            return self._for_channel(
                "CHANGE REPLICATION SOURCE TO SOURCE_AUTO_POSITION = 1", channel)
        return self._for_channel("CHANGE MASTER TO MASTER_AUTO_POSITION = 1", channel)

    def binlog_gtid_pos(self, log_file: str, log_pos: int) -> Statement | None:
        return None

    def binlog_status(self) -> Statement:
        if self.version >= (8, 2, 0):
            return ("SHOW BINARY LOG STATUS", ())
        return ("SHOW MASTER STATUS", ())

    def replica_hosts(self) -> Statement:
        return ("SHOW REPLICAS", ()) if self._replica_words else ("SHOW SLAVE HOSTS", ())

    def log_status(self) -> Statement | None:
        """Coordinates of every log at one instant, under LOCK INSTANCE FOR BACKUP."""
        if self.version < (8, 0, 17):
            return None
        return ("SELECT SERVER_UUID, LOCAL, REPLICATION, STORAGE_ENGINES "
                "FROM performance_schema.log_status", ())

    def binlog_decoder(self) -> str:
        return "mysqlbinlog"

    def decode_relay_log(self, path: str, start: int) -> list[str]:
        return [self.binlog_decoder(), "--verbose", "--verbose", "--base64-output=DECODE-ROWS",
                f"--start-position={int(start)}", path]

    def mark_transaction_applied(self, gtid: str, current: str) -> list[Statement]:
        """The documented way past one GTID: commit an empty transaction under its name."""
        return [self.stop_replica(), ("SET SESSION GTID_NEXT = %s", (gtid,)), ("BEGIN", ()),
                ("COMMIT", ()), ("SET SESSION GTID_NEXT = 'AUTOMATIC'", ()),
                self.start_replica()]

    def add_row_id_primary_key(self, schema: str, table: str) -> Statement:
        """The column a generated invisible primary key would have (my_row_id), INVISIBLE
        from 8.0.23 on, so an application's SELECT * does not see it."""
        return add_row_id_column(schema, table, "my_row_id",
                                 invisible=self.version >= (8, 0, 23))

    def generated_primary_key_variable(self) -> str | None:
        """8.0.30+: sql_generate_invisible_primary_key gives every new table a key."""
        return "sql_generate_invisible_primary_key" if self.version >= (8, 0, 30) else None

    def tablespace_files(self) -> Statement:
        return ("SELECT TABLESPACE_NAME AS name, FILE_NAME AS path "
                "FROM INFORMATION_SCHEMA.FILES WHERE ENGINE = 'InnoDB'", ())

    def replication_options(self, row: dict[str, Any]) -> dict[str, Any]:
        # The heartbeat lives in performance_schema, not in the status row: not carried.
        prefix = "Source" if "Source_SSL_Allowed" in row else "Master"
        return ssl_and_delay_options(row, prefix)
