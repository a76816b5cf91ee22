"""MySQL 5.7, 8.0 and 8.4: the statement and column names changed in 8.0.22/8.0.23.

8.4 removed the SLAVE/MASTER spellings, so the flavor picks by version rather than
always using the old words. MySQL servers are not run in tests here: this dialect is
checked against recorded status output and the documented syntax.
"""

from __future__ import annotations

from typing import Any

from hotcopy.mysql.flavor.base import Coordinates, LockStage, ReplicaStatus, Statement


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

    def stop_sql_thread(self) -> Statement:
        return (f"STOP {self._replica()} SQL_THREAD", ())

    def start_sql_thread(self) -> Statement:
        return (f"START {self._replica()} SQL_THREAD", ())

    def start_replica(self) -> Statement:
        return (f"START {self._replica()}", ())

    def stop_replica(self) -> Statement:
        return (f"STOP {self._replica()}", ())

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
        if coords.gtid:
            return (f"{common}, {auto} = 1",
                    (coords.master_host, coords.master_port, user, password))
        return (f"{common}, {logf} = %s, {logp} = %s",
                (coords.master_host, coords.master_port, user, password,
                 coords.master_log_file, coords.master_log_pos))

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
