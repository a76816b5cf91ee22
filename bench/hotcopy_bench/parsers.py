"""Parsers for what the tools under comparison print: sysbench, mariabackup, GTIDs.

mariabackup stamps its log lines with whole seconds only, so the harness also stamps
each line with the time it arrived on the pipe (mariabackup writes stderr unbuffered):
the write-blocking time comes from those arrival times, the log's own timestamps
give a coarse cross-check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_SYSBENCH_INTERVAL = re.compile(
    r"^\[\s*(?P<second>\d+)s\s*\]\s+thds:\s*(?P<threads>\d+)\s+tps:\s*(?P<tps>[\d.]+)"
    r".*?lat \(ms,(?P<pct>[\d.]+)%\):\s*(?P<lat>[\d.]+)\s+err/s:\s*(?P<err>[\d.]+)")
_MARIABACKUP_LINE = re.compile(
    r"^\[(?P<thread>\d+)\]\s+(?P<stamp>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\s+(?P<message>.*)$")
_SLAVE_INFO_GTID = re.compile(r"gtid_slave_pos\s*=\s*'(?P<gtid>[^']*)'", re.IGNORECASE)
_GTID = re.compile(r"^\s*(\d+)-(\d+)-(\d+)\s*$")


@dataclass(frozen=True)
class SysbenchInterval:
    second: int
    tps: float
    latency_ms: float
    latency_percentile: float
    errors_per_s: float


def sysbench_interval(line: str) -> SysbenchInterval | None:
    """One ``--report-interval`` line of ``sysbench ... run``; None for any other line."""
    match = _SYSBENCH_INTERVAL.match(line.strip())
    if not match:
        return None
    return SysbenchInterval(int(match["second"]), float(match["tps"]), float(match["lat"]),
                            float(match["pct"]), float(match["err"]))


@dataclass(frozen=True)
class LogLine:
    arrived: float          # time.time() when the harness read the line
    logged: datetime | None  # the tool's own timestamp (whole seconds), if it printed one
    message: str


def mariabackup_line(arrived: float, line: str) -> LogLine:
    match = _MARIABACKUP_LINE.match(line.rstrip("\n"))
    if not match:
        return LogLine(arrived, None, line.strip())
    stamp = datetime.strptime(match["stamp"], "%Y-%m-%d %H:%M:%S")
    return LogLine(arrived, stamp, match["message"].strip())


@dataclass(frozen=True)
class BackupStages:
    """What mariabackup's log says about the source's write block and SQL thread."""

    block_commit_ms: float | None      # from arrival times, millisecond resolution
    block_commit_log_s: float | None   # from the log's own stamps, whole seconds
    sql_thread_stopped_ms: float | None
    completed: bool


def _first(lines: list[LogLine], start: int, needle: str) -> int | None:
    for index in range(start, len(lines)):
        if needle in lines[index].message:
            return index
    return None


def _unlocked(lines: list[LogLine], begin: int) -> int | None:
    """The line that proves BACKUP STAGE END returned: "All tables unlocked", or else
    whatever mariabackup printed right after executing it."""
    unlocked = _first(lines, begin, "All tables unlocked")
    if unlocked is not None:
        return unlocked
    executing = _first(lines, begin, "Executing BACKUP STAGE END")
    if executing is None:
        return None
    return min(executing + 1, len(lines) - 1)


def backup_stages(lines: list[LogLine]) -> BackupStages:
    """Write-blocking time: from asking for BLOCK_COMMIT until BACKUP STAGE END returned.

    The SQL thread (--safe-slave-backup) is stopped just before mariabackup logs the
    open temporary tables of the replica and restarted at "Starting slave SQL thread";
    the harness also polls SHOW SLAVE STATUS, which is the figure it reports.
    """
    begin = _first(lines, 0, "Starting BACKUP STAGE BLOCK_COMMIT")
    block_ms = block_log = None
    done = _unlocked(lines, begin) if begin is not None else None
    if begin is not None and done is not None:
        block_ms = (lines[done].arrived - lines[begin].arrived) * 1000
        first, last = lines[begin].logged, lines[done].logged
        if first is not None and last is not None:
            block_log = (last - first).total_seconds()
    stopped = _first(lines, 0, "Slave open temp tables")
    restarted = _first(lines, stopped or 0, "Starting slave SQL thread") \
        if stopped is not None else None
    sql_ms = None
    if stopped is not None and restarted is not None:
        sql_ms = (lines[restarted].arrived - lines[stopped].arrived) * 1000
    completed = any("completed OK" in line.message for line in lines[-5:])
    return BackupStages(block_ms, block_log, sql_ms, completed)


def slave_info_gtid(text: str) -> str | None:
    """The GTID from xtrabackup_slave_info (``SET GLOBAL gtid_slave_pos = '0-1-166';``)."""
    match = _SLAVE_INFO_GTID.search(text)
    return match["gtid"] if match else None


def gtid_sequence(gtid: str | None) -> int | None:
    """Sum of the sequence numbers of a MariaDB GTID list ('0-1-5,1-2-7' -> 12).

    With one writer per domain this counts transactions, so the difference between a
    master's and a replica's position is the replica's lag in transactions.
    """
    if gtid is None:
        return None
    if not gtid.strip():
        return 0
    total = 0
    for part in gtid.split(","):
        match = _GTID.match(part)
        if not match:
            return None
        total += int(match.group(3))
    return total


_DIRTY = re.compile(r"dirty pages (\d+)\D+(\d+)")


def dirty_pages(detail: str) -> tuple[int, int] | None:
    """hotcopy's preflush step detail ('dirty pages 2449 → 26') -> (before, after)."""
    match = _DIRTY.search(detail or "")
    return (int(match.group(1)), int(match.group(2))) if match else None
