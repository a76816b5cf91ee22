"""The default journal: one SQLite file, no server, safe to share between processes.

WAL with ``synchronous=FULL`` makes every commit reach the disk before we return, which
is the whole contract: an undo entry must exist before the change it undoes. Each write
is its own short ``BEGIN IMMEDIATE`` transaction, so several hotcopy processes (a
controller and an operator's ``hotcopy rollback``) can share the file, and a crash
loses at most the write in flight, never an acknowledged one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotcopy.errors import RefusedError
from hotcopy.saga.journal import (
    STEP_OUTCOMES,
    TERMINAL_STATES,
    EntryState,
    FencedOut,
    Job,
    JobNotFound,
    JobState,
    Journal,
    LockConflict,
    LockInfo,
    OwnerAlive,
    Ownership,
    StepRecord,
    UndoEntry,
    dump_json,
    hotcopy_pid_alive,
    new_job_id,
    refuse_unless_running,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_SCHEMA = (
    "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL,"
    " params TEXT NOT NULL, info TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,"
    " owner_host TEXT, owner_pid INTEGER, error TEXT)",
    # Version 2 (fencing): the owner's epoch, and which epoch last took an undo entry.
    # Kept as ALTERs so version-1 files are upgraded by the very same statements.
    "CREATE INDEX jobs_by_created ON jobs (created)",
    "CREATE TABLE undo (job_id TEXT NOT NULL REFERENCES jobs (id), seq INTEGER NOT NULL,"
    " action TEXT NOT NULL, params TEXT NOT NULL, label TEXT NOT NULL, step TEXT,"
    " state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,"
    " created REAL NOT NULL, finished REAL, PRIMARY KEY (job_id, seq))",
    "CREATE TABLE steps (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " job_id TEXT NOT NULL REFERENCES jobs (id), name TEXT NOT NULL, attempt INTEGER NOT NULL,"
    " started REAL NOT NULL, ended REAL, outcome TEXT NOT NULL, outputs TEXT NOT NULL,"
    " error TEXT, UNIQUE (job_id, name, attempt))",
    "CREATE TABLE locks (resource TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs (id),"
    " acquired REAL NOT NULL)",
)
_SCHEMA_V2 = (
    "ALTER TABLE jobs ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN owner_since REAL",
    "ALTER TABLE undo ADD COLUMN claimed_epoch INTEGER",
)
_LIVE_STATES = (JobState.RUNNING.value, JobState.ROLLING_BACK.value)


def job_from_row(row: sqlite3.Row) -> Job:
    fields = dict(row)
    fields.pop("owner_since", None)
    return Job(**{**fields, "state": JobState(fields["state"]),
                  "params": json.loads(fields["params"]), "info": json.loads(fields["info"])})


def undo_from_row(row: sqlite3.Row) -> UndoEntry:
    fields = dict(row)
    fields.pop("claimed_epoch", None)
    return UndoEntry(**{**fields, "state": EntryState(fields["state"]),
                        "params": json.loads(fields["params"])})


def step_from_row(row: sqlite3.Row) -> StepRecord:
    fields = dict(row)
    del fields["id"]
    return StepRecord(**{**fields, "outputs": json.loads(fields["outputs"])})


def _prepare_path(path: Path) -> None:
    # The journal names hosts, paths and coordinates of the fleet: keep it private.
    # mkdir/open modes are filtered by the umask, hence the explicit chmod.
    missing: list[Path] = []
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    os.chmod(path, 0o600)


class SqliteJournal:
    """A Journal in one SQLite file; one connection per instance, usable from threads."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        """``create=False``: a missing file is not made; the journal is empty, in memory.

        Read-only commands (a plan, ``show``, ``jobs``) must not leave files behind: a
        mistyped path would otherwise start a second, empty job history.
        """
        self.path = Path(path)
        self._lock = threading.RLock()
        self._owned: dict[str, Ownership] = {}
        in_memory = not create and not self.path.exists()
        self._in_memory = in_memory
        try:
            if not in_memory:
                _prepare_path(self.path)
            self._db = sqlite3.connect(
                ":memory:" if in_memory else self.path, timeout=10.0, isolation_level=None,
                check_same_thread=False,
            )
        except (sqlite3.Error, OSError) as exc:
            raise self._cannot_open(exc) from exc
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 10000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.Error):
                raise self._cannot_open(exc) from exc
            raise
        if str(mode).lower() != "wal" and not in_memory:
            log.warning("journal %s: WAL unavailable, using %s mode", self.path, mode)
        log.debug("journal %s open", self.path)

    def _cannot_open(self, exc: BaseException) -> RefusedError:
        return RefusedError(
            f"cannot open the journal {self.path}: {exc}",
            hint="check the [journal] path in the config, its directory and permissions",
        )

    def _migrate(self) -> None:
        with self._tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RefusedError(
                    f"the journal {self.path} has schema version {version}; this hotcopy "
                    f"understands up to {SCHEMA_VERSION}",
                    hint="run a hotcopy at least as new as the one that wrote this journal",
                )
            if version == 0:
                for statement in _SCHEMA:
                    db.execute(statement)
                log.info("journal %s created (schema %d)", self.path, SCHEMA_VERSION)
            if version < 2:
                for statement in _SCHEMA_V2:
                    db.execute(statement)
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One durable write: the write lock taken up front, committed before returning."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _read(self, query: str, args: Sequence[Any]) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(query, args).fetchall()

    def _not_found(self, job_id: str) -> JobNotFound:
        return JobNotFound(job_id, f"the journal {self.path}")

    @contextmanager
    def _owned_tx(self, job_id: str) -> Iterator[sqlite3.Connection]:
        """A write to a job: the owner's epoch compared inside the same transaction.

        BEGIN IMMEDIATE holds the write lock from the check to the commit, so no claim
        by another process can slip in between: the fencing is exact, not best effort.
        """
        with self._tx() as db:
            row = db.execute("SELECT owner_epoch FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise self._not_found(job_id)
            mine = self._owned.get(job_id)
            if mine is None:
                raise FencedOut(job_id, "this process never claimed it")
            if int(row["owner_epoch"]) != mine.epoch:
                self._owned.pop(job_id, None)
                raise FencedOut(job_id, f"epoch {mine.epoch} was superseded by "
                                        f"{row['owner_epoch']}")
            yield db

    def _update_job(self, job_id: str, assignments: str, values: Sequence[Any]) -> None:
        with self._owned_tx(job_id) as db:
            cursor = db.execute(
                f"UPDATE jobs SET {assignments}, updated = ? WHERE id = ?",
                (*values, time.time(), job_id),
            )
            if cursor.rowcount == 0:
                raise self._not_found(job_id)

    def create_job(
        self, kind: str, params: Mapping[str, Any], job_id: str | None = None
    ) -> Job:
        if self._in_memory:
            # Opened read-only on a missing file: a job here would vanish with the process.
            raise RefusedError(f"the journal {self.path} does not exist and was opened "
                               "read-only; nothing was changed",
                               hint="a command that starts jobs creates it")
        params_json = dump_json(params)
        for _ in range(20):
            now = time.time()
            candidate = job_id or new_job_id(now)
            try:
                with self._tx() as db:
                    db.execute(
                        "INSERT INTO jobs (id, kind, state, params, info, created, updated,"
                        " owner_host, owner_pid, owner_epoch, owner_since)"
                        " VALUES (?, ?, ?, ?, '{}', ?, ?, ?, ?, 1, ?)",
                        (candidate, kind, JobState.RUNNING.value, params_json, now, now,
                         socket.gethostname(), os.getpid(), now),
                    )
            except sqlite3.IntegrityError as exc:
                if job_id is not None:
                    raise RefusedError(f"job '{job_id}' already exists in {self.path}") from exc
                continue
            self._owned[candidate] = Ownership(candidate, 1, socket.gethostname(),
                                               os.getpid(), now)
            log.info("job %s (%s) created", candidate, kind)
            return self.get_job(candidate)
        raise RuntimeError("could not find a free job id after 20 tries")

    def get_job(self, job_id: str) -> Job:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise self._not_found(job_id)
        return job_from_row(rows[0])

    def list_jobs(self, limit: int = 50) -> list[Job]:
        query = "SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?"
        return [job_from_row(row) for row in self._read(query, (limit,))]

    def set_job_state(self, job_id: str, state: JobState, error: str | None = None) -> None:
        self._update_job(
            job_id, "state = ?, error = COALESCE(?, error)", (JobState(state).value, error)
        )
        log.debug("job %s is %s", job_id, state)

    def update_job_info(self, job_id: str, /, **items: Any) -> None:
        dump_json(items, "info")
        with self._owned_tx(job_id) as db:
            row = db.execute("SELECT info FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise self._not_found(job_id)
            info = json.loads(row["info"])
            info.update(items)
            db.execute(
                "UPDATE jobs SET info = ?, updated = ? WHERE id = ?",
                (dump_json(info, "info"), time.time(), job_id),
            )

    def claim_job(self, job_id: str, host: str, pid: int) -> Ownership:
        # SQLite lives on one host, so "alive" is a pid check on this host. An owner on
        # another host (a journal on shared storage) cannot be checked and is not
        # trusted to be alive: such a set-up needs the etcd backend.
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT state, owner_host, owner_pid, owner_epoch FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                raise self._not_found(job_id)
            epoch = int(row["owner_epoch"])
            mine = self._owned.get(job_id)
            if mine is not None and mine.epoch == epoch:
                # Already ours: record who we say we are, the epoch stays.
                db.execute("UPDATE jobs SET owner_host = ?, owner_pid = ? WHERE id = ?",
                           (host, pid, job_id))
                self._owned[job_id] = Ownership(job_id, epoch, host, pid, mine.since)
                return self._owned[job_id]
            holder_pid = row["owner_pid"]
            if (row["owner_host"] == socket.gethostname() and holder_pid
                    and holder_pid != os.getpid() and row["state"] in _LIVE_STATES
                    and hotcopy_pid_alive(int(holder_pid))):
                raise OwnerAlive(job_id, f"pid {holder_pid} on {row['owner_host']}")
            db.execute(
                "UPDATE jobs SET owner_host = ?, owner_pid = ?, owner_epoch = ?,"
                " owner_since = ?, updated = ? WHERE id = ?",
                (host, pid, epoch + 1, now, now, job_id),
            )
        ownership = Ownership(job_id, epoch + 1, host, pid, now)
        self._owned[job_id] = ownership
        log.debug("job %s claimed by %s pid %d (epoch %d)", job_id, host, pid, epoch + 1)
        return ownership

    def ownership(self, job_id: str) -> Ownership | None:
        return self._owned.get(job_id)

    def claim_undo(self, job_id: str, seq: int) -> UndoEntry:
        epoch = self._owned[job_id].epoch if job_id in self._owned else None
        with self._owned_tx(job_id) as db:
            row = db.execute("SELECT * FROM undo WHERE job_id = ? AND seq = ?",
                             (job_id, seq)).fetchone()
            if row is None:
                raise ValueError(f"job {job_id} has no undo entry #{seq}")
            entry = undo_from_row(row)
            if not entry.outstanding:
                raise ValueError(f"undo #{seq} of job {job_id} is {entry.state}, not "
                                 "outstanding")
            db.execute("UPDATE undo SET claimed_epoch = ? WHERE job_id = ? AND seq = ?",
                       (epoch, job_id, seq))
        return entry

    def ensure_may_act(self, job_id: str, what: str) -> None:
        """FencedOut if another process claimed the job (its epoch, as every write
        checks it); a local read of the file, no fsync: cheap enough under the lock."""
        with self._owned_tx(job_id):
            pass

    def locks(self) -> list[LockInfo]:
        rows = self._read(
            "SELECT l.resource, l.job_id, l.acquired, j.state, j.owner_host, j.owner_pid"
            " FROM locks AS l LEFT JOIN jobs AS j ON j.id = l.job_id ORDER BY l.resource", (),
        )
        return [LockInfo(r["resource"], r["job_id"], r["state"], r["owner_host"],
                         r["owner_pid"], r["acquired"]) for r in rows]

    def append_undo(
        self, job_id: str, action: str, params: Mapping[str, Any], label: str,
        step: str | None,
    ) -> UndoEntry:
        params_json = dump_json(params)
        now = time.time()
        with self._owned_tx(job_id) as db:
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            refuse_unless_running(job_id, state)
            seq = int(db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM undo WHERE job_id = ?", (job_id,)
            ).fetchone()[0])
            db.execute(
                "INSERT INTO undo (job_id, seq, action, params, label, step, state, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, seq, action, params_json, label, step, EntryState.PENDING.value, now),
            )
        return UndoEntry(job_id, seq, action, json.loads(params_json), label, step,
                         EntryState.PENDING, created=now)

    def set_undo_state(
        self, job_id: str, seq: int, state: EntryState, *, attempts: int, error: str | None
    ) -> None:
        state = EntryState(state)
        finished = None if state is EntryState.PENDING else time.time()
        with self._owned_tx(job_id) as db:
            cursor = db.execute(
                "UPDATE undo SET state = ?, attempts = ?, error = ?, finished = ?"
                " WHERE job_id = ? AND seq = ?",
                (state.value, attempts, error, finished, job_id, seq),
            )
            if cursor.rowcount == 0:
                raise ValueError(f"job {job_id} has no undo entry #{seq}")

    def undo_entries(
        self, job_id: str, states: Collection[EntryState] | None = None
    ) -> list[UndoEntry]:
        query = "SELECT * FROM undo WHERE job_id = ?"
        args: list[Any] = [job_id]
        if states is not None:
            wanted = sorted({EntryState(s).value for s in states})
            if not wanted:
                return []
            query += f" AND state IN ({', '.join('?' * len(wanted))})"
            args += wanted
        return [undo_from_row(row) for row in self._read(query + " ORDER BY seq", args)]

    def step_started(self, job_id: str, name: str) -> None:
        with self._owned_tx(job_id) as db:
            attempt = int(db.execute(
                "SELECT COALESCE(MAX(attempt), 0) + 1 FROM steps WHERE job_id = ? AND name = ?",
                (job_id, name),
            ).fetchone()[0])
            db.execute(
                "INSERT INTO steps (job_id, name, attempt, started, outcome, outputs)"
                " VALUES (?, ?, ?, ?, 'running', '{}')",
                (job_id, name, attempt, time.time()),
            )

    def step_finished(
        self, job_id: str, name: str, outcome: str,
        outputs: Mapping[str, Any] | None = None, error: str | None = None,
    ) -> None:
        if outcome not in STEP_OUTCOMES:
            raise ValueError(f"step outcome must be one of {sorted(STEP_OUTCOMES)}: {outcome!r}")
        outputs_json = dump_json(outputs or {}, "outputs")
        now = time.time()
        ended = None if outcome == "running" else now
        with self._owned_tx(job_id) as db:
            query = "SELECT MAX(id) FROM steps WHERE job_id = ? AND name = ?"
            step_id = db.execute(query, (job_id, name)).fetchone()[0]
            if step_id is None:  # a step skipped without ever starting
                step_id = db.execute(
                    "INSERT INTO steps (job_id, name, attempt, started, outcome, outputs)"
                    " VALUES (?, ?, 1, ?, 'running', '{}')", (job_id, name, now),
                ).lastrowid
            db.execute(
                "UPDATE steps SET ended = ?, outcome = ?, outputs = ?, error = ? WHERE id = ?",
                (ended, outcome, outputs_json, error, step_id),
            )

    def steps(self, job_id: str) -> list[StepRecord]:
        rows = self._read(
            "SELECT * FROM steps AS s WHERE s.job_id = ? AND s.id = (SELECT MAX(t.id)"
            " FROM steps AS t WHERE t.job_id = s.job_id AND t.name = s.name) ORDER BY s.id",
            (job_id,),
        )
        return [step_from_row(row) for row in rows]

    def acquire_locks(self, job_id: str, resources: Sequence[str]) -> None:
        wanted = list(dict.fromkeys(resources))
        now = time.time()
        with self._owned_tx(job_id) as db:
            for resource in wanted:
                row = db.execute(
                    "SELECT l.job_id, j.state, j.owner_host, j.owner_pid FROM locks AS l"
                    " LEFT JOIN jobs AS j ON j.id = l.job_id WHERE l.resource = ?",
                    (resource,),
                ).fetchone()
                if row is not None and row["job_id"] != job_id:
                    state = row["state"]
                    if state is not None and JobState(state) not in TERMINAL_STATES:
                        raise LockConflict(
                            resource, row["job_id"], state,
                            owner_host=row["owner_host"], owner_pid=row["owner_pid"],
                        )
                    log.info(
                        "taking over stale lock on %s from job %s (%s)",
                        resource, row["job_id"], state,
                    )
                db.execute(
                    "INSERT INTO locks (resource, job_id, acquired) VALUES (?, ?, ?)"
                    " ON CONFLICT (resource) DO UPDATE SET job_id = excluded.job_id,"
                    " acquired = excluded.acquired",
                    (resource, job_id, now),
                )
        if wanted:
            log.info("job %s holds %s", job_id, ", ".join(wanted))

    def release_locks(self, job_id: str) -> None:
        with self._owned_tx(job_id) as db:
            cursor = db.execute("DELETE FROM locks WHERE job_id = ?", (job_id,))
        if cursor.rowcount:
            log.info("job %s released %d lock(s)", job_id, cursor.rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # mypy proves the class still satisfies the Protocol

    def _is_a_journal(journal: SqliteJournal) -> Journal:
        return journal
