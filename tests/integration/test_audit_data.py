"""The data audit against real MariaDB servers: tables without a row key, tables in
non-transactional engines, what --fix converts (and how), --dry-run, the confirmation,
the diagnosis of a stop on a key-less table, and an unreachable server.

One sandbox of its own (master + 1 replica) for the module: the tests break
replication on purpose and put it back before they end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.mysql import replication
from hotcopy.mysql.checksum import table_checksums
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime
from hotcopy.sandbox import SandboxInfo
from hotcopy.workflows.audit import audit_after_clone

from .conftest import own_sandbox
from .helpers import runtime, wait_for, wait_replicating

SCHEMA = "audit_data"
LARGE = 120_000  # above hotcopy.mysql.audit.data.LARGE_ROWS


@pytest.fixture(scope="module")
def shard() -> Iterator[SandboxInfo]:
    with own_sandbox(seed_rows=0, replicas=1) as info:
        rt = runtime(info)
        master, replica = rt.server(info.master), rt.server("replica1")
        write(master,
              f"CREATE DATABASE {SCHEMA}",
              f"CREATE TABLE {SCHEMA}.small_nokey (id INT NOT NULL, v INT) ENGINE=InnoDB",
              f"INSERT INTO {SCHEMA}.small_nokey VALUES (1, 10), (2, 20), (3, 30)",
              f"CREATE TABLE {SCHEMA}.large_nokey (id INT NOT NULL, v INT) ENGINE=InnoDB",
              f"INSERT INTO {SCHEMA}.large_nokey SELECT seq, seq FROM {SCHEMA}.seq_1_to_{LARGE}",
              f"ANALYZE TABLE {SCHEMA}.large_nokey",
              f"CREATE TABLE {SCHEMA}.nullable_unique (a INT, b INT, UNIQUE KEY ua (a)) "
              "ENGINE=InnoDB",
              f"CREATE TABLE {SCHEMA}.keyed (id INT PRIMARY KEY, v INT) ENGINE=InnoDB",
              f"CREATE TABLE {SCHEMA}.legacy (id INT PRIMARY KEY, v INT) ENGINE=MyISAM",
              f"INSERT INTO {SCHEMA}.legacy VALUES (1, 1), (2, 2)",
              f"CREATE TABLE {SCHEMA}.lost (k INT NOT NULL, v INT) ENGINE=InnoDB",
              f"INSERT INTO {SCHEMA}.lost VALUES (1, 1), (2, 2)")
        wait_replicating(replica, master)
        rt.close()
        yield info


@pytest.fixture
def rt(shard: SandboxInfo) -> Iterator[Runtime]:
    handle = runtime(shard)
    yield handle
    handle.close()


def write(server: Server, *statements: str, binlog: bool = True) -> None:
    session = server.new_session()
    try:
        session.execute(f"SET SESSION sql_log_bin = {int(binlog)}")
        for statement in statements:
            session.execute(statement)
    finally:
        session.close()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no terminal on stdin (as from cron or CI)."""
    env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
    return subprocess.run([sys.executable, "-m", "hotcopy", "audit", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=180, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def audit(info: SandboxInfo, *args: str) -> tuple[int, dict[str, Any]]:
    proc = cli(info.config_path, "--json", *args)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def words(text: str) -> str:
    """Terminal output with the console's line wrapping undone."""
    return " ".join(text.split())


def entry(report: dict[str, Any], server: str) -> dict[str, Any]:
    return next(s for s in report["servers"] if s["server"] == server)


def by_subject(report: dict[str, Any], server: str, check: str) -> dict[str, dict[str, Any]]:
    return {f["subject"]: f for f in entry(report, server)["findings"] if f["check"] == check}


def engine_of(server: Server, table: str) -> str:
    return str(server.scalar(("SELECT ENGINE FROM information_schema.TABLES WHERE "
                              "TABLE_SCHEMA = %s AND TABLE_NAME = %s", (SCHEMA, table))))


def rows_of(server: Server, table: str) -> list[tuple[int, int]]:
    return [(int(r["a"]), int(r["b"])) for r in server.query(
        (f"SELECT {'id' if table == 'legacy' else 'k'} AS a, v AS b FROM {SCHEMA}.{table} "
         "ORDER BY a", ()))]


def binlog_text(server: Server) -> str:
    """Every event of the server's binlogs, as SHOW BINLOG EVENTS prints them."""
    events = []
    for log_row in server.query(("SHOW BINARY LOGS", ())):
        for row in server.query((f"SHOW BINLOG EVENTS IN '{log_row['Log_name']}'", ())):
            events.append(str(row["Info"]))
    return "\n".join(events)


def replica_threads(server: Server) -> set[int]:
    """Connection ids of the replication threads: a STOP/START SLAVE would change them."""
    rows = server.query(("SELECT ID FROM information_schema.PROCESSLIST "
                         "WHERE USER = 'system user'", ()))
    return {int(r["ID"]) for r in rows}


def test_keyless_and_non_transactional_tables_are_flagged_with_severity_and_fix(
        shard: SandboxInfo, rt: Runtime) -> None:
    code, report = audit(shard)
    assert code == 1
    keyless = by_subject(report, "replica1", "keyless_table")
    assert {t for t in keyless if t.startswith(SCHEMA)} == {
        f"{SCHEMA}.small_nokey", f"{SCHEMA}.large_nokey", f"{SCHEMA}.nullable_unique",
        f"{SCHEMA}.lost"}
    small, large = keyless[f"{SCHEMA}.small_nokey"], keyless[f"{SCHEMA}.large_nokey"]
    assert small["severity"] == "warning" and large["severity"] == "critical"
    assert "~" in large["message"] and "rows" in large["message"]
    assert "cannot be detected" in small["why"]
    assert small["fix"]["sql"] == [f"ALTER TABLE `{SCHEMA}`.`small_nokey` ADD COLUMN "
                                   "`hc_row_id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT "
                                   "INVISIBLE PRIMARY KEY FIRST"]
    assert small["fix"]["online"] is False and "on the master" in small["fix"]["note"]
    assert "sql_generate_invisible_primary_key" not in small["fix"]["note"]  # MariaDB
    nullable = keyless[f"{SCHEMA}.nullable_unique"]
    assert "unique key ua admits NULL in a" in nullable["message"]
    assert nullable["fix"]["sql"] == [f"ALTER TABLE `{SCHEMA}`.`nullable_unique` "
                                      "ADD PRIMARY KEY (`a`)"]
    assert f"{SCHEMA}.keyed" not in keyless and f"{SCHEMA}.legacy" not in keyless

    loose = by_subject(report, "replica1", "non_transactional_table")
    assert set(loose) == {f"{SCHEMA}.legacy"}
    legacy = loose[f"{SCHEMA}.legacy"]
    assert legacy["severity"] == "critical" and "MyISAM" in legacy["message"]
    assert legacy["fix"]["sql"] == [f"ALTER TABLE `{SCHEMA}`.`legacy` ENGINE=InnoDB"]
    assert legacy["fix"]["online"] and legacy["fix"]["no_binlog"]
    assert legacy["fix"]["stop_replication"] == ""
    # The master is no replica: listed for information, not a problem of its own.
    assert by_subject(report, shard.master, "non_transactional_table")[
        f"{SCHEMA}.legacy"]["severity"] == "info"
    # System schemas are not audited for engines (mysql.* is Aria/CSV by design).
    assert not [t for t in loose if t.startswith("mysql.")]

    data = entry(report, "replica1")["data"]
    listed = {t["table"]: t for t in data["keyless_tables"][SCHEMA]}
    assert listed["large_nokey"]["rows"] >= LARGE // 2  # an InnoDB estimate
    assert listed["large_nokey"]["severity"] == "critical"
    assert listed["nullable_unique"]["nullable_unique_keys"] == ["ua"]
    assert [t["table"] for t in data["non_transactional_tables"][SCHEMA]] == ["legacy"]

    # The clone's crash_safety step stores the summary with its audit.
    clone_audit = audit_after_clone(rt, "replica1")
    assert clone_audit["data"]["keyless"] == 4
    assert clone_audit["data"]["keyless_critical"] == 1
    assert clone_audit["data"]["largest_keyless"][0].startswith(f"{SCHEMA}.large_nokey")
    assert clone_audit["data"]["non_transactional_tables"] == [f"{SCHEMA}.legacy (MyISAM)"]
    assert engine_of(rt.server("replica1"), "legacy") == "MyISAM"  # the clone fixes positions


def test_a_table_given_a_key_is_no_longer_flagged(shard: SandboxInfo, rt: Runtime) -> None:
    master, replica = rt.server(shard.master), rt.server("replica1")
    write(master, f"ALTER TABLE {SCHEMA}.small_nokey ADD PRIMARY KEY (id)")
    wait_replicating(replica, master)
    _, report = audit(shard, "replica1")
    keyless = by_subject(report, "replica1", "keyless_table")
    assert f"{SCHEMA}.small_nokey" not in keyless
    assert f"{SCHEMA}.large_nokey" in keyless


def test_dry_run_lists_the_fix_and_changes_nothing_and_fix_asks_first(
        shard: SandboxInfo, rt: Runtime) -> None:
    replica = rt.server("replica1")
    gtids = str(replica.scalar(("SELECT @@GLOBAL.gtid_binlog_pos", ())))
    threads = replica_threads(replica)

    code, report = audit(shard, "replica1", "--fix", "--dry-run")
    assert code == 1 and report["dry_run"] and not report["fix"]
    plan = {step["key"]: step for step in report["fix_plan"]}
    step = plan[f"non_transactional_table:{SCHEMA}.legacy"]
    assert step["sql"] == [f"ALTER TABLE `{SCHEMA}`.`legacy` ENGINE=InnoDB"]
    assert step["no_binlog"] and step["stop_replication"] == ""
    assert entry(report, "replica1")["fixes_applied"] == []
    text = words(cli(shard.config_path, "replica1", "--fix", "--dry-run").stdout)
    assert "--fix would apply" in text and "replication keeps running" in text

    # No terminal and no --yes: refused before anything is touched.
    refused = cli(shard.config_path, "replica1", "--fix")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "without confirmation" in refused.stderr and "--yes" in refused.stderr

    assert engine_of(replica, "legacy") == "MyISAM"
    assert str(replica.scalar(("SELECT @@GLOBAL.gtid_binlog_pos", ()))) == gtids
    assert replica_threads(replica) == threads


def test_fix_converts_myisam_unbinlogged_while_replication_keeps_running(
        shard: SandboxInfo, rt: Runtime) -> None:
    master, replica = rt.server(shard.master), rt.server("replica1")
    threads = replica_threads(replica)
    assert len(threads) >= 2  # IO and SQL thread
    own_id = int(replica.scalar(("SELECT @@server_id", ())))

    code, report = audit(shard, "replica1", "--fix", "--yes")
    fixed = {f["subject"]: f for f in entry(report, "replica1")["fixes_applied"]
             if f["check"] == "non_transactional_table"}
    assert fixed[f"{SCHEMA}.legacy"]["state"] == "fixed", fixed
    assert code == 1  # the key-less tables are left to a human: they need the master
    assert f"{SCHEMA}.legacy" not in by_subject(report, "replica1", "non_transactional_table")

    assert engine_of(replica, "legacy") == "InnoDB"
    assert engine_of(master, "legacy") == "MyISAM"  # not replicated anywhere
    assert replica_threads(replica) == threads  # replication was never stopped
    assert f"-{own_id}-" not in str(replica.scalar(("SELECT @@GLOBAL.gtid_binlog_pos", ())))
    for server in (replica, master):  # the rebuild is in no binlog
        assert not [event for event in binlog_text(server).splitlines()
                    if "ALTER" in event and "legacy" in event]

    write(master, f"INSERT INTO {SCHEMA}.legacy VALUES (3, 3)",
          f"UPDATE {SCHEMA}.legacy SET v = 20 WHERE id = 2")
    wait_replicating(replica, master)
    status = replication.single_channel(replica)
    assert status is not None and status.running and status.last_sql_errno == 0
    # Compared row by row: CHECKSUM TABLE depends on the engine's row format.
    assert rows_of(replica, "legacy") == rows_of(master, "legacy") == [(1, 1), (2, 20), (3, 3)]


def test_stop_on_a_keyless_table_is_diagnosed_as_such(shard: SandboxInfo,
                                                      rt: Runtime) -> None:
    master, replica = rt.server(shard.master), rt.server("replica1")
    write(replica, f"DELETE FROM {SCHEMA}.lost WHERE k = 2", binlog=False)  # lost locally
    write(master, f"UPDATE {SCHEMA}.lost SET v = 22 WHERE k = 2")

    def stopped() -> bool:
        status = replication.single_channel(replica)
        return status is not None and status.last_sql_errno != 0

    assert wait_for(stopped, 60), replication.single_channel(replica)
    status = replication.single_channel(replica)
    assert status is not None and status.last_sql_errno == 1032
    try:
        code, report = audit(shard, "replica1")
        assert code == 1
        (diagnosis,) = entry(report, "replica1")["diagnoses"]
        assert diagnosis["table"] == f"{SCHEMA}.lost"
        assert diagnosis["table_has_key"] is False
        assert "has no primary key or NOT NULL unique key" in diagnosis["explanation"]
        assert any(f"Give {SCHEMA}.lost a primary key" in step
                   for step in diagnosis["what_to_do"])
        assert diagnosis["skipped"] is False
        assert f"Give {SCHEMA}.lost a primary key" in words(cli(shard.config_path,
                                                                "replica1").stdout)
    finally:
        # Put the row back as the master had it before the update, and let it apply.
        write(replica, f"INSERT INTO {SCHEMA}.lost VALUES (2, 2)", "START SLAVE",
              binlog=False)
    wait_replicating(replica, master, timeout=60)
    assert (table_checksums(replica)[f"{SCHEMA}.lost"]
            == table_checksums(master)[f"{SCHEMA}.lost"])
    assert rows_of(replica, "lost") == [(1, 1), (2, 22)]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the probe closes


def test_unreachable_server_is_reported_unreachable_not_unsafe(shard: SandboxInfo,
                                                               tmp_path: Path) -> None:
    config = tmp_path / "with-ghost.toml"
    config.write_text(shard.config_path.read_text() + f"""
[servers.ghost]
host = "127.0.0.1"
port = {_closed_port()}
ssh = "local"
datadir = "{tmp_path / 'ghost-data'}"
defaults_file = "{tmp_path / 'ghost.cnf'}"
""")
    proc = cli(config, "ghost", "replica1", "--json")
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    ghost = entry(report, "ghost")
    assert ghost["status"] == "unreachable" and ghost["crash_safe"] is None
    assert ghost["findings"] == [] and ghost["error"]["message"]
    assert report["unreachable"] == ["ghost"]
    assert report["status"] == {"ghost": "unreachable", "replica1": "not-crash-safe"}
    shown = cli(config, "ghost")
    assert shown.returncode == 3
    assert "UNREACHABLE" in shown.stdout and "NOT crash-safe" not in words(shown.stdout)
