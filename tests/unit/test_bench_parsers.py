"""The benchmark harness's parsers for sysbench, mariabackup and GTIDs."""

from __future__ import annotations

from datetime import datetime

import pytest
from bench.hotcopy_bench import parsers

SYSBENCH_LINE = ("[ 3s ] thds: 2 tps: 51.00 qps: 306.00 (r/w/o: 0.00/204.00/102.00) "
                 "lat (ms,99%): 45.79 err/s: 0.00 reconn/s: 0.00")


def test_sysbench_interval() -> None:
    interval = parsers.sysbench_interval(SYSBENCH_LINE + "\n")
    assert interval == parsers.SysbenchInterval(3, 51.0, 45.79, 99.0, 0.0)


@pytest.mark.parametrize("line", [
    "[ 1s ] queue length: 0, concurrency: 2", "Threads started!", "",
    "    transactions:                        71     (17.70 per sec.)"])
def test_sysbench_other_lines(line: str) -> None:
    assert parsers.sysbench_interval(line) is None


def test_mariabackup_line_with_and_without_stamp() -> None:
    line = parsers.mariabackup_line(10.5, "[00] 2026-11-24 04:41:24 Starting BACKUP STAGE END\n")
    assert line == parsers.LogLine(10.5, datetime(2026, 11, 24, 4, 41, 24),
                                   "Starting BACKUP STAGE END")
    plain = parsers.mariabackup_line(11.0, "2026-11-24  4:41:23 0 [Note] InnoDB: Using io_uring")
    assert plain.logged is None
    assert plain.message.endswith("Using io_uring")


def _log(entries: list[tuple[float, int, str]]) -> list[parsers.LogLine]:
    """(arrival, log second, message) -> parsed lines, as the harness collects them."""
    return [parsers.mariabackup_line(arrived, f"[00] 2026-11-24 04:41:{sec:02d} {message}")
            for arrived, sec, message in entries]


BACKUP_LOG = [
    (100.000, 20, "Starting BACKUP STAGE START"),
    (100.010, 20, "Slave open temp tables: 0"),
    (100.011, 20, "Slave is safe to backup"),
    (103.500, 23, "Started BACKUP STAGE BLOCK_DDL"),
    (104.000, 24, "Starting BACKUP STAGE BLOCK_COMMIT"),
    (104.002, 24, "Acquired locks for BACKUP STAGE BLOCK_COMMIT"),
    (104.300, 24, "Executing FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS..."),
    (104.310, 24, "Finishing BACKUP STAGE BLOCK_COMMIT"),
    (104.320, 25, "Starting BACKUP STAGE END"),
    (104.330, 25, "Executing BACKUP STAGE END"),
    (104.420, 25, "All tables unlocked"),
    (104.430, 25, "Starting slave SQL thread"),
    (104.900, 25, "completed OK!"),
]


def test_backup_stages_from_arrival_times() -> None:
    stages = parsers.backup_stages(_log(BACKUP_LOG))
    assert stages.block_commit_ms == pytest.approx(420.0)
    assert stages.block_commit_log_s == 1.0
    assert stages.sql_thread_stopped_ms == pytest.approx(4420.0)
    assert stages.completed


def test_backup_stages_without_unlock_line_uses_the_line_after_end() -> None:
    entries = [e for e in BACKUP_LOG if e[2] != "All tables unlocked"]
    stages = parsers.backup_stages(_log(entries))
    # "Starting slave SQL thread" is the first line printed after BACKUP STAGE END ran.
    assert stages.block_commit_ms == pytest.approx(430.0)


def test_backup_stages_of_a_failed_backup() -> None:
    stages = parsers.backup_stages(_log(BACKUP_LOG[:4]))
    assert stages.block_commit_ms is None
    assert stages.sql_thread_stopped_ms is None
    assert not stages.completed


def test_slave_info_gtid() -> None:
    text = "SET GLOBAL gtid_slave_pos = '0-1-166';\nCHANGE MASTER TO master_use_gtid = slave_pos;\n"
    assert parsers.slave_info_gtid(text) == "0-1-166"
    assert parsers.slave_info_gtid("CHANGE MASTER TO MASTER_LOG_FILE='x'") is None


@pytest.mark.parametrize(("gtid", "seq"), [
    ("0-1-166", 166), ("0-1-5,1-2-7", 12), ("", 0), (None, None), ("garbage", None)])
def test_gtid_sequence(gtid: str | None, seq: int | None) -> None:
    assert parsers.gtid_sequence(gtid) == seq


def test_dirty_pages() -> None:
    assert parsers.dirty_pages("dirty pages 2449 → 26") == (2449, 26)
    assert parsers.dirty_pages("disabled") is None
