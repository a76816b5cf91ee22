"""`hotcopy audit` against real MariaDB servers: what it flags, what --fix repairs, and
how it diagnoses a replica stopped on a duplicate key or a missing row (never skipping).

The module breaks servers on purpose, so it runs its own sandbox (master + 2 replicas)
and takes it down at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.mysql import replication
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime
from hotcopy.sandbox import SandboxInfo, down, up
from hotcopy.workflows.audit import audit_after_clone

from .helpers import clone_json, hotcopy, runtime, wait_for, wait_replicating


@pytest.fixture(scope="module")
def shard() -> Iterator[SandboxInfo]:
    parent = Path(tempfile.mkdtemp(prefix="hotcopy-audit-"))
    parent.chmod(0o755)
    try:
        yield up(parent / "sandbox", replicas=2)
    finally:
        try:
            down(parent / "sandbox")
        finally:
            shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def rt(shard: SandboxInfo) -> Iterator[Runtime]:
    handle = runtime(shard)
    yield handle
    handle.close()


def audit(info: SandboxInfo, *args: str) -> tuple[int, dict[str, Any]]:
    proc = hotcopy("audit", "--config", str(info.config_path), "--json", *args, timeout=120)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def findings(report: dict[str, Any], server: str) -> dict[str, dict[str, Any]]:
    entry = next(s for s in report["servers"] if s["server"] == server)
    return {f["check"]: f for f in entry["findings"]}


def server_entry(report: dict[str, Any], server: str) -> dict[str, Any]:
    return next(s for s in report["servers"] if s["server"] == server)


def run(server: Server, *statements: str, binlog: bool = False) -> None:
    """Statements of the test itself; on replicas never binlogged (no local GTIDs)."""
    session = server.new_session()
    try:
        session.execute(f"SET SESSION sql_log_bin = {int(binlog)}")
        for statement in statements:
            session.execute(statement)
    finally:
        session.close()


def write(master: Server, *statements: str) -> None:
    run(master, *statements, binlog=True)


def stopped_on_error(server: Server, timeout: float = 30) -> ReplicaStatus:
    def errored() -> bool:
        status = replication.single_channel(server)
        return status is not None and status.last_sql_errno != 0

    assert wait_for(errored, timeout), "replication did not stop on an error"
    status = replication.single_channel(server)
    assert status is not None
    return status


def gtid_slave_pos(server: Server) -> str:
    return str(server.scalar(("SELECT @@GLOBAL.gtid_slave_pos", ())))


def assert_equal_to_master(rt: Runtime, info: SandboxInfo, name: str) -> None:
    master, replica = rt.server(info.master), rt.server(name)

    def running() -> bool:
        status = replication.single_channel(replica)
        return status is not None and (status.running or status.last_sql_errno != 0)

    assert wait_for(running, 30), replication.single_channel(replica)
    wait_replicating(replica, master, timeout=60)
    assert differing_tables(table_checksums(master), table_checksums(replica)) == []


def drop_options(cnf: Path, pattern: str) -> str:
    """Remove option lines matching pattern; returns the original text for restoring."""
    original = cnf.read_text()
    kept = [line for line in original.splitlines() if not re.match(pattern, line.strip())]
    cnf.write_text("\n".join(kept) + "\n")
    return original


def test_sandbox_shard_is_crash_safe(shard: SandboxInfo) -> None:
    code, report = audit(shard)
    assert code == 0, report
    assert report["problems"] == 0
    assert report["crash_safe"] == {name: True for name in shard.servers}
    replica = findings(report, "replica1")
    for check in ("gtid_slave_pos_engine", "using_gtid", "relay_log_recovery",
                  "gtid_strict_mode", "sync_binlog", "innodb_flush_log_at_trx_commit"):
        assert replica[check]["severity"] == "ok", replica[check]
    assert server_entry(report, "master")["role"] == "master"
    assert server_entry(report, "replica1")["role"] == "replica"


def test_unknown_server_is_bad_input(shard: SandboxInfo) -> None:
    proc = hotcopy("audit", "--config", str(shard.config_path), "replica1", "nosuch")
    assert proc.returncode == 2
    assert "unknown server 'nosuch'" in proc.stderr


def test_flags_a_replica_that_is_not_crash_safe_and_fixes_it_online(
        shard: SandboxInfo, rt: Runtime) -> None:
    replica, master = rt.server("replica2"), rt.server(shard.master)
    run(replica, "STOP SLAVE", "ALTER TABLE mysql.gtid_slave_pos ENGINE=Aria",
        "CHANGE MASTER TO MASTER_USE_GTID = no",
        "SET GLOBAL relay_log_recovery = OFF, sync_binlog = 0, "
        "innodb_flush_log_at_trx_commit = 2, gtid_strict_mode = OFF, binlog_format = 'MIXED', "
        "slave_parallel_threads = 4, slave_parallel_mode = 'aggressive'", "START SLAVE")
    write(master,
          "CREATE TABLE IF NOT EXISTS app.audit_probe (id INT PRIMARY KEY, v INT) ENGINE=InnoDB",
          "INSERT INTO app.audit_probe VALUES (1, 1), (2, 2)")
    wait_replicating(replica, master)

    code, report = audit(shard, "replica2")
    assert code == 1
    found = findings(report, "replica2")
    expected = {"gtid_slave_pos_engine": "critical", "using_gtid": "critical",
                "relay_log_recovery": "critical", "sync_binlog": "warning",
                "innodb_flush_log_at_trx_commit": "warning", "gtid_strict_mode": "warning",
                "binlog_format": "warning", "parallel_apply": "warning"}
    assert {c: found[c]["severity"] for c in expected} == expected
    engine = found["gtid_slave_pos_engine"]
    assert "Aria" in engine["message"] and "skips" in engine["why"]
    assert engine["fix"]["sql"] == ["ALTER TABLE `mysql`.`gtid_slave_pos` ENGINE=InnoDB"]
    assert found["using_gtid"]["fix"]["sql"] == ["CHANGE MASTER TO MASTER_USE_GTID = slave_pos"]
    assert found["sync_binlog"]["fix"]["sql"] == ["SET GLOBAL sync_binlog = 1"]
    assert not server_entry(report, "replica2")["crash_safe"]

    code, fixed = audit(shard, "replica2", "--fix", "--yes")
    assert code == 0, findings(fixed, "replica2")
    assert {f["check"] for f in server_entry(fixed, "replica2")["fixes_applied"]
            if f["state"] == "fixed"} >= set(expected)
    assert server_entry(fixed, "replica2")["crash_safe"]
    assert replica.scalar(("SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                           "'mysql' AND TABLE_NAME = 'gtid_slave_pos'", ())) == "InnoDB"
    status = replication.single_channel(replica)
    assert status is not None and status.using_gtid == "Slave_Pos" and status.running
    # The repairs were not binlogged: no GTID of the replica's own server id.
    own_id = replica.scalar(("SELECT @@server_id", ()))
    assert f"-{own_id}-" not in str(replica.scalar(("SELECT @@GLOBAL.gtid_binlog_pos", ())))
    write(master, "INSERT INTO app.audit_probe VALUES (3, 3)")
    assert_equal_to_master(rt, shard, "replica2")
    run(replica, "STOP SLAVE", "SET GLOBAL slave_parallel_threads = 0", "START SLAVE")


def test_audit_after_clone_fixes_the_position_and_reports_the_rest(
        shard: SandboxInfo, rt: Runtime) -> None:
    """What the clone workflow runs on its new replica as its last word."""
    replica, master = rt.server("replica2"), rt.server(shard.master)
    run(replica, "STOP SLAVE", "ALTER TABLE mysql.gtid_slave_pos ENGINE=MyISAM",
        "CHANGE MASTER TO MASTER_USE_GTID = no",
        "SET GLOBAL relay_log_recovery = OFF, sync_binlog = 0", "START SLAVE")
    try:
        report = audit_after_clone(rt, "replica2")
        json.dumps(report)  # it goes into the job report
        assert set(report["fixed"]) == {"gtid_slave_pos_engine", "using_gtid",
                                        "relay_log_recovery"}
        assert report["crash_safe"] is True
        left = {f["check"]: f for f in report["findings"]}
        assert left["sync_binlog"]["state"] == "problem"  # durability: reported, not changed
        assert replica.scalar(("SELECT @@GLOBAL.sync_binlog", ())) == 0
        status = replication.single_channel(replica)
        assert status is not None and status.using_gtid == "Slave_Pos"
    finally:
        run(replica, "SET GLOBAL sync_binlog = 1")
    write(master, "INSERT INTO app.audit_probe VALUES (4, 4)")
    assert_equal_to_master(rt, shard, "replica2")


def test_restart_only_settings_are_listed_with_their_config_lines(
        shard: SandboxInfo, rt: Runtime) -> None:
    """replica1 loses log_slave_updates while replica2 replicates from it (a chain)."""
    cnf = shard.defaults_file("replica1")
    control = rt.mysqld("replica1")
    original = drop_options(cnf, r"^(log[-_]slave[-_]updates|relay[-_]log[-_]recovery)\b")
    chained = rt.server("replica2")
    try:
        control.stop()
        control.start(timeout=60)
        rt.server("replica1").close()
        run(chained, "STOP SLAVE", f"CHANGE MASTER TO MASTER_HOST = '127.0.0.1', "
            f"MASTER_PORT = {shard.ports['replica1']}", "START SLAVE")
        assert wait_for(lambda: replication.replicas_of(rt.server("replica1")), 20)

        code, report = audit(shard, "replica1", "--fix", "--yes")
        assert code == 1
        found = findings(report, "replica1")
        chain = found["log_slave_updates"]
        assert chain["severity"] == "critical" and chain["state"] == "problem"
        assert chain["fix"]["restart"] and chain["fix"]["config_lines"] == [
            "log_slave_updates = ON"]
        assert found["relay_log_recovery"]["severity"] == "ok"  # set online by --fix
        after_restart = found["relay_log_recovery.after_restart"]
        assert after_restart["severity"] == "warning"
        assert after_restart["fix"]["config_lines"] == ["relay_log_recovery = ON"]
        assert str(cnf) in after_restart["message"]
        assert "log_slave_updates" not in {
            f["check"] for f in server_entry(report, "replica1")["fixes_applied"]}
    finally:
        cnf.write_text(original)
        control.stop()
        control.start(timeout=60)
        rt.server("replica1").close()
        run(chained, "STOP SLAVE", f"CHANGE MASTER TO MASTER_HOST = '127.0.0.1', "
            f"MASTER_PORT = {shard.ports[shard.master]}", "START SLAVE")
    assert_equal_to_master(rt, shard, "replica1")
    assert_equal_to_master(rt, shard, "replica2")


def test_duplicate_key_with_position_behind_data_is_diagnosed_never_skipped(
        shard: SandboxInfo, rt: Runtime) -> None:
    """A position that lost its last update (what a crash does to a non-transactional
    position) re-applies a transaction the data already has."""
    replica, master = rt.server("replica2"), rt.server(shard.master)
    wait_replicating(replica, master)
    behind = gtid_slave_pos(replica)
    write(master, "INSERT INTO app.audit_probe VALUES (10, 100), (11, 110)")
    wait_replicating(replica, master)
    applied = gtid_slave_pos(replica)
    run(replica, "STOP SLAVE", "SET GLOBAL gtid_strict_mode = OFF",
        f"SET GLOBAL gtid_slave_pos = '{behind}'", "START SLAVE")
    status = stopped_on_error(replica)
    assert status.last_sql_errno == 1062

    code, report = audit(shard, "replica2", "--fix", "--yes")
    assert code == 1
    (diagnosis,) = server_entry(report, "replica2")["diagnoses"]
    assert diagnosis["verdict"] == "position_behind_data"
    assert diagnosis["gtid"] == applied and diagnosis["table"] == "app.audit_probe"
    assert {r["state"] for r in diagnosis["rows"]} == {"applied"}
    assert diagnosis["skipped"] is False
    advice = " ".join(diagnosis["what_to_do"])
    assert "hotcopy clone" in advice and f"SET GLOBAL gtid_slave_pos = '{applied}'" in advice
    # --fix changed nothing about the position and left the replica stopped on its error.
    assert gtid_slave_pos(replica) == behind
    after = replication.single_channel(replica)
    assert after is not None and after.sql_running == "No" and after.last_sql_errno == 1062

    run(replica, "STOP SLAVE", f"SET GLOBAL gtid_slave_pos = '{applied}'",
        "SET GLOBAL gtid_strict_mode = ON", "START SLAVE")  # the human's step, as advised
    assert_equal_to_master(rt, shard, "replica2")


def test_strict_mode_stop_is_read_from_the_replicas_own_binlog(
        shard: SandboxInfo, rt: Runtime) -> None:
    replica, master = rt.server("replica2"), rt.server(shard.master)
    behind = gtid_slave_pos(replica)
    write(master, "INSERT INTO app.audit_probe VALUES (12, 120)",
          "UPDATE app.audit_probe SET v = v + 1 WHERE id = 12")
    wait_replicating(replica, master)
    applied = gtid_slave_pos(replica)
    run(replica, "STOP SLAVE", f"SET GLOBAL gtid_slave_pos = '{behind}'", "START SLAVE")
    assert stopped_on_error(replica).last_sql_errno == 1950

    code, report = audit(shard, "replica2")
    assert code == 1
    (diagnosis,) = server_entry(report, "replica2")["diagnoses"]
    assert diagnosis["verdict"] == "position_behind_data"
    assert diagnosis["gtid"] == applied and applied in diagnosis["evidence"]
    assert gtid_slave_pos(replica) == behind
    run(replica, "STOP SLAVE", f"SET GLOBAL gtid_slave_pos = '{applied}'", "START SLAVE")
    assert_equal_to_master(rt, shard, "replica2")


def test_conflicting_row_and_missing_row_are_told_apart(shard: SandboxInfo,
                                                        rt: Runtime) -> None:
    replica, master = rt.server("replica1"), rt.server(shard.master)
    wait_replicating(replica, master)
    run(replica, "INSERT INTO app.audit_probe VALUES (20, -1)")  # a local write
    write(master, "INSERT INTO app.audit_probe VALUES (20, 200)")
    assert stopped_on_error(replica).last_sql_errno == 1062
    code, report = audit(shard, "replica1")
    assert code == 1
    (diagnosis,) = server_entry(report, "replica1")["diagnoses"]
    assert diagnosis["verdict"] == "conflicting_row"
    assert diagnosis["rows"][0]["differing_columns"] == ["v"]
    assert any("hotcopy clone" in step for step in diagnosis["what_to_do"])

    run(replica, "DELETE FROM app.audit_probe WHERE id = 20", "START SLAVE")
    wait_replicating(replica, master)
    run(replica, "DELETE FROM app.audit_probe WHERE id = 2")  # a row lost on the replica
    write(master, "UPDATE app.audit_probe SET v = 22 WHERE id = 2")
    assert stopped_on_error(replica).last_sql_errno == 1032
    code, report = audit(shard, "replica1", "--fix", "--yes")
    assert code == 1
    (diagnosis,) = server_entry(report, "replica1")["diagnoses"]
    assert diagnosis["verdict"] == "data_missing"
    assert diagnosis["rows"][0]["state"] == "missing"
    assert diagnosis["rows"][0]["key"] == "id=2"

    # The remedy the audit names: re-seed from a healthy replica.
    proc, clone = clone_json(shard, "replica2", "replica1")
    assert proc.returncode == 0, proc.stderr
    assert clone["state"] == "committed"
    rt.server("replica1").close()
    code, report = audit(shard, "replica1")
    assert code == 0, findings(report, "replica1")
    assert_equal_to_master(rt, shard, "replica1")
