"""A long-running query on the source that blocks the backup lock.

On MariaDB 10.11 (checked on the sandbox's own servers):
- a long write statement on a MyISAM table (``UPDATE ... SLEEP(n)``) lets BACKUP STAGE
  START and FLUSH through but blocks BLOCK_DDL; meanwhile FLUSH already holds back
  every other write to non-transactional tables, so this is the case where a waiting
  ladder stalls the source's writers;
- ``LOCK TABLES t WRITE`` in another session blocks BACKUP STAGE START itself;
- long SELECTs (MyISAM, Aria or InnoDB, in a transaction or not), open InnoDB write
  transactions and LOCK TABLES ... READ block no stage.

The ladder must give up after clone.lock_wait_timeout_s, retry a bounded number of
times, and roll back if the source stays blocked; a writer on the source measures that
no write waited much longer than one timeout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.errors import MySQLError
from hotcopy.mysql.connection import Connection, connect
from hotcopy.sandbox import SandboxInfo

from .helpers import clone_json, wait_for
from .test_faults import (
    SOURCE,
    TARGET,
    BackgroundClone,
    Shard,
    assert_cloned,
    assert_rolled_back,
    marked_shard,
    module_shard,
)

SCHEMA = "hotcopy_fault_lock"  # local to the source (sql_log_bin = 0)
TIMEOUT_S = 2
ATTEMPTS = 2
LADDER = (f"[clone]\nlock_wait_timeout_s = {TIMEOUT_S}\nlock_attempts = {ATTEMPTS}\n"
          "lock_retry_delay_s = 1.0\n"
          # The writer below keeps changing a table of the source after the snapshot.
          'verify = "catchup"\n')


def _local_session(shard: Shard, name: str, read_timeout: float = 120) -> Connection:
    conn = connect(shard.info.address(name), str(shard.info.admin_option_file),
                   read_timeout=read_timeout)
    conn.execute("SET SESSION sql_log_bin = 0")
    return conn


def _drop_schema(shard: Shard) -> None:
    for name in (SOURCE, TARGET):  # a committed clone copies it to the target
        conn = _local_session(shard, name)
        try:
            conn.execute(f"DROP DATABASE IF EXISTS {SCHEMA}")
        finally:
            conn.close()


@pytest.fixture(scope="module")
def shard(sandbox: SandboxInfo) -> Iterator[Shard]:
    for shard in module_shard(sandbox):
        conn = _local_session(shard, SOURCE)
        try:
            conn.execute(f"CREATE DATABASE IF NOT EXISTS {SCHEMA}")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.blocker (id INT PRIMARY KEY, "
                         "v INT NOT NULL) ENGINE=MyISAM")
            conn.execute(f"REPLACE INTO {SCHEMA}.blocker VALUES (1, 0)")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.held (id INT PRIMARY KEY) "
                         "ENGINE=InnoDB")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.writes (id INT AUTO_INCREMENT "
                         "PRIMARY KEY, at DOUBLE NOT NULL) ENGINE=MyISAM")
        finally:
            conn.close()
        try:
            yield shard
        finally:
            _drop_schema(shard)


@pytest.fixture
def clean(shard: Shard, tmp_path: Path) -> Iterator[tuple[Shard, Path]]:
    for marked in marked_shard(shard):
        yield marked, marked.variant(tmp_path / "ladder.toml", LADDER)


class Writer:
    """Inserts into a MyISAM table of the source in a loop; records the slowest insert."""

    def __init__(self, shard: Shard) -> None:
        self.conn = _local_session(shard, SOURCE)
        self.worst_s = 0.0
        self.writes = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.conn.execute(f"INSERT INTO {SCHEMA}.writes (at) VALUES (%s)",
                                  (time.time(),))
            except MySQLError as exc:
                self.errors.append(str(exc))
                return
            self.worst_s = max(self.worst_s, time.monotonic() - started)
            self.writes += 1
            self._stop.wait(0.01)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        self.conn.close()


class Blocker:
    """A session of the source that holds a lock the backup ladder needs."""

    def __init__(self, shard: Shard, statement: str) -> None:
        self.shard = shard
        self.conn = _local_session(shard, SOURCE, read_timeout=700)
        self.thread_id = self.conn.thread_id
        self._thread = threading.Thread(target=self._run, args=(statement,), daemon=True)
        if "SLEEP(" not in statement:
            self.conn.execute(statement)  # LOCK TABLES: held by the session from now on
            return
        self._thread.start()
        assert wait_for(self._sleeping, timeout=30, interval=0.05), "the blocker did not start"

    def _run(self, statement: str) -> None:
        with contextlib.suppress(MySQLError):  # ended by end(), with a KILL
            self.conn.execute(statement)

    def _sleeping(self) -> bool:
        row = self.shard.source.one((
            "SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = %s",
            (self.thread_id,)))
        return row is not None and row["STATE"] == "User sleep"

    def end(self) -> None:
        """KILL the session: its statement and any LOCK TABLES end with it."""
        with contextlib.suppress(MySQLError):  # already gone
            self.shard.source.execute(("KILL %s", (self.thread_id,)))
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        self.conn.close()

    def __enter__(self) -> Blocker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


BLOCKERS = {
    "long-myisam-update": (f"UPDATE {SCHEMA}.blocker SET v = v + SLEEP(600)",
                           "BACKUP STAGE BLOCK_DDL"),
    "lock-tables-write": (f"LOCK TABLES {SCHEMA}.held WRITE", "BACKUP STAGE START"),
}


@pytest.mark.parametrize("kind", sorted(BLOCKERS))
def test_source_blocked_throughout_gives_up_after_bounded_retries_and_rolls_back(
        clean: tuple[Shard, Path], kind: str) -> None:
    shard, config = clean
    statement, stage = BLOCKERS[kind]
    with Writer(shard) as writer, Blocker(shard, statement):
        proc, report = clone_json(shard.info, SOURCE, TARGET, config=config)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert report["state"] == "rolled-back"
    error = report["error"] or ""
    assert f"could not take `{stage}`" in error, error
    assert f"{ATTEMPTS} attempts" in error and f"lock_wait_timeout={TIMEOUT_S}s" in error
    lock_step = next(s for s in report["steps"] if s["name"] == "lock_source")
    assert lock_step["outcome"] == "failed"
    assert [s["name"] for s in report["steps"]][-1] == "lock_source", "no step after it ran"
    info = shard.journal().get_job(report["job"]).info
    assert info["lock_attempts"] == ATTEMPTS
    waits = info["lock_waits_ms"]
    assert len(waits) == ATTEMPTS
    assert all(w >= TIMEOUT_S * 1000 * 0.9 for w in waits), f"gave up before the timeout: {waits}"
    assert writer.errors == [] and writer.writes > 0
    print(f"\n{kind}: ladder waits {waits} ms, lock_source step {lock_step['ms']} ms, "
          f"slowest source write {writer.worst_s * 1000:.0f} ms over {writer.writes} writes")
    # The bound the ladder promises: one timeout per attempt, never the blocker's length
    # (600 s) nor the sum of the attempts.
    assert writer.worst_s < TIMEOUT_S + 1.5, f"a write on the source waited {writer.worst_s}s"
    assert_rolled_back(shard, report["job"])


def _ladder_waiting(shard: Shard) -> bool:
    row = shard.source.one((
        "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'BACKUP STAGE%%' "
        "AND STATE LIKE 'Waiting for backup lock%%'", ()))
    return row is not None


def test_lock_retried_after_a_timeout_succeeds_once_the_query_ends(
        clean: tuple[Shard, Path]) -> None:
    shard, config = clean
    statement, _ = BLOCKERS["long-myisam-update"]
    with Writer(shard) as writer:
        blocker = Blocker(shard, statement)
        try:
            run = BackgroundClone(shard, config)
            try:
                assert wait_for(lambda: _ladder_waiting(shard), timeout=60, interval=0.02)
                # The first attempt gives up after the timeout; the query ends before the next.
                assert wait_for(lambda: not _ladder_waiting(shard), timeout=TIMEOUT_S + 10,
                                interval=0.02)
                blocker.end()
                code, report, stderr = run.finish()
            finally:
                run.kill()
        finally:
            blocker.end()
    assert code == 0, stderr[-3000:]
    info = shard.journal().get_job(run.job_id).info
    assert info["lock_attempts"] == 2
    waits = info["lock_waits_ms"]
    assert waits[0] >= TIMEOUT_S * 1000 * 0.9
    lock_step = next(s for s in report["steps"] if s["name"] == "lock_source")
    assert lock_step["detail"].startswith("attempt 2; waited")
    assert f"waited more than {TIMEOUT_S}s (attempt 1 of {ATTEMPTS})" in stderr, stderr[-2000:]
    print(f"\nretry: ladder waits {waits} ms, write lock {report['source_lock_ms']:.0f} ms, "
          f"slowest source write {writer.worst_s * 1000:.0f} ms over {writer.writes} writes")
    assert writer.errors == []
    assert writer.worst_s < TIMEOUT_S + 1.5, f"a write on the source waited {writer.worst_s}s"
    assert_cloned(shard, report)
