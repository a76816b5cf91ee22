"""The hot-backup fallback's pure parts: versions, the pipeline decision, what the tool
writes (positions, its log), the command lines, and the SQL-thread arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from hotcopy.errors import HotcopyError
from hotcopy.hosts import LocalExecutor
from hotcopy.mysql import backup_tool
from hotcopy.mysql.backup_tool import BackupTool, Probe, stopped_ms
from hotcopy.workflows.backup_steps import _Output

from ..real_parts import missing_tools, needs

MARIABACKUP = "mariabackup based on MariaDB server 10.11.19-MariaDB debian-linux-gnu (x86_64)"
XTRABACKUP = ("xtrabackup version 8.0.35-30 based on MySQL server 8.0.35 Linux (x86_64) "
              "(revision id: 6beb4b49)")


def tool(version: str, path: str = "/usr/bin/mariabackup") -> BackupTool:
    parsed = backup_tool.parse_version(version)
    return BackupTool(path, "/usr/bin/mbstream", version, parsed[1] if parsed else None)


def probe(server: str, version: str | None) -> Probe:
    if version is None:
        return Probe(server, "local", None, f"mariadb-backup / mariabackup is not installed on "
                                            f"{server} (local)")
    return Probe(server, "local", tool(version))


# -- versions and the decision ------------------------------------------------------------


def test_versions_are_read_from_both_tools() -> None:
    assert backup_tool.parse_version(MARIABACKUP) == ("MariaDB", (10, 11, 19))
    assert backup_tool.parse_version(XTRABACKUP) == ("MySQL", (8, 0, 35))
    assert backup_tool.parse_version("mariabackup Ver 2.4.5") is None
    assert backup_tool.server_version("10.11.19-MariaDB-0+deb12u1-log") == (10, 11, 19)


def test_tools_of_the_servers_series_on_both_hosts_fit() -> None:
    assert backup_tool.compatibility_problems(
        probe("replica1", MARIABACKUP), probe("replica2", MARIABACKUP), "mariadb",
        "10.11.6-MariaDB-log") == []


def test_a_missing_tool_is_named_with_its_host() -> None:
    problems = backup_tool.compatibility_problems(
        probe("replica1", MARIABACKUP), probe("replica2", None), "mariadb", "10.11.19-MariaDB")
    assert problems == ["mariadb-backup / mariabackup is not installed on replica2 (local)"]


def test_a_tool_of_another_series_is_refused() -> None:
    older = MARIABACKUP.replace("10.11.19", "10.6.16")
    problems = backup_tool.compatibility_problems(
        probe("replica1", older), probe("replica2", older), "mariadb", "10.11.19-MariaDB")
    assert len(problems) == 1
    assert "built for 10.6.16 but the server runs 10.11.19" in problems[0]


def test_the_target_must_not_prepare_with_an_older_tool() -> None:
    older = MARIABACKUP.replace("10.11.19", "10.11.2")
    problems = backup_tool.compatibility_problems(
        probe("replica1", MARIABACKUP), probe("replica2", older), "mariadb", "10.11.19-MariaDB")
    assert len(problems) == 1
    assert "replica2" in problems[0] and "not older" in problems[0]


def test_xtrabackup_older_than_the_mysql_server_is_refused() -> None:
    problems = backup_tool.compatibility_problems(
        probe("a", XTRABACKUP), probe("b", XTRABACKUP), "mysql", "8.0.36")
    assert len(problems) == 1 and "older than the server (8.0.36)" in problems[0]
    assert backup_tool.compatibility_problems(
        probe("a", XTRABACKUP), probe("b", XTRABACKUP), "mysql", "8.0.34") == []


def test_a_tool_whose_version_cannot_be_read_is_not_trusted() -> None:
    problems = backup_tool.compatibility_problems(
        probe("a", "something else"), probe("b", MARIABACKUP), "mariadb", "10.11.19")
    assert len(problems) == 1 and "cannot tell which server version" in problems[0]


@pytest.mark.parametrize(("snapshot", "backup", "expected"), [
    (None, [], "snapshot"),
    (None, ["mariabackup is not installed on b"], "snapshot"),
    ("cannot be snapshotted", [], "backup"),
    ("cannot be snapshotted", ["mariabackup is not installed on b"], None),
])
def test_pipeline_decision(snapshot: str | None, backup: list[str], expected: str | None) -> None:
    choice = backup_tool.choose_pipeline(snapshot, backup)
    assert choice.pipeline == expected
    if expected is None:
        assert choice.problems == (snapshot, *backup)


@needs(missing_tools(("mariabackup", "mbstream"), "the probe test"))
def test_probe_finds_the_installed_mariabackup() -> None:
    found = backup_tool.probe(LocalExecutor(), "here", "mariadb")
    assert found.tool is not None, found.missing
    assert found.tool.extractor.endswith("mbstream")
    assert found.tool.based_on is not None and found.tool.based_on >= (10, 0, 0)
    assert BackupTool.from_dict(found.tool.as_dict()) == found.tool


# -- what the backup records --------------------------------------------------------------


MARIADB_GTID = ("SET GLOBAL gtid_slave_pos = '0-1-11';\n"
                "CHANGE MASTER TO master_use_gtid = slave_pos;\n")
MARIADB_FILE = "CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000007', MASTER_LOG_POS=4242;\n"
MYSQL_GTID = ("SET GLOBAL gtid_purged='3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,\n"
              "4f22ab58-71ca-11e1-9e33-c80aa9429562:1-9';\n"
              "CHANGE REPLICATION SOURCE TO SOURCE_AUTO_POSITION=1;\n")


def coords(slave: str | None, binlog: str | None, flavor: str = "mariadb") -> dict[str, Any]:
    return backup_tool.coordinates(
        slave, binlog, flavor=flavor, gtid_variable="gtid_slave_pos", master_host="10.0.0.1",
        master_port=3306, master_user="repl").as_dict()


def test_mariadb_gtid_position_comes_from_slave_info() -> None:
    got = coords(MARIADB_GTID, "mysql-bin.000001\t38659\t0-1-11\n")
    assert got["gtid"] == "0-1-11" and got["master_log_file"] == ""
    assert (got["master_host"], got["master_port"], got["master_user"]) == \
        ("10.0.0.1", 3306, "repl")
    assert got["extra"]["source_binlog"] == {"log_file": "mysql-bin.000001", "log_pos": 38659,
                                             "gtid": "0-1-11"}


def test_mariadb_without_gtid_uses_the_master_file_and_offset() -> None:
    got = coords(MARIADB_FILE, "mysql-bin.000001\t38659\t0-2-99\n")
    assert (got["gtid"], got["master_log_file"], got["master_log_pos"]) == \
        ("", "mysql-bin.000007", 4242)


def test_mysql_gtid_sets_are_unwrapped_and_binlog_info_stands_in() -> None:
    got = coords(MYSQL_GTID, None, "mysql")
    assert got["gtid"] == ("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,"
                           "4f22ab58-71ca-11e1-9e33-c80aa9429562:1-9")
    fallback = coords("CHANGE MASTER TO MASTER_LOG_FILE='b.000002', MASTER_LOG_POS=157;",
                      "binlog.000003\t157\tuuid:1-5,\nuuid2:1-3\n", "mysql")
    assert fallback["gtid"] == "uuid:1-5,uuid2:1-3"
    assert fallback["master_log_file"] == "b.000002"


def test_a_backup_without_any_position_is_refused() -> None:
    with pytest.raises(HotcopyError, match="no replication position"):
        coords(None, "mysql-bin.000001\t4\t\n")


def test_named_channels_are_refused() -> None:
    with pytest.raises(HotcopyError, match="channel"):
        backup_tool.parse_slave_info("SET GLOBAL gtid_slave_pos = '0-1-5';\n"
                                     "CHANGE MASTER 'east' TO master_use_gtid = slave_pos;\n")


def test_binlog_info_that_is_not_one_is_ignored() -> None:
    assert backup_tool.parse_binlog_info("") is None
    assert backup_tool.parse_binlog_info("garbage") is None


# -- the write lock, from the tool's log --------------------------------------------------


LOG = [
    (10.000, "[00] 2026-11-24 05:20:33 Finished BACKUP STAGE BLOCK_DDL"),
    (10.010, "[00] 2026-11-24 05:20:33 Starting BACKUP STAGE BLOCK_COMMIT"),
    (10.011, "[00] 2026-11-24 05:20:33 Acquired locks for BACKUP STAGE BLOCK_COMMIT"),
    (10.150, "[00] 2026-11-24 05:20:33 Executing BACKUP STAGE END"),
    (10.238, "[00] 2026-11-24 05:20:33 All tables unlocked"),
    (10.240, "[00] 2026-11-24 05:20:33 Starting slave SQL thread"),
]


def test_write_lock_runs_from_block_commit_until_unlocked() -> None:
    span = backup_tool.write_lock_span(LOG)
    assert span is not None
    assert span.ms == pytest.approx(228.0)
    assert "BLOCK_COMMIT" in span.start_line and "unlocked" in span.end_line


def test_write_lock_unknown_without_both_ends() -> None:
    assert backup_tool.write_lock_span(LOG[:3]) is None
    assert backup_tool.write_lock_span(LOG[3:]) is None


def test_xtrabackup_ftwrl_is_read_too() -> None:
    span = backup_tool.write_lock_span([(1.0, "Executing FLUSH TABLES WITH READ LOCK..."),
                                        (1.5, "Executing UNLOCK TABLES"),
                                        (1.6, "All tables unlocked")])
    assert span is not None and span.ms == pytest.approx(500.0)


def test_sender_output_is_sorted_into_log_bytes_and_answer() -> None:
    seen: list[int] = []
    output = _Output(seen.append)
    for line in ["HOTCOPY-LOG 1700000000.250000 [00] Starting BACKUP STAGE BLOCK_COMMIT",
                 "HOTCOPY-LOG 1700000000,500000 [00] All tables unlocked",
                 "4096", "8192", "HOTCOPY-LOG  [00] completed OK!", "HOTCOPY-OK"]:
        output.on_line(line)
    assert seen == [4096, 8192] and output.bytes == 8192
    assert output.received and output.completed
    assert output.log[0] == (1700000000.25, "[00] Starting BACKUP STAGE BLOCK_COMMIT")
    span = backup_tool.write_lock_span(output.log)
    assert span is not None and span.ms == pytest.approx(250.0)


# -- command lines and the credentials ----------------------------------------------------


def test_option_file_includes_the_servers_settings_before_the_account() -> None:
    text = backup_tool.option_file("/etc/mysql/my.cnf", b"[client]\nuser=a\npassword=s3cret")
    lines = text.decode().splitlines()
    assert lines[1] == "!include /etc/mysql/my.cnf"
    assert lines[2:] == ["[client]", "user=a", "password=s3cret"]
    with pytest.raises(HotcopyError):
        backup_tool.option_file("/etc/my.cnf\n[mysqld]", b"")


def test_backup_command_reads_its_account_from_the_file_only() -> None:
    argv = backup_tool.backup_command(tool(MARIABACKUP), defaults_file="/run/hotcopy/j/a.cnf",
                                      host="10.0.0.2", port=3306, target_dir="/run/x/t",
                                      tmpdir="/run/x/w", parallel=0)
    assert argv[1] == "--defaults-file=/run/hotcopy/j/a.cnf"  # must come first to count
    assert {"--backup", "--stream=xbstream", "--safe-slave-backup", "--slave-info",
            "--parallel=1"} <= set(argv)
    assert not any("password" in arg for arg in argv)
    prepare = backup_tool.prepare_command(tool(MARIABACKUP), "/data.new")
    assert prepare[1:] == ["--defaults-file=/data.new/backup-my.cnf", "--prepare",
                           "--target-dir=/data.new"]


# -- how long the SQL thread stood still --------------------------------------------------


def test_stopped_time_counts_whole_and_half_intervals() -> None:
    samples = [(0.0, True), (1.0, False), (2.0, False), (3.0, True), (4.0, True)]
    # 0-1 half (it stopped in between), 1-2 whole, 2-3 half: 2 s.
    assert stopped_ms(samples) == pytest.approx(2000.0)
    assert stopped_ms([(0.0, True), (5.0, True)]) == 0
    assert stopped_ms([(0.0, True)]) is None
