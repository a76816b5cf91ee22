"""Fencing, on both backends: a deposed owner's writes are refused, an entry is taken
before it runs, and of two rollbacks started at once exactly one runs the undos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hotcopy
from hotcopy.saga import (
    EntryState,
    FencedOut,
    JobState,
    JournalUnavailable,
    OwnerAlive,
    SqliteJournal,
)
from hotcopy.saga.etcd_journal import EtcdJournal
from tests.etcd_cluster import EtcdCluster
from tests.journals import JournalStore


def test_a_deposed_owner_can_write_nothing(journal_store: JournalStore) -> None:
    first = journal_store.open()
    job = first.create_job("clone", {"source": "db1", "target": "db2"})
    first.acquire_locks(job.id, ["server:db2"])
    first.append_undo(job.id, "a", {"n": 1}, "undo 1", "s")
    first_epoch = first.ownership(job.id)
    assert first_epoch is not None
    journal_store.crash(first)  # etcd: its lease is gone; SQLite: the process is gone

    second = journal_store.open()
    taken = second.claim_job(job.id, "ctl2", 4321)
    assert taken.epoch > first_epoch.epoch
    writes = [
        lambda: first.append_undo(job.id, "a", {"n": 2}, "undo 2", "s"),
        lambda: first.set_job_state(job.id, JobState.COMMITTED),
        lambda: first.update_job_info(job.id, bytes_transferred=1),
        lambda: first.claim_undo(job.id, 1),
        lambda: first.set_undo_state(job.id, 1, EntryState.DONE, attempts=1, error=None),
        lambda: first.step_started(job.id, "pull"),
        lambda: first.release_locks(job.id),
    ]
    for write in writes:
        with pytest.raises(FencedOut, match=job.id):
            write()
    got = second.get_job(job.id)
    assert got.state is JobState.RUNNING
    assert got.info == {}
    assert (got.owner_host, got.owner_pid) == ("ctl2", 4321)
    assert [(e.seq, e.state) for e in second.undo_entries(job.id)] == [(1, EntryState.PENDING)]
    assert second.steps(job.id) == []
    assert [lock.job_id for lock in second.locks()] == [job.id]  # not released by the stale one
    second.set_job_state(job.id, JobState.ROLLING_BACK)  # the owner still writes


def test_an_entry_is_taken_once_and_only_while_outstanding(journal_store: JournalStore) -> None:
    journal = journal_store.open()
    job = journal.create_job("clone", {})
    journal.append_undo(job.id, "a", {}, "undo", None)
    assert journal.claim_undo(job.id, 1).state is EntryState.PENDING
    journal.set_undo_state(job.id, 1, EntryState.DONE, attempts=1, error=None)
    with pytest.raises(ValueError, match="not outstanding"):
        journal.claim_undo(job.id, 1)
    with pytest.raises(ValueError, match="no undo entry #7"):
        journal.claim_undo(job.id, 7)


def test_no_change_is_recorded_once_a_rollback_has_begun(journal_store: JournalStore) -> None:
    journal = journal_store.open()
    job = journal.create_job("clone", {})
    journal.set_job_state(job.id, JobState.ROLLING_BACK)
    with pytest.raises(Exception, match="refusing to record new changes"):
        journal.append_undo(job.id, "a", {}, "undo", None)
    assert journal.undo_entries(job.id) == []


@pytest.mark.etcd
def test_etcd_takeover_is_refused_while_the_lease_lives_and_allowed_after_it_expired(
    etcd_single: EtcdCluster,
    tmp_path: Path,
) -> None:
    store = JournalStore("etcd", tmp_path, etcd_single.endpoints,
                         f"/expiry-{os.getpid()}-{time.time_ns()}", lease_ttl_s=3)
    try:
        owner = store.open()
        assert isinstance(owner, EtcdJournal)
        job = owner.create_job("clone", {})
        rival = store.open()
        with pytest.raises(OwnerAlive, match=rf"pid {os.getpid()} on .*lease expires in"):
            rival.claim_job(job.id, "ctl2", 1)
        owner.lease.hang()  # the controller hangs: no more keepalives, nothing revoked
        deadline = time.monotonic() + 15
        while owner.lease_valid_for() >= owner.margin_s:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # By its own clock the lease is nearly gone: it may record, but must not act.
        with pytest.raises(JournalUnavailable, match="stops before making the change"):
            owner.append_undo(job.id, "a", {}, "undo", None)
        with pytest.raises(JournalUnavailable, match="stops before running this undo"):
            owner.claim_undo(job.id, 1)
        while True:  # etcd expires the lease (bounded: TTL 3 s)
            try:
                rival.claim_job(job.id, "ctl2", 1)
                break
            except OwnerAlive:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with pytest.raises(FencedOut, match=r"its lease expired|superseded"):
            owner.set_job_state(job.id, JobState.COMMITTED)
        assert rival.get_job(job.id).state is JobState.RUNNING
    finally:
        store.close_all()


RIVAL = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from hotcopy.saga import OwnerAlive, SqliteJournal, Transaction, undo_action
    from hotcopy.saga.etcd_client import EtcdClient
    from hotcopy.saga.etcd_journal import EtcdJournal

    store, job_id, workdir = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    @undo_action("test_fencing.mark", describe="mark {n}")
    def mark(context, params):
        with (workdir / "undone").open("a") as f:
            f.write(f"{params['n']}\\n")
        time.sleep(0.2)  # keep the winner busy while the rival tries

    if store["backend"] == "sqlite":
        journal = SqliteJournal(store["path"])
    else:
        journal = EtcdJournal(EtcdClient(store["endpoints"]), "s1", prefix=store["prefix"])
    (workdir / f"ready-{sys.argv[4]}").touch()
    deadline = time.monotonic() + 30
    while not (workdir / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        report = Transaction(journal, job_id, None, retry_delay=0).rollback()
    except OwnerAlive as exc:
        print("refused", exc.message)
    else:
        print("ran", len(report.done))
    journal.close()
    """
)


def test_two_rollbacks_at_once_exactly_one_runs_the_undos(
    journal_store: JournalStore, tmp_path: Path,
) -> None:
    journal = journal_store.open()
    job = journal.create_job("clone", {})
    for n in range(1, 5):
        journal.append_undo(job.id, "test_fencing.mark", {"n": n}, f"mark {n}", None)
    journal_store.crash(journal)  # the controller died; two operators start a rollback
    store = json.dumps({"backend": journal_store.backend, "path": str(journal_store.path),
                        "endpoints": journal_store.endpoints, "prefix": journal_store.prefix})
    env = {**os.environ, "PYTHONPATH": str(Path(hotcopy.__file__).resolve().parent.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", RIVAL, store, job.id, str(tmp_path),
                               str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline, "the rivals did not start"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = sorted(out.strip() for out, _ in outputs)
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    winners = [r for r in results if r == "ran 4"]
    losers = [r for r in results if r != "ran 4"]
    assert len(winners) == 1, results
    # the loser was refused naming the live winner, or found the job already finished
    assert losers[0] == "ran 0" or losers[0].startswith(f"refused job {job.id} is owned by")
    assert (tmp_path / "undone").read_text().split() == ["4", "3", "2", "1"]
    assert journal_store.open().get_job(job.id).state is JobState.ROLLED_BACK


HOLDER = textwrap.dedent(
    """
    import sys
    from hotcopy.saga import SqliteJournal
    journal = SqliteJournal(sys.argv[1])
    print(journal.create_job("clone", {}).id, flush=True)
    sys.stdin.read()  # alive until the test closes our stdin or kills us
    """
)


def test_sqlite_refuses_a_takeover_while_the_owner_process_lives(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(hotcopy.__file__).resolve().parent.parent)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None
        job_id = holder.stdout.readline().strip()
        journal = SqliteJournal(path)
        with pytest.raises(OwnerAlive, match=rf"job {job_id} is owned by pid {holder.pid} on"):
            journal.claim_job(job_id, "ctl2", os.getpid())
        assert journal.get_job(job_id).owner_pid == holder.pid  # the refusal changed nothing
        holder.kill()
        holder.wait(timeout=30)
        taken = journal.claim_job(job_id, "ctl2", os.getpid())
        assert taken.epoch == 2
        journal.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
