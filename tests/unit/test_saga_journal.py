"""The journal contract on both backends (SQLite files, a real etcd), plus what only
SQLite has (file modes, schema versions): durability, steps, locks, JSON discipline."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from hotcopy.errors import RefusedError
from hotcopy.saga import (
    EntryState,
    JobNotFound,
    JobState,
    Journal,
    LockConflict,
    SqliteJournal,
)
from tests.journals import JournalStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_private_dirs_and_file_even_with_a_loose_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hotcopy" / "journal.sqlite"
    old = os.umask(0)
    try:
        j = SqliteJournal(path)
        j.create_job("clone", {})
    finally:
        os.umask(old)
    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / "hotcopy") == 0o700
    assert mode(path) == 0o600
    for side in ("journal.sqlite-wal", "journal.sqlite-shm"):
        if (path.parent / side).exists():
            assert mode(path.parent / side) == 0o600
    j.close()


def test_existing_parent_directory_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    SqliteJournal(tmp_path / "j.sqlite").close()
    assert mode(tmp_path) == 0o755


def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    SqliteJournal(tmp_path / "journal.sqlite").close()
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    SqliteJournal(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(RefusedError, match="schema version 99"):
        SqliteJournal(path)


def test_garbage_file_is_refused_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(RefusedError, match=re.escape(str(path))):
        SqliteJournal(path)


def test_jobs_have_readable_unique_ids_and_survive_reopen(journal_store: JournalStore) -> None:
    j = journal_store.open()
    ids = [j.create_job("clone", {"source": "db1", "n": i}).id for i in range(30)]
    assert len(set(ids)) == 30
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", i) for i in ids)
    j.close()
    again = journal_store.open()
    job = again.get_job(ids[3])
    assert job.kind == "clone"
    assert job.state is JobState.RUNNING
    assert job.params == {"source": "db1", "n": 3}
    assert job.info == {}
    assert [x.id for x in again.list_jobs(limit=5)] == ids[::-1][:5]


def test_explicit_job_id_and_duplicates(journal: Journal) -> None:
    assert journal.create_job("verify", {}, job_id="mine").id == "mine"
    with pytest.raises(RefusedError, match="already exists"):
        journal.create_job("verify", {}, job_id="mine")


def test_unknown_job_says_how_to_list_jobs(journal: Journal) -> None:
    with pytest.raises(JobNotFound) as caught:
        journal.get_job("nope")
    assert "nope" in str(caught.value)
    assert "hotcopy jobs" in str(caught.value)
    with pytest.raises(JobNotFound):
        journal.set_job_state("nope", JobState.FAILED)
    with pytest.raises(JobNotFound):
        journal.append_undo("nope", "x", {}, "x", None)


def test_state_error_info_and_owner(journal: Journal) -> None:
    job = journal.create_job("clone", {})
    journal.set_job_state(job.id, JobState.ROLLING_BACK, error="step 'snapshot' failed")
    journal.set_job_state(job.id, JobState.ROLLED_BACK)
    journal.update_job_info(job.id, source_lock_ms=12, coords={"file": "bin.1", "pos": 4})
    journal.update_job_info(job.id, bytes_transferred=10)
    journal.claim_job(job.id, "ctl1", 4242)
    got = journal.get_job(job.id)
    assert got.state is JobState.ROLLED_BACK
    assert got.error == "step 'snapshot' failed"  # the first failure still explains the job
    assert got.info == {
        "source_lock_ms": 12, "coords": {"file": "bin.1", "pos": 4}, "bytes_transferred": 10,
    }
    assert (got.owner_host, got.owner_pid) == ("ctl1", 4242)
    assert got.updated >= got.created
    assert got.terminal


def test_non_json_is_rejected_before_anything_is_written(journal: Journal) -> None:
    job = journal.create_job("clone", {})
    for bad in ({"x": object()}, {"x": {1, 2}}, {"x": float("nan")}, {"x": {1: "a"}},
                {"x": [b"bytes"]}):
        with pytest.raises(TypeError):
            journal.append_undo(job.id, "a", bad, "label", None)
        with pytest.raises(TypeError):
            journal.update_job_info(job.id, **bad)
    with pytest.raises(TypeError):
        journal.create_job("clone", {"when": object()})
    assert journal.undo_entries(job.id) == []
    assert journal.get_job(job.id).info == {}


def test_undo_entries_round_trip_and_filter(journal: Journal) -> None:
    job = journal.create_job("clone", {})
    first = journal.append_undo(job.id, "a", {"b": [1, 2], "a": (3,)}, "undo a", "stop-sql")
    second = journal.append_undo(job.id, "b", {}, "undo b", None)
    assert (first.seq, second.seq) == (1, 2)
    assert first.params == {"a": [3], "b": [1, 2]}
    journal.set_undo_state(job.id, 1, EntryState.FAILED, attempts=3, error="boom")
    entries = journal.undo_entries(job.id)
    assert [e.seq for e in entries] == [1, 2]
    assert entries[0].state is EntryState.FAILED
    assert (entries[0].attempts, entries[0].error, entries[0].step) == (3, "boom", "stop-sql")
    assert entries[0].finished is not None
    assert entries[1].finished is None
    assert [e.seq for e in journal.undo_entries(job.id, [EntryState.PENDING])] == [2]
    assert journal.undo_entries(job.id, []) == []
    with pytest.raises(ValueError, match="no undo entry #9"):
        journal.set_undo_state(job.id, 9, EntryState.DONE, attempts=1, error=None)
    other = journal.create_job("clone", {})
    assert journal.append_undo(other.id, "a", {}, "a", None).seq == 1


def test_steps_record_attempts_and_latest_in_start_order(journal: Journal) -> None:
    job = journal.create_job("clone", {})
    journal.step_started(job.id, "preflight")
    journal.step_finished(job.id, "preflight", "done", {"checks": 7})
    journal.step_started(job.id, "snapshot")
    journal.step_finished(job.id, "snapshot", "failed", error="no space")
    journal.step_finished(job.id, "verify", "skipped")
    journal.step_started(job.id, "snapshot")
    steps = journal.steps(job.id)
    assert [(s.name, s.outcome, s.attempt) for s in steps] == [
        ("preflight", "done", 1), ("verify", "skipped", 1), ("snapshot", "running", 2),
    ]
    assert steps[0].outputs == {"checks": 7}
    assert steps[0].ended is not None and steps[0].ended >= steps[0].started
    assert steps[2].ended is None
    with pytest.raises(ValueError, match="outcome"):
        journal.step_finished(job.id, "snapshot", "exploded")


def test_lock_conflict_names_resource_holder_state_and_remedy(journal: Journal) -> None:
    a = journal.create_job("clone", {})
    b = journal.create_job("clone", {})
    journal.claim_job(a.id, "ctl1", 99)
    journal.acquire_locks(a.id, ["shard:s1", "server:db2"])
    journal.acquire_locks(a.id, ["shard:s1"])  # a job may re-take what it holds
    with pytest.raises(LockConflict) as caught:
        journal.acquire_locks(b.id, ["server:db3", "shard:s1"])
    message = str(caught.value)
    for needle in ("shard:s1", a.id, "running", f"hotcopy rollback {a.id}",
                   f"hotcopy resume {a.id}", "ctl1"):
        assert needle in message
    assert caught.value.exit_code == 2
    # all or nothing: server:db3 was not taken by b
    c = journal.create_job("clone", {})
    journal.acquire_locks(c.id, ["server:db3"])


@pytest.mark.parametrize("state", [JobState.ROLLBACK_INCOMPLETE, JobState.ROLLING_BACK])
def test_unfinished_jobs_keep_their_locks(journal: Journal, state: JobState) -> None:
    a = journal.create_job("clone", {})
    b = journal.create_job("clone", {})
    journal.acquire_locks(a.id, ["shard:s1"])
    journal.set_job_state(a.id, state)
    with pytest.raises(LockConflict, match=str(state)):
        journal.acquire_locks(b.id, ["shard:s1"])


@pytest.mark.parametrize("state", [JobState.COMMITTED, JobState.ROLLED_BACK, JobState.FAILED])
def test_locks_of_terminal_jobs_are_taken_over(journal: Journal, state: JobState) -> None:
    a = journal.create_job("clone", {})
    b = journal.create_job("clone", {})
    journal.acquire_locks(a.id, ["shard:s1"])
    journal.set_job_state(a.id, state)
    journal.acquire_locks(b.id, ["shard:s1"])
    journal.set_job_state(a.id, JobState.RUNNING)  # a's lock is gone for good
    with pytest.raises(LockConflict, match=b.id):
        journal.acquire_locks(a.id, ["shard:s1"])


def test_release_locks(journal: Journal) -> None:
    a = journal.create_job("clone", {})
    b = journal.create_job("clone", {})
    journal.acquire_locks(a.id, ["shard:s1"])
    journal.release_locks(a.id)
    journal.acquire_locks(b.id, ["shard:s1"])


def test_concurrent_lockers_from_separate_connections_get_one_winner(
    journal_store: JournalStore,
) -> None:
    setup = journal_store.open()
    jobs = [setup.create_job("clone", {}).id for _ in range(8)]
    winners: list[str] = []
    losers: list[str] = []
    barrier = threading.Barrier(len(jobs))

    journal_store.crash(setup)  # the creator is gone, so each contender may claim

    def contend(job_id: str) -> None:
        j = journal_store.open()
        j.claim_job(job_id, "ctl", os.getpid())  # a lock is taken by the job's owner
        barrier.wait()
        try:
            j.acquire_locks(job_id, ["shard:s1", "server:db2"])
            winners.append(job_id)
        except LockConflict:
            losers.append(job_id)

    threads = [threading.Thread(target=contend, args=(job_id,)) for job_id in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert len(losers) == len(jobs) - 1
