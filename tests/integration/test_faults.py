"""A clone killed with SIGKILL at every step boundary, then rolled back or resumed.

Each test kills a real ``hotcopy clone`` (HOTCOPY_FAULT=kill-before:STEP|kill-after:STEP)
and finishes the job from a fresh process, the way an operator would after the
controller's machine died: ``hotcopy rollback JOB`` must give every host back exactly
what it had, and ``hotcopy resume JOB`` must finish the clone wherever the snapshot
still exists. The helpers here are shared by the other test_faults_* modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from hotcopy.mysql.checksum import differing_tables, list_tables, table_checksums
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime
from hotcopy.saga import Job, SqliteJournal
from hotcopy.sandbox import SandboxInfo
from hotcopy.workflows.clone import STEPS
from hotcopy.workflows.report import job_report

from ..fault_points import kill_points
from .conftest import control
from .helpers import (
    clone_json,
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    no_backup_lock,
    runtime,
    sql_thread_running,
    wait_for,
    wait_replicating,
)

SOURCE, TARGET = "replica1", "replica2"
MARKER = "hotcopy_fault_marker"

STEP_NAMES = [step.name for step in STEPS]
#: Each distinct crash state once (kill-before:Y is kill-after:X; see fault_points.py).
BOUNDARIES = kill_points(STEP_NAMES)
# Where the snapshot's undo is owed: journaled by lock_source before the lock is waited
# for (a no-op until the snapshot exists), and, as the drop runs in the background from
# drop_snapshot on, marked done only once finish_drop has waited for it.
SNAPSHOT_OWED = BOUNDARIES[BOUNDARIES.index(("after", "lock_source")):
                           BOUNDARIES.index(("after", "finish_drop"))]
# Resume elsewhere too: the source's quiesce group redone with a dead lock session, and
# the target side while the drop is still owed (started, re-pointed, verified: the
# resumed job drops the snapshot in the foreground).
RESUMABLE = list(dict.fromkeys([
    *BOUNDARIES[BOUNDARIES.index(("after", "lock_source")):
                BOUNDARIES.index(("after", "drop_snapshot")) + 1],
    ("after", "swap_datadir"), ("after", "start_target"), ("after", "change_master"),
    ("after", "verify")]))


def boundary_id(boundary: tuple[str, str]) -> str:
    return f"{boundary[0]}:{boundary[1]}"


@dataclass
class Shard:
    """The session sandbox seen by fault tests: handles, and the state to restore."""

    info: SandboxInfo
    rt: Runtime
    dirty_pages_pct: float
    configs: list[Path] = field(default_factory=list)

    @property
    def master(self) -> Server:
        return self.rt.server(self.info.master)

    @property
    def source(self) -> Server:
        return self.rt.server(SOURCE)

    @property
    def target(self) -> Server:
        return self.rt.server(TARGET)

    def journal(self) -> SqliteJournal:
        return SqliteJournal(self.rt.config.journal_path())

    def latest_job(self) -> Job:
        return self.journal().list_jobs(limit=1)[0]

    def report(self, job_id: str) -> dict[str, Any]:
        return job_report(self.journal(), job_id)

    def variant(self, path: Path, extra: str) -> Path:
        """The sandbox's config plus some [clone]/[transfer] settings, same journal."""
        path.write_text(self.info.config_path.read_text() + "\n" + extra + "\n")
        return path

    def reconnect(self) -> None:
        for name in self.info.servers:
            self.rt.server(name).close()


def open_shard(info: SandboxInfo) -> Shard:
    rt = runtime(info)
    pct = float(rt.server(SOURCE).scalar(("SELECT @@GLOBAL.innodb_max_dirty_pages_pct", ())))
    return Shard(info, rt, pct)


def restore(shard: Shard) -> list[str]:
    """Put the shard back for the next test, whatever this one left; says what it did."""
    done = []
    journal = shard.journal()
    for job in journal.list_jobs(limit=50):
        if not job.terminal:
            proc = hotcopy("rollback", "--config", str(shard.info.config_path), job.id)
            done.append(f"rolled back {job.id} (exit {proc.returncode})")
    for name in shard.info.servers:
        ctl = control(shard.info, name)
        if not ctl.is_running():
            ctl.start(timeout=120)
            done.append(f"started {name}")
    shard.reconnect()
    for name in shard.info.replicas:
        server = shard.rt.server(name)
        status = server.one(server.flavor.replica_status())
        if status and (status.get("Slave_IO_Running") != "Yes"
                       or status.get("Slave_SQL_Running") != "Yes"):
            server.execute(server.flavor.start_replica())
            done.append(f"started replication on {name}")
        wait_replicating(server, shard.master, timeout=60)
    return done


def module_shard(info: SandboxInfo) -> Iterator[Shard]:
    """Body of each fault module's ``shard`` fixture (module scope)."""
    shard = open_shard(info)
    yield shard
    restore(shard)
    drop_marker(shard)
    shard.rt.close()


def marked_shard(shard: Shard) -> Iterator[Shard]:
    """Body of each ``clean`` fixture: a local marker on the target's current datadir
    (how a test tells the old datadir from the new one), the shard restored after."""
    mark_local(shard.target, MARKER)
    yield shard
    restore(shard)


@pytest.fixture(scope="module")
def shard(sandbox: SandboxInfo) -> Iterator[Shard]:
    yield from module_shard(sandbox)


@pytest.fixture
def clean(shard: Shard) -> Iterator[Shard]:
    yield from marked_shard(shard)


def drop_marker(shard: Shard) -> None:
    session = shard.target.new_session()
    try:
        session.execute("SET SESSION sql_log_bin = 0")
        session.execute(f"DROP DATABASE IF EXISTS {MARKER}")
    finally:
        session.close()


def killed_clone(shard: Shard, fault: str, config: Path | None = None) -> str:
    """Run a clone that SIGKILLs itself at ``fault``; returns the dead job's id."""
    proc, _ = clone_json(shard.info, SOURCE, TARGET, env={"HOTCOPY_FAULT": fault},
                         config=config)
    assert proc.returncode == -9, f"{fault}: expected SIGKILL, got {proc.returncode}: " \
                                  f"{proc.stderr[-2000:]}"
    job = shard.latest_job()
    assert job.state.value in ("running", "committed"), job
    return job.id


def run_json(*args: str, env: dict[str, str] | None = None,
             timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = hotcopy(*args, env=env, timeout=timeout)
    try:
        document = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        document = {}
    return proc, document


class BackgroundClone:
    """``hotcopy clone`` in a subprocess, watched through the journal while it runs."""

    def __init__(self, shard: Shard, config: Path, env: dict[str, str] | None = None) -> None:
        self.shard = shard
        before = {job.id for job in shard.journal().list_jobs(limit=20)}
        full_env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
        full_env.update(env or {})
        # Closed by finish(); files, not pipes, so a chatty child can never block.
        self._out: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self._err: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hotcopy", "clone", "--config", str(config), "--source",
             SOURCE, "--target", TARGET, "--yes", "--json"],
            stdout=self._out, stderr=self._err, text=True, env=full_env)
        found: list[str] = []

        def new_job() -> bool:
            found.extend(j.id for j in shard.journal().list_jobs(limit=20) if j.id not in before)
            return bool(found)

        assert wait_for(new_job, timeout=60, interval=0.05), "the clone created no job"
        self.job_id = found[0]

    @property
    def staging(self) -> Path:
        return Path(f"{self.shard.info.datadir(TARGET)}.hotcopy-new-{self.job_id}")

    def step_started(self, name: str) -> bool:
        return any(s.name == name for s in self.shard.journal().steps(self.job_id))

    def staged_bytes(self) -> int:
        total = 0
        for root, _, names in os.walk(self.staging):
            for name in names:
                with contextlib.suppress(FileNotFoundError):  # rsync renames as it goes
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    def wait_transferring(self, at_least: int = 2_000_000) -> None:
        assert wait_for(lambda: self.step_started("pull") and self.staged_bytes() >= at_least,
                        timeout=60, interval=0.05), "the transfer did not start"
        assert self.proc.poll() is None, "the clone ended before it could be disturbed"

    def finish(self, timeout: float = 300) -> tuple[int, dict[str, Any], str]:
        code = self.proc.wait(timeout=timeout)
        self._out.seek(0)
        self._err.seek(0)
        stdout, stderr = self._out.read(), self._err.read()
        self._out.close()
        self._err.close()
        report = json.loads(stdout) if stdout.strip() else {}
        return code, report, stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def assert_source_released(shard: Shard) -> None:
    source = shard.source
    source.close()
    assert sql_thread_running(source), f"{SOURCE}: SQL thread not running"
    assert no_backup_lock(source), f"{SOURCE}: a backup lock is still held"
    pct = float(source.scalar(("SELECT @@GLOBAL.innodb_max_dirty_pages_pct", ())))
    assert pct == shard.dirty_pages_pct, f"innodb_max_dirty_pages_pct left at {pct}"


def assert_rolled_back(shard: Shard, job_id: str) -> None:
    """Every host as before the clone: the proof of a complete rollback."""
    report = shard.report(job_id)
    assert report["state"] == "rolled-back", report["state"]
    assert report["outstanding_undo"] == []
    assert {u["state"] for u in report["undo"]} <= {"done", "removed"}
    assert_source_released(shard)
    assert control(shard.info, TARGET).is_running(), f"{TARGET}: mysqld not running"
    shard.reconnect()
    assert has_schema(shard.target, MARKER), f"{TARGET} is not on its old datadir"
    wait_replicating(shard.target, shard.master, timeout=60)
    wait_replicating(shard.source, shard.master, timeout=60)
    assert leftovers(shard.info) == []


def assert_cloned(shard: Shard, report: dict[str, Any]) -> None:
    """The target runs on a fresh copy, identical to the master, and nothing is left."""
    assert report["state"] == "committed", report.get("error")
    assert report["outstanding_undo"] == []
    assert_source_released(shard)
    shard.reconnect()
    assert not has_schema(shard.target, MARKER), f"{TARGET} still runs on its old datadir"
    wait_replicating(shard.target, shard.master, timeout=60)
    wait_replicating(shard.source, shard.master, timeout=60)
    tables = list_tables(shard.master)  # the target may hold the source's local tables too
    assert differing_tables(table_checksums(shard.master, tables),
                            table_checksums(shard.target, tables)) == []
    assert leftovers(shard.info) == []


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=boundary_id)
def test_sigkill_at_boundary_then_rollback_restores_every_host(
        clean: Shard, boundary: tuple[str, str]) -> None:
    when, step = boundary
    job_id = killed_clone(clean, f"kill-{when}:{step}")
    back, report = run_json("rollback", "--config", str(clean.info.config_path), job_id,
                            "--json")
    if BOUNDARIES.index(boundary) >= BOUNDARIES.index(("after", "commit")):
        # Past the commit point the new datadir is the target's: nothing to roll back.
        assert back.returncode == 2 and "committed" in back.stderr, back.stderr
        assert_cloned(clean, clean.report(job_id))
        return
    assert back.returncode == 0, back.stderr[-3000:]
    assert report["state"] == "rolled-back"
    assert_rolled_back(clean, job_id)


@pytest.mark.parametrize("boundary", RESUMABLE, ids=boundary_id)
def test_sigkill_then_resume_finishes_the_clone(clean: Shard, boundary: tuple[str, str]) -> None:
    when, step = boundary
    job_id = killed_clone(clean, f"kill-{when}:{step}")
    owes_snapshot = any(u["action"] == "snapshot.btrfs.destroy"
                        for u in clean.report(job_id)["outstanding_undo"])
    assert owes_snapshot == (boundary in SNAPSHOT_OWED)
    resumed, report = run_json("resume", "--config", str(clean.info.config_path), job_id,
                               "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert report["job"] == job_id
    assert_cloned(clean, report)
