"""Review finding 8: verify restarts the source's replication as soon as its own checksums
are taken, and the checksum phase is bounded (clone.verify_timeout_s).

Deterministic: the clone is SIGKILLed after catch_up, a table on the new target is
write-locked, and ``hotcopy resume`` runs verify. The target's CHECKSUM TABLE then waits
on that lock for as long as we hold it: while it waits, the source must replicate; and
the phase must end (rolled back) when the bound is reached.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy import config as config_module
from hotcopy.errors import MySQLError
from hotcopy.runtime import Runtime
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo

from .helpers import clone_json, runtime, sql_thread_running, wait_for, wait_replicating

SOURCE, TARGET = "replica1", "replica2"
#: Long enough for the source's own sums over whatever earlier tests left in the shared
#: sandbox, on a loaded machine: the bound must fire on the locked table, not before.
LIMIT_S = 40
#: Sorts first, so the target's sums reach the locked table at once.
SCHEMA = "a_review_verify"


@pytest.fixture
def rt(sandbox: SandboxInfo) -> Iterator[Runtime]:
    runtime_ = runtime(sandbox)
    master = runtime_.server(sandbox.master)
    master.execute((f"CREATE DATABASE IF NOT EXISTS {SCHEMA}", ()))
    master.execute((f"CREATE TABLE IF NOT EXISTS {SCHEMA}.t (id INT PRIMARY KEY)", ()))
    master.execute((f"REPLACE INTO {SCHEMA}.t VALUES (1), (2), (3)", ()))
    for name in (SOURCE, TARGET):
        wait_replicating(runtime_.server(name), master)
    yield runtime_
    master.execute((f"DROP DATABASE IF EXISTS {SCHEMA}", ()))
    runtime_.close()


def checksum_waiting(rt: Runtime) -> bool:
    rows = rt.server(TARGET).query(("SELECT INFO FROM information_schema.PROCESSLIST "
                                    "WHERE INFO LIKE 'CHECKSUM TABLE%%'", ()))
    return bool(rows)


def test_source_replicates_while_the_target_checksums_and_the_phase_is_bounded(
        sandbox: SandboxInfo, rt: Runtime, tmp_path: Path) -> None:
    config = tmp_path / "hotcopy.toml"
    config.write_text(sandbox.config_path.read_text()
                      + f"\n[clone]\nverify_timeout_s = {LIMIT_S}\n")
    proc, _ = clone_json(sandbox, SOURCE, TARGET, config=config,
                         env={"HOTCOPY_FAULT": "kill-after:catch_up"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    with SqliteJournal(config_module.load(config).journal_path()) as journal:
        job_id = journal.list_jobs(limit=1)[0].id
    locker = rt.server(TARGET).new_session()
    locker.execute(f"LOCK TABLES {SCHEMA}.t WRITE")
    try:
        started = time.monotonic()
        resume = subprocess.Popen([sys.executable, "-m", "hotcopy", "resume", "--config",
                                   str(config), job_id], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: checksum_waiting(rt) or resume.poll() is not None,
                            timeout=120), "the target's checksums never started"
            assert resume.poll() is None, "resume ended before the target's checksums waited"
            # Source and target are summed at the same time: the source replicates again
            # once its own sums are in, while the target's still wait on the lock. Before
            # the fix the source stayed stopped until both were in, i.e. until the bound.
            assert wait_for(lambda: sql_thread_running(rt.server(SOURCE))
                            or resume.poll() is not None, timeout=LIMIT_S), \
                "the source never replicated again during verify"
            assert resume.poll() is None and checksum_waiting(rt), \
                "the source was paused for as long as the target's sums waited"
            out, err = resume.communicate(timeout=LIMIT_S + 120)
        finally:
            if resume.poll() is None:
                resume.kill()
                resume.wait(timeout=30)
        # Before the fix the checksum waited for the lock without end: no exit here.
        assert resume.returncode == 1, out + err
        assert "verify_timeout_s" in " ".join(err.split()), err
        assert time.monotonic() - started < LIMIT_S + 120
    finally:
        with contextlib.suppress(MySQLError):  # the rollback stopped that server
            locker.execute("UNLOCK TABLES")
        locker.close()
    rt.server(TARGET).close()
    assert wait_for(lambda: rt.mysqld(TARGET).is_running(), timeout=60)
    wait_replicating(rt.server(SOURCE), rt.server(sandbox.master))
    wait_replicating(rt.server(TARGET), rt.server(sandbox.master))
