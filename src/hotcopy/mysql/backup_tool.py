"""mariabackup / xtrabackup: finding them, their command lines, and reading what they leave.

Where the source's datadir sits on no filesystem that can be snapshotted, hotcopy falls
back to the vendor's hot backup: it copies a running server page by page and keeps the
redo log written meanwhile, so that ``--prepare`` can make the copy consistent as of the
moment the backup took its short commit lock. Such a copy is only as good as the tool's
fit to the server: mariabackup must come from the server's own release series, and the
target's copy (which runs ``--prepare``) from the series of the source's. Everything
here only reads, the source's SQL thread included, which the tool stops for the whole
copy (SqlThreadWatch measures how long); workflows/backup_steps.py runs the commands.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hotcopy import remote
from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor
from hotcopy.mysql.connection import Connection
from hotcopy.mysql.flavor import Coordinates
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolNames:
    backup: tuple[str, ...]   # in order of preference
    extract: str
    package: str


TOOLS: dict[str, ToolNames] = {
    "mariadb": ToolNames(("mariadb-backup", "mariabackup"), "mbstream",
                         "mariadb-backup (the MariaDB package of the server's version)"),
    "mysql": ToolNames(("xtrabackup",), "xbstream",
                       "percona-xtrabackup of the server's series (2.4 for 5.7, 8.0 for "
                       "8.0, 8.4 for 8.4)"),
}

# The files the tools add to a backup beside the datadir's own (MariaDB 11 renamed the
# xtrabackup_* ones); none of them belongs in a datadir.
HELPER_PATTERNS = ("xtrabackup_*", "mariadb_backup_*", "backup-my.cnf")
SLAVE_INFO_FILES = ("xtrabackup_slave_info", "mariadb_backup_slave_info")
BINLOG_INFO_FILES = ("xtrabackup_binlog_info", "mariadb_backup_binlog_info")

_BASED_ON = re.compile(r"based on (MariaDB|MySQL) server (\d+)\.(\d+)\.(\d+)", re.IGNORECASE)
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class BackupTool:
    """One host's backup tool, as found there (journaled in the preflight's facts)."""

    path: str
    extractor: str
    version: str                       # the line of ``--version`` that names the build
    based_on: tuple[int, int, int] | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupTool:
        based_on = data.get("based_on")
        return cls(data["path"], data["extractor"], data["version"],
                   (int(based_on[0]), int(based_on[1]), int(based_on[2])) if based_on else None)


@dataclass(frozen=True)
class Probe:
    """What looking for the tool on one host found: the tool, or why there is none."""

    server: str
    host: str
    tool: BackupTool | None
    missing: str = ""


def parse_version(text: str) -> tuple[str, tuple[int, int, int]] | None:
    """("MariaDB" | "MySQL", server version the tool was built from) from ``--version``."""
    match = _BASED_ON.search(text)
    if not match:
        return None
    return match.group(1), (int(match.group(2)), int(match.group(3)), int(match.group(4)))


def server_version(version_string: str) -> tuple[int, int, int] | None:
    match = _VERSION.search(version_string)
    return None if not match else (int(match.group(1)), int(match.group(2)),
                                   int(match.group(3)))


def _which(executor: Executor, names: Sequence[str]) -> str | None:
    result = executor.run(remote.argv("first_on_path.sh", *names), check=False, timeout=30)
    path = result.stdout.strip()
    return path if result.ok and path else None


def probe(executor: Executor, server: str, flavor: str) -> Probe:
    """Look for the backup tool and its stream extractor on one host (read-only)."""
    names = TOOLS[flavor]
    path = _which(executor, names.backup)
    if path is None:
        return Probe(server, executor.name, None,
                     f"{' / '.join(names.backup)} is not installed on {server} "
                     f"({executor.name})")
    extractor = _which(executor, [names.extract])
    if extractor is None:
        return Probe(server, executor.name, None,
                     f"{names.extract} (which comes with {path}) is not installed on {server} "
                     f"({executor.name})")
    result = executor.run([path, "--version"], check=False, timeout=30)
    text = f"{result.stdout}\n{result.stderr}"
    line = next((ln.strip() for ln in text.splitlines() if _BASED_ON.search(ln)), "")
    parsed = parse_version(line)
    return Probe(server, executor.name,
                 BackupTool(path, extractor, line or text.strip()[:200],
                            parsed[1] if parsed else None))


def compatibility_problems(source: Probe, target: Probe, flavor: str,
                           version_string: str) -> list[str]:
    """Why these tools cannot back up this server and prepare the copy; [] when they can.

    The backup tool must be built from the server's release series (a mariabackup of
    another series misreads the redo log format; xtrabackup refuses a newer server),
    and the target's must be of the same series as the source's and not older, since
    it prepares what the source's wrote.
    """
    problems = [probe.missing for probe in (source, target) if probe.tool is None]
    if problems or source.tool is None or target.tool is None:
        return problems
    server = server_version(version_string)
    for probe in (source, target):
        assert probe.tool is not None
        if probe.tool.based_on is None:
            problems.append(f"cannot tell which server version {probe.tool.path} on "
                            f"{probe.server} was built for (`--version` said: "
                            f"{probe.tool.version[:120]!r})")
    if problems or server is None:
        return problems if server is not None else \
            [*problems, f"cannot read the server version from {version_string!r}"]
    src, tgt = source.tool.based_on, target.tool.based_on
    assert src is not None and tgt is not None
    if src[:2] != server[:2]:
        problems.append(f"{source.tool.path} on {source.server} is built for "
                        f"{_dotted(src)} but the server runs {_dotted(server)}: the backup "
                        "tool must come from the server's own release series")
    elif flavor == "mysql" and src < server:
        problems.append(f"{source.tool.path} on {source.server} ({_dotted(src)}) is older "
                        f"than the server ({_dotted(server)}) and cannot back it up")
    if tgt[:2] != src[:2] or tgt < src:
        problems.append(f"{target.tool.path} on {target.server} is built for {_dotted(tgt)}, "
                        f"the source's for {_dotted(src)}: the target prepares the backup, "
                        "so its tool must be of the same series and not older")
    return problems


def check_hosts(executors: dict[str, Executor], flavor: str, version_string: str, *,
                paced: bool) -> tuple[tuple[Probe, Probe], list[str]]:
    """The tools of source and target (in that order) and all that keeps the backup
    from running between them: the tool itself, and the commands the stream needs."""
    (source, src_exec), (target, tgt_exec) = executors.items()
    probes = (probe(src_exec, source, flavor), probe(tgt_exec, target, flavor))
    problems = compatibility_problems(*probes, flavor, version_string)
    needs = {source: (src_exec, ["bash", "socat", "find", *(["pv"] if paced else [])]),
             target: (tgt_exec, ["bash", "socat", "setsid", "ss"])}
    for server, (executor, commands) in needs.items():
        problems += [f"`{name}` is not installed on {server} ({executor.name})"
                     for name in commands if _which(executor, [name]) is None]
    return probes, problems


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


@dataclass(frozen=True)
class PipelineChoice:
    pipeline: str | None          # "snapshot", "backup", or None: refused
    problems: tuple[str, ...] = ()


def choose_pipeline(snapshot_problem: str | None, backup_problems: Sequence[str]) -> PipelineChoice:
    """A snapshot when the datadir allows one (milliseconds of lock, no copy of a live
    server); else the hot backup when both hosts have a fitting tool; else nothing."""
    if snapshot_problem is None:
        return PipelineChoice("snapshot")
    if not backup_problems:
        return PipelineChoice("backup")
    return PipelineChoice(None, (snapshot_problem, *backup_problems))


# -- command lines ------------------------------------------------------------------------


def option_file(server_defaults_file: str, admin_option_file: bytes) -> bytes:
    """The per-job option file: the server's own settings, then the admin account.

    The tool must see what mysqld sees (datadir, InnoDB layout), which is the server's
    defaults file. It is included rather than passed, because a ``--defaults-file``
    makes the tool ignore any ``--defaults-extra-file``; the account follows it, so its
    [client] settings win.
    """
    if "\n" in server_defaults_file:
        raise HotcopyError(f"defaults file name {server_defaults_file!r} has a line break")
    return (f"# hotcopy: removed when the backup ends\n!include {server_defaults_file}\n"
            .encode() + admin_option_file.rstrip(b"\n") + b"\n")


def backup_command(tool: BackupTool, *, defaults_file: str, host: str, port: int,
                   target_dir: str, tmpdir: str, parallel: int) -> list[str]:
    """The hot backup of a replica as one xbstream on stdout; no secret in here.

    ``--safe-slave-backup`` stops the SQL thread while no replicated temporary table is
    open (the tool restarts it at the end), ``--slave-info`` records the master position
    under the commit lock; the work files go to the job's own directories.
    """
    return [tool.path, f"--defaults-file={defaults_file}", "--backup", "--stream=xbstream",
            "--safe-slave-backup", "--slave-info", f"--host={host}", f"--port={port}",
            f"--target-dir={target_dir}", f"--tmpdir={tmpdir}", f"--parallel={max(1, parallel)}"]


def prepare_command(tool: BackupTool, backup_dir: str) -> list[str]:
    """Apply the copied redo log; the backup's own settings, not the host's, describe it."""
    return [tool.path, f"--defaults-file={backup_dir}/backup-my.cnf", "--prepare",
            f"--target-dir={backup_dir}"]


# -- what the backup tells ---------------------------------------------------------------

_GTID = re.compile(r"gtid_(?:slave_pos|purged)\s*=\s*'([^']*)'", re.IGNORECASE)
_LOG_FILE = re.compile(r"(?:MASTER|SOURCE)_LOG_FILE\s*=\s*'([^']*)'", re.IGNORECASE)
_LOG_POS = re.compile(r"(?:MASTER|SOURCE)_LOG_POS\s*=\s*(\d+)", re.IGNORECASE)
_CHANNEL = re.compile(r"CHANGE MASTER\s+'([^']+)'\s+TO|FOR CHANNEL\s+'([^']+)'", re.IGNORECASE)


@dataclass(frozen=True)
class SlaveInfo:
    gtid: str
    master_log_file: str
    master_log_pos: int


def parse_slave_info(text: str) -> SlaveInfo:
    """The master position the tool wrote under its commit lock (``--slave-info``)."""
    channels = {a or b for a, b in _CHANNEL.findall(text)}
    if channels:
        raise HotcopyError(f"the backup names replication channel(s) {', '.join(channels)}; "
                           "hotcopy handles one unnamed channel per server")
    gtid = _GTID.search(text)
    log_file, log_pos = _LOG_FILE.search(text), _LOG_POS.search(text)
    return SlaveInfo(_compact(gtid.group(1)) if gtid else "",
                     log_file.group(1) if log_file else "",
                     int(log_pos.group(1)) if log_pos else 0)


@dataclass(frozen=True)
class BinlogInfo:
    """The source's own binlog position (not the master's) and its GTID state."""

    log_file: str
    log_pos: int
    gtid: str


def parse_binlog_info(text: str) -> BinlogInfo | None:
    fields = text.strip().split("\t", 2)
    if len(fields) < 2 or not fields[1].strip().isdigit():
        return None
    return BinlogInfo(fields[0].strip(), int(fields[1]),
                      _compact(fields[2]) if len(fields) > 2 else "")


def _compact(gtid: str) -> str:
    """GTID sets come wrapped over lines (MySQL); the position is the same without."""
    return re.sub(r"\s+", "", gtid)


def coordinates(slave_info: str | None, binlog_info: str | None, *, flavor: str,
                gtid_variable: str, master_host: str, master_port: int,
                master_user: str) -> Coordinates:
    """The position the prepared copy stands at, as the snapshot pipeline records it.

    The master position comes from ``xtrabackup_slave_info``. Only where that names no
    GTID does a MySQL source's own ``gtid_executed`` (``xtrabackup_binlog_info``) stand
    in: on MySQL it is the set a replica resumes from. A MariaDB source's binlog GTID is
    not its slave position, so there the file and offset are used instead.
    """
    slave = parse_slave_info(slave_info) if slave_info else SlaveInfo("", "", 0)
    binlog = parse_binlog_info(binlog_info) if binlog_info else None
    gtid = slave.gtid
    if not gtid and flavor == "mysql" and binlog is not None:
        gtid = binlog.gtid
    if not gtid and not slave.master_log_file:
        raise HotcopyError("the backup holds no replication position (no master position "
                           "in xtrabackup_slave_info): the copy cannot be pointed at the master",
                           hint="the source must be a running replica; run the clone again")
    extra: dict[str, Any] = {"taken_by": "backup"}
    if binlog is not None:
        extra["source_binlog"] = asdict(binlog)
    return Coordinates(master_host=master_host, master_port=master_port,
                       master_user=master_user, master_log_file=slave.master_log_file,
                       master_log_pos=slave.master_log_pos, gtid=gtid,
                       gtid_variable=gtid_variable, flavor=flavor, extra=extra)


# The tools' own words for where the write lock starts and where it is released:
# MariaDB's BACKUP STAGE ladder, Percona XtraBackup's FTWRL or binlog lock.
_LOCK_STARTS = ("Starting BACKUP STAGE BLOCK_COMMIT", "Executing FLUSH TABLES WITH READ LOCK",
                "Executing LOCK BINLOG FOR BACKUP")
_LOCK_ENDS = ("All tables unlocked", "Executing UNLOCK BINLOG", "Executing UNLOCK TABLES")


@dataclass(frozen=True)
class LockSpan:
    started: float
    ended: float
    start_line: str
    end_line: str

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


def write_lock_span(lines: Sequence[tuple[float, str]]) -> LockSpan | None:
    """From the tool's log, stamped on arrival (its own stamps have whole seconds only):
    asking for the commit lock until the lock is gone. None when the log shows none."""
    start = next((i for i, (_, text) in enumerate(lines)
                  if any(marker in text for marker in _LOCK_STARTS)), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines))
                if any(marker in lines[i][1] for marker in _LOCK_ENDS)), None)
    if end is None:
        return None
    return LockSpan(lines[start][0], lines[end][0], lines[start][1].strip(),
                    lines[end][1].strip())


# -- what the backup costs the source's replication ---------------------------------------


def stopped_ms(samples: Sequence[tuple[float, bool]]) -> float | None:
    """Milliseconds the SQL thread was not running, from (time, running) polls.

    A stretch between two polls counts in full when both saw it stopped, half when only
    one did (the change fell somewhere in between): the error is at most one interval
    per start or stop.
    """
    if len(samples) < 2:
        return None
    total = 0.0
    for (then, was), (now, running) in itertools.pairwise(samples):
        stopped = (not was) + (not running)
        total += (now - then) * stopped / 2
    return total * 1000


class SqlThreadWatch:
    """Polls the source's SQL thread from a thread of its own, on a session of its own."""

    def __init__(self, server: Server, *, interval_s: float = 0.05) -> None:
        self.server = server
        self.samples: list[tuple[float, bool]] = []
        self.failed_polls = 0
        self._interval_s = interval_s
        self._conn: Connection | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sql-thread-watch",
                                        daemon=True)

    def _poll(self) -> bool:
        assert self._conn is not None
        flavor = self.server.flavor
        sql, args = flavor.replica_status()
        rows = self._conn.query(sql, args)
        running = bool(rows) and flavor.parse_replica_status(rows[0]).sql_running == "Yes"
        self.samples.append((time.monotonic(), running))
        return running

    def _watch(self) -> None:
        while not self._done.wait(self._interval_s):
            try:
                self._poll()
            except HotcopyError:
                self.failed_polls += 1
                log.debug("SQL thread poll failed", exc_info=True)

    def __enter__(self) -> SqlThreadWatch:
        self._conn = self.server.new_session(read_timeout=10)
        self._poll()
        self._thread.start()
        return self

    def settle(self, timeout_s: float = 10) -> bool:
        """Stop watching once the thread runs again (bounded); True if it does."""
        self._done.set()
        self._thread.join(timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self._poll():
                    return True
            except HotcopyError:
                self.failed_polls += 1
            time.sleep(self._interval_s)
        return False

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)
        if self._conn is not None:
            self._conn.close()

    def stopped_ms(self) -> float | None:
        return stopped_ms(self.samples)
