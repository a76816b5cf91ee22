"""Transaction on a real SQLite journal: push, exec_remove, remove, rollback, commit."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from hotcopy.errors import Interrupted, RefusedError
from hotcopy.saga import (
    EntryState,
    JobState,
    LockConflict,
    SqliteJournal,
    Transaction,
    UndoFailed,
    UnknownUndoAction,
    signals_as_exceptions,
    undo_action,
)

FAILS: dict[str, int] = {}
"""Remaining failures per key: lets a test make an undo fail, transiently or for good."""

SEND_SIGNAL: dict[str, int] = {}


@undo_action("test_txn.restore", describe="restore {key} on {server}")
def restore(context: list[str], params: Mapping[str, Any]) -> None:
    key = params["key"]
    if key in SEND_SIGNAL:
        os.kill(os.getpid(), SEND_SIGNAL.pop(key))
    if FAILS.get(key, 0) > 0:
        FAILS[key] -= 1
        raise RuntimeError(f"{key}: server not reachable")
    context.append(key)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    FAILS.clear()
    SEND_SIGNAL.clear()
    yield
    FAILS.clear()
    SEND_SIGNAL.clear()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite"


@pytest.fixture
def journal(path: Path) -> Iterator[SqliteJournal]:
    j = SqliteJournal(path)
    yield j
    j.close()


Setup = tuple[SqliteJournal, str, list[str], list[float], Transaction]


@pytest.fixture
def setup(journal: SqliteJournal) -> Setup:
    job = journal.create_job("clone", {"source": "db1", "target": "db2"})
    journal.acquire_locks(job.id, ["shard:s1"])
    done: list[str] = []
    sleeps: list[float] = []
    txn = Transaction(journal, job.id, done, sleep=sleeps.append)
    return journal, job.id, done, sleeps, txn


def push(txn: Transaction, key: str, **extra: Any) -> int:
    return txn.push("test_txn.restore", {"key": key, "server": "db1"}, **extra)


def test_push_is_durable_and_labelled(setup: Setup, path: Path) -> None:
    _, job_id, _, _, txn = setup
    assert push(txn, "a") == 1
    assert push(txn, "b", label="put b back", step="stop-sql") == 2
    other = SqliteJournal(path)
    entries = other.undo_entries(job_id)
    assert [(e.seq, e.label, e.step, e.state) for e in entries] == [
        (1, "restore a on db1", None, EntryState.PENDING),
        (2, "put b back", "stop-sql", EntryState.PENDING),
    ]
    assert entries[0].params == {"key": "a", "server": "db1"}
    other.close()


def test_rollback_runs_everything_newest_first(setup: Setup) -> None:
    journal, job_id, done, sleeps, txn = setup
    for key in "abc":
        push(txn, key)
    report = txn.rollback()
    assert done == ["c", "b", "a"]
    assert report.complete
    assert [e.seq for e in report.done] == [3, 2, 1]
    assert report.failed == []
    assert "rollback complete: 3" in report.describe()
    assert journal.get_job(job_id).state is JobState.ROLLED_BACK
    assert txn.pending() == []
    assert all(e.state is EntryState.DONE and e.attempts == 1
               for e in journal.undo_entries(job_id))
    assert sleeps == []
    other = journal.create_job("clone", {})
    journal.acquire_locks(other.id, ["shard:s1"])  # released


def test_exec_remove_runs_one_now_in_any_order(setup: Setup) -> None:
    _, _, done, _, txn = setup
    seqs = [push(txn, key) for key in "abcd"]
    txn.exec_remove(seqs[1])
    txn.exec_remove(seqs[3])
    assert done == ["b", "d"]
    assert [e.seq for e in txn.pending()] == [1, 3]
    txn.rollback()
    assert done == ["b", "d", "c", "a"]


def test_remove_discards_without_running(setup: Setup) -> None:
    journal, job_id, done, _, txn = setup
    push(txn, "a")
    push(txn, "b")
    txn.remove(2)
    txn.rollback()
    assert done == ["a"]
    assert journal.undo_entries(job_id)[1].state is EntryState.REMOVED


def test_exec_remove_and_remove_refuse_unknown_or_finished_entries(setup: Setup) -> None:
    _, _, _, _, txn = setup
    push(txn, "a")
    push(txn, "b")
    txn.exec_remove(1)
    txn.remove(2)
    for seq in (1, 2, 3):
        with pytest.raises(ValueError):
            txn.exec_remove(seq)
        with pytest.raises(ValueError):
            txn.remove(seq)


def test_retries_with_growing_delay_then_succeeds(setup: Setup) -> None:
    journal, job_id, done, sleeps, txn = setup
    push(txn, "a")
    FAILS["a"] = 2
    txn.exec_remove(1)
    assert done == ["a"]
    assert sleeps == [0.5, 1.0]
    entry = journal.undo_entries(job_id)[0]
    assert (entry.state, entry.attempts, entry.error) == (EntryState.DONE, 3, None)


def test_exec_remove_failure_is_recorded_and_retried_by_rollback(setup: Setup) -> None:
    journal, job_id, done, sleeps, txn = setup
    push(txn, "a")
    push(txn, "b")
    FAILS["b"] = 4
    with pytest.raises(UndoFailed) as caught:
        txn.exec_remove(2)
    assert caught.value.entry.state is EntryState.FAILED
    assert caught.value.entry.attempts == 3
    assert isinstance(caught.value.cause, RuntimeError)
    assert "restore b on db1" in str(caught.value)
    assert sleeps == [0.5, 1.0]
    assert [(e.seq, e.state) for e in txn.pending()] == [
        (1, EntryState.PENDING), (2, EntryState.FAILED),
    ]
    with pytest.raises(ValueError):
        txn.exec_remove(2)  # not pending any more; the rollback owns it now
    report = txn.rollback()
    assert report.complete
    assert done == ["b", "a"]
    assert journal.undo_entries(job_id)[1].attempts == 5


def test_failed_undo_is_recorded_the_rest_run_and_a_fresh_process_finishes(
    setup: Setup, path: Path
) -> None:
    journal, job_id, done, sleeps, txn = setup
    for key in "abc":
        push(txn, key)
    FAILS["b"] = 100
    report = txn.rollback()
    assert done == ["c", "a"]
    assert not report.complete
    assert [e.seq for e in report.failed] == [2]
    failed = report.failed[0]
    assert (failed.state, failed.attempts) == (EntryState.FAILED, 3)
    assert "server not reachable" in (failed.error or "")
    text = report.describe()
    for needle in ("rollback incomplete", "#2 restore b on db1", "server not reachable",
                   "after 3 attempt", "test_txn.restore: restore b on db1",
                   f"hotcopy rollback {job_id}"):
        assert needle in text
    assert journal.get_job(job_id).state is JobState.ROLLBACK_INCOMPLETE
    blocked = journal.create_job("clone", {})
    with pytest.raises(LockConflict, match="rollback-incomplete"):
        journal.acquire_locks(blocked.id, ["shard:s1"])

    FAILS.clear()  # the operator fixed the cause
    fresh = SqliteJournal(path)
    again: list[str] = []
    report2 = Transaction(fresh, job_id, again, sleep=sleeps.append).rollback()
    assert again == ["b"]
    assert report2.complete
    assert fresh.get_job(job_id).state is JobState.ROLLED_BACK
    assert fresh.undo_entries(job_id)[1].attempts == 4
    journal.acquire_locks(blocked.id, ["shard:s1"])
    fresh.close()


def test_commit_discards_undo_and_releases_locks(setup: Setup) -> None:
    journal, job_id, done, _, txn = setup
    push(txn, "a")
    push(txn, "b")
    txn.exec_remove(1)
    txn.commit()
    assert done == ["a"]
    assert [e.state for e in journal.undo_entries(job_id)] == [
        EntryState.DONE, EntryState.REMOVED,
    ]
    assert journal.get_job(job_id).state is JobState.COMMITTED
    other = journal.create_job("clone", {})
    journal.acquire_locks(other.id, ["shard:s1"])
    with pytest.raises(RefusedError, match="committed"):
        txn.rollback()
    with pytest.raises(RefusedError, match="committed"):
        push(txn, "c")
    assert done == ["a"]


def test_rolled_back_job_cannot_be_committed_or_grow(setup: Setup) -> None:
    _, _, _, _, txn = setup
    push(txn, "a")
    txn.rollback()
    with pytest.raises(RefusedError):
        txn.commit()
    with pytest.raises(RefusedError, match="rolled-back"):
        push(txn, "b")
    assert txn.rollback().complete  # nothing owed: a no-op


def test_unknown_action_is_refused_at_push(setup: Setup) -> None:
    journal, job_id, _, _, txn = setup
    with pytest.raises(UnknownUndoAction, match=r"test_txn\.nope.*not imported"):
        txn.push("test_txn.nope", {})
    assert journal.undo_entries(job_id) == []


def test_unknown_action_in_the_journal_fails_once_and_the_rest_run(setup: Setup) -> None:
    journal, job_id, done, sleeps, txn = setup
    push(txn, "a")
    journal.append_undo(job_id, "test_txn.from_a_module_not_imported", {}, "mystery", None)
    push(txn, "c")
    report = txn.rollback()
    assert done == ["c", "a"]
    assert [(e.seq, e.attempts) for e in report.failed] == [(2, 1)]
    assert sleeps == []
    assert "not registered in this process" in report.describe()


def test_non_json_params_are_refused_at_push(setup: Setup) -> None:
    journal, job_id, _, _, txn = setup
    with pytest.raises(TypeError, match="Path"):
        txn.push("test_txn.restore", {"key": "a", "where": Path("/x")})
    assert journal.undo_entries(job_id) == []


def test_params_are_not_logged_at_info(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    _, _, _, _, txn = setup
    caplog.set_level(logging.INFO, logger="hotcopy.saga")
    txn.push("test_txn.restore", {"key": "a", "server": "db1", "password": "hunter2"})
    txn.rollback()
    assert "restore a on db1" in caplog.text
    assert "hunter2" not in caplog.text


def test_rollback_of_a_job_with_nothing_to_undo(setup: Setup) -> None:
    journal, job_id, _, _, txn = setup
    report = txn.rollback()
    assert report.complete and report.done == []
    assert journal.get_job(job_id).state is JobState.ROLLED_BACK


def test_retries_must_be_positive(journal: SqliteJournal) -> None:
    with pytest.raises(ValueError):
        Transaction(journal, "x", None, retries=0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_rollback_finishes_despite_signals(
    setup: Setup, caplog: pytest.LogCaptureFixture, signum: int
) -> None:
    _, _, done, _, txn = setup
    for key in "abc":
        push(txn, key)
    SEND_SIGNAL["b"] = signum
    before = signal.getsignal(signum)
    with caplog.at_level(logging.WARNING, logger="hotcopy.saga"):
        report = txn.rollback()
    assert report.complete
    assert done == ["c", "b", "a"]
    assert "rollback in progress; it will finish" in caplog.text
    assert signal.getsignal(signum) is before


def test_signals_as_exceptions_raises_interrupted_and_restores() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, signals_as_exceptions():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
    assert caught.value.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_exec_remove_finishes_the_undo_then_delivers_the_signal(setup: Setup) -> None:
    journal, job_id, done, _, txn = setup
    push(txn, "a")
    SEND_SIGNAL["a"] = signal.SIGTERM
    with pytest.raises(Interrupted), signals_as_exceptions():
        txn.exec_remove(1)
    assert done == ["a"]
    assert journal.undo_entries(job_id)[0].state is EntryState.DONE
