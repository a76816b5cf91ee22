"""MariaDB 10.x and 11.x: BACKUP STAGE locks and gtid_slave_pos.

BACKUP STAGE BLOCK_COMMIT is the lightest lock that makes a filesystem snapshot
consistent for every engine: it blocks only commits (and DDL), not reads, and on a
replica whose SQL thread is stopped it usually blocks nothing at all.
"""

from __future__ import annotations

from typing import Any

from hotcopy.mysql.flavor.base import Coordinates, LockStage, ReplicaStatus, Statement


def _int(value: Any, default: int = 0) -> int:
    if value is None or value == "":
        return default
    return int(value)


class MariaDB:
    name = "mariadb"

    def __init__(self, version: tuple[int, int, int]) -> None:
        self.version = version

    def stop_sql_thread(self) -> Statement:
        return ("STOP SLAVE SQL_THREAD", ())

    def start_sql_thread(self) -> Statement:
        return ("START SLAVE SQL_THREAD", ())

    def start_replica(self) -> Statement:
        return ("START SLAVE", ())

    def stop_replica(self) -> Statement:
        return ("STOP SLAVE", ())

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
        )

    def lock_ladder(self) -> list[LockStage]:
        return [
            LockStage("backup_start", "BACKUP STAGE START", blocks_writes=False),
            LockStage("backup_flush", "BACKUP STAGE FLUSH", blocks_writes=False),
            LockStage("backup_block_ddl", "BACKUP STAGE BLOCK_DDL", blocks_writes=False),
            LockStage("backup_block_commit", "BACKUP STAGE BLOCK_COMMIT", blocks_writes=True),
        ]

    def unlock(self) -> list[Statement]:
        return [("BACKUP STAGE END", ())]

    def flush_engine_logs(self) -> Statement:
        return ("FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS", ())

    def gtid_variable(self) -> str:
        return "gtid_slave_pos"

    def gtid_position(self) -> Statement:
        return ("SELECT @@GLOBAL.gtid_slave_pos AS gtid", ())

    def replica_gtid_position(self) -> Statement:
        return ("SELECT @@GLOBAL.gtid_slave_pos AS gtid", ())

    def master_gtid_position(self) -> Statement:
        return ("SELECT @@GLOBAL.gtid_binlog_pos AS gtid", ())

    def change_master(self, coords: Coordinates, user: str, password: str) -> Statement:
        if coords.gtid:
            return ("CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
                    "MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 5",
                    (coords.master_host, coords.master_port, user, password))
        return ("CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
                "MASTER_PASSWORD = %s, MASTER_LOG_FILE = %s, MASTER_LOG_POS = %s, "
                "MASTER_USE_GTID = no, MASTER_CONNECT_RETRY = 5",
                (coords.master_host, coords.master_port, user, password,
                 coords.master_log_file, coords.master_log_pos))

    def prepare_gtid_position(self, gtid: str) -> list[Statement]:
        return [("SET GLOBAL gtid_slave_pos = %s", (gtid,))]

    def start_replica_until(self, gtid: str) -> Statement:
        return ("START SLAVE UNTIL master_gtid_pos = %s", (gtid,))

    def wait_for_gtid(self, gtid: str, timeout_s: float) -> Statement:
        return ("SELECT MASTER_GTID_WAIT(%s, %s) AS result", (gtid, float(timeout_s)))

    def binlog_dump_threads(self) -> Statement:
        return ("SELECT ID, USER, HOST FROM information_schema.PROCESSLIST "
                "WHERE COMMAND IN ('Binlog Dump', 'Binlog Dump GTID')", ())
