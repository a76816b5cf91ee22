"""The SQL dialects, checked without servers.

MySQL 5.7, 8.0 and 8.4 cannot run here: their dialect is checked against status rows
written down from the column lists of the MySQL reference manuals (SHOW SLAVE STATUS
in 5.7, SHOW REPLICA STATUS in 8.0.22+ and 8.4) and against the documented statement
syntax; the MySQL audit checks run on recorded variables. MariaDB statements are
also listed here by their documented syntax (the integration tests run them for real).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from hotcopy.mysql.audit import Finding, run_checks, show_sql
from hotcopy.mysql.audit.facts import Facts
from hotcopy.mysql.audit.row_events import find_row_event, parse_value
from hotcopy.mysql.flavor import Coordinates, detect
from hotcopy.mysql.flavor.base import ReplicaStatus
from hotcopy.mysql.flavor.mariadb import MariaDB
from hotcopy.mysql.flavor.mysql import MySQL

# -- recorded status rows ---------------------------------------------------------------

_COMMON_TAIL = {
    "Replicate_Do_DB": "", "Replicate_Ignore_DB": "", "Replicate_Do_Table": "",
    "Replicate_Ignore_Table": "", "Replicate_Wild_Do_Table": "",
    "Replicate_Wild_Ignore_Table": "", "Last_Errno": 1062,
    "Last_Error": "Could not execute Write_rows event on table app.t; Duplicate entry '4' "
                  "for key 'PRIMARY', Error_code: 1062; handler error HA_ERR_FOUND_DUPP_KEY; "
                  "the event's master log binlog.000007, end_log_pos 4242",
    "Skip_Counter": 0, "Relay_Log_Space": 4096, "Until_Condition": "None",
    "Until_Log_File": "", "Until_Log_Pos": 0, "Last_IO_Errno": 0, "Last_IO_Error": "",
    "Last_SQL_Errno": 1062, "Replicate_Ignore_Server_Ids": "", "SQL_Delay": 0,
    "SQL_Remaining_Delay": None, "Last_IO_Error_Timestamp": "",
    "Last_SQL_Error_Timestamp": "240102 10:11:12",
    "Retrieved_Gtid_Set": "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5",
    "Executed_Gtid_Set": "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-4", "Auto_Position": 1,
    "Replicate_Rewrite_DB": "", "Channel_Name": "",
}
_COMMON_TAIL["Last_SQL_Error"] = _COMMON_TAIL["Last_Error"]

#: SHOW SLAVE STATUS, MySQL 5.7 (column list of the 5.7 manual, in its order).
MYSQL_57_ROW: dict[str, Any] = {
    "Slave_IO_State": "Waiting for master to send event", "Master_Host": "10.0.0.1",
    "Master_User": "repl", "Master_Port": 3306, "Connect_Retry": 60,
    "Master_Log_File": "binlog.000007", "Read_Master_Log_Pos": 5000,
    "Relay_Log_File": "relay-bin.000003", "Relay_Log_Pos": 1200,
    "Relay_Master_Log_File": "binlog.000007", "Slave_IO_Running": "Yes",
    "Slave_SQL_Running": "No", **_COMMON_TAIL, "Exec_Master_Log_Pos": 4000,
    "Master_SSL_Allowed": "No", "Master_SSL_CA_File": "", "Master_SSL_CA_Path": "",
    "Master_SSL_Cert": "", "Master_SSL_Cipher": "", "Master_SSL_Key": "",
    "Seconds_Behind_Master": None, "Master_SSL_Verify_Server_Cert": "No",
    "Master_Server_Id": 1, "Master_UUID": "3e11fa47-71ca-11e1-9e33-c80aa9429562",
    "Master_Info_File": "mysql.slave_master_info", "Slave_SQL_Running_State": "",
    "Master_Retry_Count": 86400, "Master_Bind": "", "Master_SSL_Crl": "",
    "Master_SSL_Crlpath": "", "Master_TLS_Version": "",
}

#: SHOW REPLICA STATUS, MySQL 8.0.22+ and 8.4 (Source_* / Replica_* columns).
MYSQL_8_ROW: dict[str, Any] = {
    "Replica_IO_State": "Waiting for source to send event", "Source_Host": "10.0.0.1",
    "Source_User": "repl", "Source_Port": 3307, "Connect_Retry": 60,
    "Source_Log_File": "binlog.000007", "Read_Source_Log_Pos": 5000,
    "Relay_Log_File": "relay-bin.000003", "Relay_Log_Pos": 1200,
    "Relay_Source_Log_File": "binlog.000007", "Replica_IO_Running": "Yes",
    "Replica_SQL_Running": "No", **_COMMON_TAIL, "Exec_Source_Log_Pos": 4000,
    "Source_SSL_Allowed": "No", "Source_SSL_CA_File": "", "Source_SSL_CA_Path": "",
    "Source_SSL_Cert": "", "Source_SSL_Cipher": "", "Source_SSL_Key": "",
    "Seconds_Behind_Source": None, "Source_SSL_Verify_Server_Cert": "No",
    "Source_Server_Id": 1, "Source_UUID": "3e11fa47-71ca-11e1-9e33-c80aa9429562",
    "Source_Info_File": "mysql.slave_master_info", "Replica_SQL_Running_State": "",
    "Source_Retry_Count": 86400, "Source_Bind": "", "Source_SSL_Crl": "",
    "Source_SSL_Crlpath": "", "Source_TLS_Version": "", "Source_public_key_path": "",
    "Get_Source_public_key": 0, "Network_Namespace": "",
}

#: SHOW ALL SLAVES STATUS, MariaDB 10.11 (as the sandbox prints it; a named connection).
MARIADB_ROW: dict[str, Any] = {
    "Connection_name": "east", "Slave_SQL_State": "", "Slave_IO_State": "",
    "Master_Host": "127.0.0.1", "Master_User": "repl", "Master_Port": 3306,
    "Relay_Log_File": "relay-bin.000002", "Relay_Log_Pos": 1096,
    "Relay_Master_Log_File": "mysql-bin.000001", "Slave_IO_Running": "Yes",
    "Slave_SQL_Running": "Yes", "Exec_Master_Log_Pos": 39085, "Seconds_Behind_Master": 0,
    "Last_IO_Error": "", "Last_SQL_Errno": 0, "Last_SQL_Error": "", "Using_Gtid": "Slave_Pos",
    "Gtid_IO_Pos": "0-1-14", "Parallel_Mode": "optimistic",
}


@pytest.mark.parametrize(("version", "row"), [
    ((5, 7, 44), MYSQL_57_ROW), ((8, 0, 21), MYSQL_57_ROW),
    ((8, 0, 36), MYSQL_8_ROW), ((8, 4, 0), MYSQL_8_ROW)])
def test_mysql_status_columns_are_normalised(version: tuple[int, int, int],
                                             row: dict[str, Any]) -> None:
    status = MySQL(version).parse_replica_status(row)
    assert status.master_host == "10.0.0.1"
    assert status.master_port == (3306 if row is MYSQL_57_ROW else 3307)
    assert (status.io_running, status.sql_running, status.running) == ("Yes", "No", False)
    assert (status.relay_master_log_file, status.exec_master_log_pos) == ("binlog.000007", 4000)
    assert (status.relay_log_file, status.relay_log_pos) == ("relay-bin.000003", 1200)
    assert status.seconds_behind is None
    assert status.last_sql_errno == 1062 and "Duplicate entry" in status.last_sql_error
    assert status.using_gtid == "Yes"
    assert status.channel == ""


def test_mysql_auto_position_off_reads_as_no_gtid() -> None:
    status = MySQL((8, 4, 0)).parse_replica_status({**MYSQL_8_ROW, "Auto_Position": 0})
    assert status.using_gtid == "No"


def test_mariadb_status_keeps_connection_name_and_gtid_mode() -> None:
    status = MariaDB((10, 11, 6)).parse_replica_status(MARIADB_ROW)
    assert (status.channel, status.using_gtid, status.running) == ("east", "Slave_Pos", True)
    assert (status.relay_log_file, status.relay_log_pos) == ("relay-bin.000002", 1096)


# -- statements by version -------------------------------------------------------------

COORDS = Coordinates("10.0.0.1", 3306, "repl", "binlog.000007", 4000, "uuid:1-5",
                     "gtid_executed", "mysql")
FILE_COORDS = Coordinates("10.0.0.1", 3306, "repl", "binlog.000007", 4000, "", "", "mysql")


@pytest.mark.parametrize(("version", "word"), [
    ((5, 7, 44), "SLAVE"), ((8, 0, 21), "SLAVE"), ((8, 0, 22), "REPLICA"), ((8, 4, 0), "REPLICA")])
def test_mysql_replica_statements(version: tuple[int, int, int], word: str) -> None:
    flavor = MySQL(version)
    assert flavor.stop_sql_thread() == (f"STOP {word} SQL_THREAD", ())
    assert flavor.start_sql_thread() == (f"START {word} SQL_THREAD", ())
    assert flavor.start_replica() == (f"START {word}", ())
    assert flavor.stop_replica("east") == (f"STOP {word} FOR CHANNEL %s", ("east",))
    assert flavor.reset_replica_all() == (f"RESET {word} ALL", ())
    assert flavor.replica_status() == (f"SHOW {word} STATUS", ())
    assert flavor.start_replica_until("uuid:1-9") == (
        f"START {word} UNTIL SQL_AFTER_GTIDS = %s", ("uuid:1-9",))


@pytest.mark.parametrize(("version", "head", "prefix"), [
    ((5, 7, 44), "CHANGE MASTER TO", "MASTER"), ((8, 0, 22), "CHANGE MASTER TO", "MASTER"),
    ((8, 0, 23), "CHANGE REPLICATION SOURCE TO", "SOURCE"),
    ((8, 4, 0), "CHANGE REPLICATION SOURCE TO", "SOURCE")])
def test_mysql_change_source(version: tuple[int, int, int], head: str, prefix: str) -> None:
    flavor = MySQL(version)
    sql, args = flavor.change_master(COORDS, "repl", "secret")
    assert sql == (f"{head} {prefix}_HOST = %s, {prefix}_PORT = %s, {prefix}_USER = %s, "
                   f"{prefix}_PASSWORD = %s, {prefix}_AUTO_POSITION = 1")
    assert args == ("10.0.0.1", 3306, "repl", "secret")
    sql, args = flavor.change_master(FILE_COORDS, "repl", "secret")
    assert sql.endswith(f"{prefix}_LOG_FILE = %s, {prefix}_LOG_POS = %s")
    assert args[-2:] == ("binlog.000007", 4000)
    assert flavor.use_gtid_positioning() == (f"{head} {prefix}_AUTO_POSITION = 1", ())
    assert flavor.use_gtid_positioning("east") == (
        f"{head} {prefix}_AUTO_POSITION = 1 FOR CHANNEL %s", ("east",))


def test_mysql_binlog_and_gtid_statements_follow_the_release() -> None:
    assert MySQL((8, 0, 36)).binlog_status() == ("SHOW MASTER STATUS", ())
    assert MySQL((8, 4, 0)).binlog_status() == ("SHOW BINARY LOG STATUS", ())
    assert MySQL((5, 7, 44)).replica_hosts() == ("SHOW SLAVE HOSTS", ())
    assert MySQL((8, 4, 0)).replica_hosts() == ("SHOW REPLICAS", ())
    assert MySQL((8, 0, 36)).prepare_gtid_position("u:1-3") == [
        ("RESET MASTER", ()), ("SET GLOBAL gtid_purged = %s", ("u:1-3",))]
    assert MySQL((8, 4, 0)).prepare_gtid_position("u:1-3")[0] == (
        "RESET BINARY LOGS AND GTIDS", ())
    assert MySQL((8, 0, 36)).gtid_variable() == "gtid_executed"
    assert MySQL((8, 0, 36)).wait_for_gtid("u:1-3", 5) == (
        "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s) AS result", ("u:1-3", 5.0))
    assert MySQL((5, 7, 44)).log_status() is None
    assert "performance_schema.log_status" in (MySQL((8, 0, 36)).log_status() or ("", ()))[0]
    assert MySQL((8, 0, 36)).binlog_gtid_pos("binlog.000001", 4) is None


def test_mysql_backup_locks() -> None:
    assert [s.sql for s in MySQL((5, 7, 44)).lock_ladder()] == ["FLUSH TABLES WITH READ LOCK"]
    assert MySQL((5, 7, 44)).unlock() == [("UNLOCK TABLES", ())]
    ladder = MySQL((8, 0, 36)).lock_ladder()
    assert [(s.sql, s.blocks_writes) for s in ladder] == [
        ("LOCK INSTANCE FOR BACKUP", False), ("FLUSH TABLES WITH READ LOCK", True)]
    assert MySQL((8, 4, 0)).unlock() == [("UNLOCK TABLES", ()), ("UNLOCK INSTANCE", ())]


def test_mysql_variable_names_and_persistence() -> None:
    old, renamed, lts = MySQL((5, 7, 44)), MySQL((8, 0, 26)), MySQL((8, 4, 0))
    assert old.variable_name("log_replica_updates") == "log_slave_updates"
    assert renamed.variable_name("slave_parallel_workers") == "replica_parallel_workers"
    assert lts.variable_name("slave_preserve_commit_order") == "replica_preserve_commit_order"
    assert MySQL((8, 0, 25)).variable_name("log_slave_updates") == "log_slave_updates"
    assert old.set_variable("sync_binlog", 1) == ("SET GLOBAL sync_binlog = %s", (1,))
    assert lts.set_variable("sync_binlog", 1) == ("SET PERSIST sync_binlog = %s", (1,))
    assert lts.persist_only("relay_log_recovery", "ON") == (
        "SET PERSIST_ONLY relay_log_recovery = %s", ("ON",))
    assert old.persist_only("relay_log_recovery", "ON") is None
    with pytest.raises(ValueError, match="unexpected variable"):
        lts.set_variable("sync_binlog = 0; DROP TABLE x; --", 1)


def test_mysql_skipping_one_gtid_is_the_documented_empty_transaction() -> None:
    statements = MySQL((8, 0, 36)).mark_transaction_applied("u:7", "u:1-6")
    assert [show_sql(s) for s in statements] == [
        "STOP REPLICA", "SET SESSION GTID_NEXT = 'u:7'", "BEGIN", "COMMIT",
        "SET SESSION GTID_NEXT = 'AUTOMATIC'", "START REPLICA"]


def test_mariadb_statements() -> None:
    flavor = MariaDB((10, 11, 6))
    assert flavor.stop_sql_thread("east") == ("STOP SLAVE %s SQL_THREAD", ("east",))
    assert flavor.start_replica() == ("START SLAVE", ())
    assert flavor.replica_status() == ("SHOW ALL SLAVES STATUS", ())
    assert flavor.use_gtid_positioning() == ("CHANGE MASTER TO MASTER_USE_GTID = slave_pos", ())
    assert flavor.use_gtid_positioning("east") == (
        "CHANGE MASTER %s TO MASTER_USE_GTID = slave_pos", ("east",))
    assert flavor.binlog_gtid_pos("mysql-bin.000001", 4) == (
        "SELECT BINLOG_GTID_POS(%s, %s) AS gtid", ("mysql-bin.000001", 4))
    assert flavor.set_variable("gtid_strict_mode", "ON") == (
        "SET GLOBAL gtid_strict_mode = %s", ("ON",))
    assert flavor.persist_only("relay_log_recovery", "ON") is None
    assert flavor.variable_name("slave_parallel_workers") == "slave_parallel_threads"
    assert flavor.binlog_decoder() == "mariadb-binlog"
    assert MariaDB((10, 3, 39)).binlog_decoder() == "mysqlbinlog"
    assert [show_sql(s) for s in flavor.mark_transaction_applied("0-1-16", "1-2-5,0-1-15")] \
        == ["STOP SLAVE", "SET GLOBAL gtid_slave_pos = '1-2-5,0-1-16'", "START SLAVE"]


@pytest.mark.parametrize(("version", "ladder", "unlock"), [
    ((10, 3, 39), ["FLUSH TABLES WITH READ LOCK"], "UNLOCK TABLES"),
    ((10, 11, 6), ["BACKUP STAGE START", "BACKUP STAGE FLUSH", "BACKUP STAGE BLOCK_DDL",
                   "BACKUP STAGE BLOCK_COMMIT"], "BACKUP STAGE END"),
    ((11, 4, 2), ["BACKUP STAGE START", "BACKUP STAGE FLUSH", "BACKUP STAGE BLOCK_DDL",
                  "BACKUP STAGE BLOCK_COMMIT"], "BACKUP STAGE END")])
def test_mariadb_backup_locks(version: tuple[int, int, int], ladder: list[str],
                              unlock: str) -> None:
    flavor = MariaDB(version)
    assert [s.sql for s in flavor.lock_ladder()] == ladder
    assert [s.sql for s in flavor.lock_ladder() if s.blocks_writes] == ladder[-1:]
    assert flavor.unlock() == [(unlock, ())]


@pytest.mark.parametrize(("text", "name", "version"), [
    ("10.11.6-MariaDB-0+deb12u1-log", "mariadb", (10, 11, 6)),
    ("11.4.2-MariaDB", "mariadb", (11, 4, 2)), ("5.5.5-10.6.16-MariaDB", "mariadb", (10, 6, 16)),
    ("5.7.44-log", "mysql", (5, 7, 44)), ("8.0.36", "mysql", (8, 0, 36)),
    ("8.4.0-commercial", "mysql", (8, 4, 0))])
def test_detect(text: str, name: str, version: tuple[int, int, int]) -> None:
    flavor = detect(text)
    assert (flavor.name, flavor.version) == (name, version)


# -- the MySQL audit on recorded variables ---------------------------------------------

MYSQL_57_UNSAFE = {
    "log_bin": "ON", "sync_binlog": "0", "innodb_flush_log_at_trx_commit": "2",
    "binlog_format": "ROW", "log_slave_updates": "ON", "relay_log_recovery": "OFF",
    "relay_log_info_repository": "FILE", "master_info_repository": "FILE",
    "slave_parallel_workers": "4", "slave_parallel_type": "DATABASE",
    "slave_preserve_commit_order": "OFF", "gtid_mode": "OFF", "gtid_executed": "",
    "relay_log_basename": "/var/lib/mysql/relay-bin"}

MYSQL_84_SAFE = {
    "log_bin": "ON", "sync_binlog": "1", "innodb_flush_log_at_trx_commit": "1",
    "binlog_format": "ROW", "log_replica_updates": "ON", "relay_log_recovery": "ON",
    "replica_parallel_workers": "4", "replica_preserve_commit_order": "ON", "gtid_mode": "ON",
    "gtid_executed": "u:1-9", "relay_log_basename": "/var/lib/mysql/relay-bin"}


def _facts(flavor: MySQL, variables: dict[str, str], row: dict[str, Any],
           engines: dict[str, str]) -> Facts:
    facts = Facts(flavor=flavor, version=".".join(map(str, flavor.version)),
                  variables=variables)
    facts.channels = [flavor.parse_replica_status({**row, "Last_SQL_Errno": 0,
                                                   "Last_SQL_Error": ""})]
    facts.position_engines = engines
    facts.user_tables = {"InnoDB": ["app.orders"]}
    return facts


def _by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def test_mysql57_unsafe_replica_is_flagged_with_exact_fixes() -> None:
    facts = _facts(MySQL((5, 7, 44)), MYSQL_57_UNSAFE, {**MYSQL_57_ROW, "Auto_Position": 0},
                   {"slave_master_info": "MyISAM", "slave_relay_log_info": "MyISAM",
                    "slave_worker_info": "MyISAM"})
    found = _by_check(run_checks(facts))
    repo = found["relay_log_info_repository"]
    assert repo.severity == "critical" and repo.is_problem
    assert repo.fix is not None
    assert [show_sql(s) for s in repo.fix.statements] == [
        "SET GLOBAL relay_log_info_repository = 'TABLE'"]
    assert repo.fix.stop_replication == "all"
    assert repo.fix.config_lines == ["relay_log_info_repository = TABLE"]
    table = found["slave_relay_log_info_engine"]
    assert table.severity == "critical" and table.fix is not None and table.fix.no_binlog
    assert [show_sql(s) for s in table.fix.statements] == [
        "ALTER TABLE `mysql`.`slave_relay_log_info` ENGINE=InnoDB"]
    assert found["slave_worker_info_engine"].severity == "critical"
    assert found["slave_master_info_engine"].severity == "warning"
    recovery = found["relay_log_recovery"]
    assert recovery.severity == "critical" and recovery.fix is not None
    assert recovery.fix.restart and not recovery.fix.online
    assert recovery.fix.config_lines == ["relay_log_recovery = ON"]
    assert found["commit_order"].severity == "critical"
    assert found["parallel_type"].fix is not None
    assert [show_sql(s) for s in found["parallel_type"].fix.statements] == [
        "SET GLOBAL slave_parallel_type = 'LOGICAL_CLOCK'"]
    position = found["auto_position"]
    assert position.fix is not None and position.fix.restart
    assert position.fix.config_lines == ["gtid_mode = ON", "enforce_gtid_consistency = ON"]
    assert found["sync_binlog"].severity == "warning"
    assert found["innodb_flush_log_at_trx_commit"].severity == "warning"


def test_mysql84_safe_replica_passes_and_fixes_would_persist() -> None:
    flavor = MySQL((8, 4, 0))
    facts = _facts(flavor, MYSQL_84_SAFE, MYSQL_8_ROW,
                   {"slave_master_info": "InnoDB", "slave_relay_log_info": "InnoDB",
                    "slave_worker_info": "InnoDB"})
    findings = run_checks(facts)
    assert [f.message for f in findings if f.is_problem] == []
    checks = {f.check for f in findings}
    assert "relay_log_info_repository" not in checks  # removed in 8.3: nothing to check
    assert {"commit_order", "auto_position", "relay_log_recovery",
            "slave_relay_log_info_engine"} <= checks
    broken = _by_check(run_checks(_facts(flavor, {**MYSQL_84_SAFE, "sync_binlog": "0"},
                                         MYSQL_8_ROW, facts.position_engines)))
    fix = broken["sync_binlog"].fix
    assert fix is not None
    assert [show_sql(s) for s in fix.statements] == ["SET PERSIST sync_binlog = 1"]
    assert fix.config_lines == []


# -- what the binlog decoder prints ----------------------------------------------------

DECODED = """\
# at 1096
#261124  4:40:12 server id 1  end_log_pos 39127 CRC32 0xb5a1fedd \tGTID 0-1-14 trans
START TRANSACTION
# at 1244
#261124  4:40:12 server id 1  end_log_pos 39278 CRC32 0x6b92fbce \tWrite_rows: table id 25
### INSERT INTO `app`.`t`
### SET
###   @1=-1 (4294967295) /* INT meta=0 nullable=0 is_null=0 */
###   @2='it's \\x09 a /* tab */' /* VARSTRING(80) meta=80 nullable=1 is_null=0 */
###   @3=1795495383.722456 /* TIMESTAMP(6) meta=6 nullable=0 is_null=0 */
###   @4='2024:01:02' /* DATE meta=0 nullable=1 is_null=0 */
###   @5=891.94 /* DECIMAL(12,2) meta=3074 nullable=0 is_null=0 */
###   @6=b'00000011' /* SET(1 bytes) meta=63489 nullable=1 is_null=0 */
###   @7=NULL /* VARSTRING(20) meta=20 nullable=1 is_null=1 */
# Number of rows: 1
# at 1289
#261124  4:40:12 server id 1  end_log_pos 39309 CRC32 0x2f490a41 \tXid = 116
COMMIT/*!*/;
"""


def test_row_event_is_found_by_master_position_with_its_gtid_and_values() -> None:
    event = find_row_event(DECODED, 39278, ("app", "t"))
    assert event is not None
    assert (event.kind, event.gtid, len(event.rows)) == ("insert", "0-1-14", 1)
    after = event.rows[0].after
    assert after is not None and event.rows[0].before is None
    assert after[1].for_column(unsigned=True) == 4294967295
    assert after[1].for_column(unsigned=False) == -1
    assert (after[2].kind, after[2].value) == ("bytes", b"it's \t a /* tab */")
    assert (after[3].kind, after[3].value) == ("timestamp", Decimal("1795495383.722456"))
    assert after[4].value == "2024:01:02"
    assert after[5].value == Decimal("891.94")
    assert (after[6].kind, after[6].value) == ("number_of", 3)
    assert after[7].value is None
    assert find_row_event(DECODED, 39278, ("app", "other")) is None
    assert find_row_event(DECODED, 12345) is None


def test_ambiguous_or_undecodable_strings_are_not_guessed() -> None:
    assert parse_value(1, r"'C:\x41' /* VARSTRING(20) meta=20 nullable=1 is_null=0 */").kind \
        == "unknown"
    assert parse_value(1, "'caf\ufffd' /* VARSTRING(20) meta=20 nullable=1 is_null=0 */").kind \
        == "unknown"
    assert parse_value(1, "17 no comment").kind == "unknown"


def test_status_type_is_frozen_and_defaults_stay_compatible() -> None:
    status = ReplicaStatus("h", 1, "u", "Yes", "Yes", 0, "f", 4, "", "", 0, "No")
    assert (status.relay_log_file, status.relay_log_pos, status.channel) == ("", 0, "")
