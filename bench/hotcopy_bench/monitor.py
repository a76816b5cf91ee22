"""What runs around every measurement: the write load, the read load, the sampler.

All three run for a whole size phase; each measurement is a time window cut out of
their records afterwards (``Monitors.impact``), so a clone and the baseline it is
compared with are measured by exactly the same instruments.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.hotcopy_bench import parsers, stats
from bench.hotcopy_bench.shard import SOURCE, Shard
from hotcopy.errors import MySQLError
from hotcopy.mysql.connection import Connection, ServerAddress, connect

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.05
#: master and target positions are sampled every Nth round (they only feed rates/lag)
SLOW_SAMPLE_EVERY = 5
REPO = Path(__file__).resolve().parents[2]


def _terminate(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """Stop a child we started: SIGINT, then SIGKILL; always reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class WriteLoad:
    """``sysbench oltp_write_only --rate`` on the master; per-second lines, timestamped."""

    def __init__(self, shard: Shard, rate: int, logs: Path) -> None:
        tables = shard.dataset.schema_tables(shard.dataset.tables[0].schema)
        self.cmd = [*shard.sysbench_base("master"), f"--mysql-db={tables[0].schema}",
                    f"--tables={len(tables)}", f"--table-size={tables[0].rows}",
                    "--threads=4", f"--rate={rate}", "--time=0", "--report-interval=1",
                    "--percentile=99", "oltp_write_only", "run"]
        self.intervals: list[tuple[float, parsers.SysbenchInterval]] = []
        self.log_path = logs / "write-load.log"
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, name="write-load", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with self.log_path.open("a") as out:
            for line in self._proc.stdout:
                out.write(line)
                interval = parsers.sysbench_interval(line)
                if interval is not None:
                    self.intervals.append((time.time(), interval))

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
        if self._thread is not None:
            self._thread.join(10)


class ReadLoad:
    """The reader process (reader.py) against the source replica."""

    def __init__(self, shard: Shard, rate: float, logs: Path) -> None:
        self.shard = shard
        self.rate = rate
        self.path = logs / "read-latency.txt"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        info = self.shard.sandbox_info
        address = info.address(SOURCE)
        tables = ",".join(f"{t.qualified}:{t.rows}" for t in self.shard.dataset.tables)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.hotcopy_bench.reader", "--host", address.host,
             "--port", str(address.port), "--option-file", str(info.admin_option_file),
             "--tables", tables, "--rate", str(self.rate), "--out", str(self.path)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)

    def between(self, start: float, end: float) -> tuple[list[float], list[float], int]:
        """(service ms, response ms, failed queries) of reads that ended in the window."""
        service: list[float] = []
        response: list[float] = []
        failed = 0
        if not self.path.exists():
            return service, response, failed
        with self.path.open() as handle:
            for line in handle:
                parts = line.split()
                if len(parts) != 4:
                    continue  # a line the reader is still writing
                when = float(parts[0])
                if when < start or when > end:
                    continue
                if parts[3] == "1":
                    service.append(float(parts[1]))
                    response.append(float(parts[2]))
                else:
                    failed += 1
        return service, response, failed


@dataclass
class Sample:
    sql_running: str | None = None
    seconds_behind: int | None = None
    source_seq: int | None = None
    master_seq: int | None = None


@dataclass
class Sampler:
    """Polls the source's SQL thread every 50 ms; positions every 250 ms."""

    shard: Shard
    samples: list[tuple[float, Sample]] = field(default_factory=list)
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._conns: dict[str, Connection] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for conn in self._conns.values():
            conn.close()

    def _conn(self, name: str) -> Connection:
        if name not in self._conns:
            info = self.shard.sandbox_info
            address: ServerAddress = info.address(name)
            self._conns[name] = connect(address, str(info.admin_option_file),
                                        connect_timeout=2, read_timeout=10)
        return self._conns[name]

    def _poll(self, rounds: int) -> Sample:
        sample = Sample()
        status = self._conn(SOURCE).one("SHOW SLAVE STATUS") or {}
        sample.sql_running = status.get("Slave_SQL_Running")
        behind = status.get("Seconds_Behind_Master")
        sample.seconds_behind = None if behind is None else int(behind)
        if rounds % SLOW_SAMPLE_EVERY == 0:
            sample.source_seq = parsers.gtid_sequence(
                str(self._conn(SOURCE).scalar("SELECT @@GLOBAL.gtid_slave_pos")))
            sample.master_seq = parsers.gtid_sequence(
                str(self._conn("master").scalar("SELECT @@GLOBAL.gtid_binlog_pos")))
        return sample

    def _run(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            started = time.time()
            try:
                self.samples.append((started, self._poll(rounds)))
            except MySQLError:
                self.errors += 1
                for conn in self._conns.values():
                    conn.close()
                self._conns.clear()
            rounds += 1
            self._stop.wait(max(0.0, SAMPLE_INTERVAL_S - (time.time() - started)))


class Monitors:
    def __init__(self, shard: Shard, logs: Path, *, write_rate: int, read_rate: float) -> None:
        self.write = WriteLoad(shard, write_rate, logs)
        self.read = ReadLoad(shard, read_rate, logs)
        self.sampler = Sampler(shard)

    def start(self) -> None:
        self.write.start()
        self.read.start()
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop()
        self.read.stop()
        self.write.stop()

    def check(self) -> None:
        if not self.write.alive():
            raise RuntimeError(f"the sysbench write load died; see {self.write.log_path}")
        if not self.read.alive():
            raise RuntimeError("the read load process died")

    def copy_split(self, start: float, end: float,
                   window: list[float] | None) -> dict[str, float | None]:
        """The source's read p99 while the data was being read off it, and the rest of
        the run's window: says whether the copy itself or something else costs readers."""
        if not window:
            return {}
        copy_start, copy_end = window
        during, _, _ = self.read.between(copy_start, copy_end)
        before, _, _ = self.read.between(start, copy_start)
        after, _, _ = self.read.between(copy_end, end)
        return {"source_read_p99_copy_ms": stats.percentile(during, 99),
                "source_read_p99_rest_ms": stats.percentile(before + after, 99)}

    def impact(self, start: float, end: float) -> dict[str, Any]:
        """The shard's health during [start, end]: what the clone cost everybody else."""
        service, response, failed = self.read.between(start, end)
        samples = [(t, s) for t, s in self.sampler.samples if start <= t <= end]
        master = [(t, s.master_seq) for t, s in self.sampler.samples if s.master_seq is not None]
        lag_trx = [s.master_seq - s.source_seq for _, s in samples
                   if s.master_seq is not None and s.source_seq is not None]
        lag_s = [s.seconds_behind for _, s in samples if s.seconds_behind is not None]
        write = stats.within(self.write.intervals, start, end)
        return {
            "window_s": end - start,
            "master_tps": stats.median(w.tps for w in write) if write else None,
            "master_commit_rate": stats.rate_between(master, start, end),
            "write_lat_p99_ms_max": max((w.latency_ms for w in write), default=None),
            "write_errors_per_s_max": max((w.errors_per_s for w in write), default=None),
            "source_lag_trx_max": max(lag_trx, default=None),
            "source_lag_s_max": max(lag_s, default=None),
            "source_sql_stopped_ms": stats.longest_stretch(
                samples, lambda s: s.sql_running is not None and s.sql_running != "Yes") * 1000,
            "source_read_p99_ms": stats.percentile(service, 99),
            "source_read_p50_ms": stats.percentile(service, 50),
            "source_read_response_p99_ms": stats.percentile(response, 99),
            "source_reads": len(service),
            "source_read_errors": failed,
        }
