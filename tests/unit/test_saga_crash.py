"""A real process dies by SIGKILL; another one finishes its rollback from the journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import hotcopy
from hotcopy.saga import EntryState, JobState, LockConflict, SqliteJournal, Transaction, undo_action

ACTION = "test_crash.remove_marker"


@undo_action(ACTION, describe="remove marker {n}")
def remove_marker(context: Path, params: Mapping[str, Any]) -> None:
    with (context / "undone").open("a") as f:
        f.write(f"{params['n']}\n")


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from hotcopy.saga import SqliteJournal, Transaction, undo_action

    journal_path, count, kill_during_undo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    workdir = Path(journal_path).parent

    @undo_action("test_crash.remove_marker", describe="remove marker {n}")
    def remove_marker(context, params):
        if params["n"] == kill_during_undo:
            os.kill(os.getpid(), signal.SIGKILL)
        with (workdir / "undone").open("a") as f:
            f.write(f"{params['n']}\\n")

    journal = SqliteJournal(journal_path)
    job = journal.create_job("clone", {"source": "db1", "target": "db2"})
    journal.claim_job(job.id, "child", os.getpid())
    journal.acquire_locks(job.id, ["shard:s1"])
    txn = Transaction(journal, job.id, None, retry_delay=0)
    for n in range(count):
        seq = txn.push("test_crash.remove_marker", {"n": n}, step=f"step-{n}")
        print(job.id, seq, flush=True)
    if kill_during_undo >= 0:
        txn.rollback()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def run_child(tmp_path: Path, count: int, kill_during_undo: int) -> tuple[str, list[int]]:
    src = str(Path(hotcopy.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "journal.sqlite"), str(count),
         str(kill_during_undo)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines()]
    assert lines, proc.stderr
    return lines[0][0], [int(seq) for _, seq in lines]


def undone(tmp_path: Path) -> list[int]:
    path = tmp_path / "undone"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_rollback_after_the_controller_was_sigkilled(tmp_path: Path) -> None:
    job_id, acknowledged = run_child(tmp_path, count=5, kill_during_undo=-1)
    assert acknowledged == [1, 2, 3, 4, 5]
    journal = SqliteJournal(tmp_path / "journal.sqlite")
    job = journal.get_job(job_id)
    assert job.state is JobState.RUNNING
    assert job.owner_host == "child"
    intruder = journal.create_job("clone", {})
    with pytest.raises(LockConflict, match=f"hotcopy rollback {job_id}"):
        journal.acquire_locks(intruder.id, ["shard:s1"])

    entries = journal.undo_entries(job_id)
    assert [(e.seq, e.state, e.step) for e in entries] == [
        (seq, EntryState.PENDING, f"step-{seq - 1}") for seq in acknowledged
    ]
    report = Transaction(journal, job_id, tmp_path).rollback()
    assert report.complete
    assert undone(tmp_path) == [4, 3, 2, 1, 0]
    assert journal.get_job(job_id).state is JobState.ROLLED_BACK
    journal.acquire_locks(intruder.id, ["shard:s1"])
    journal.close()


def test_rollback_killed_midway_is_finished_by_another_process(tmp_path: Path) -> None:
    job_id, acknowledged = run_child(tmp_path, count=6, kill_during_undo=2)
    assert acknowledged == [1, 2, 3, 4, 5, 6]
    assert undone(tmp_path) == [5, 4, 3]  # the child died inside the undo of 2
    journal = SqliteJournal(tmp_path / "journal.sqlite")
    assert journal.get_job(job_id).state is JobState.ROLLING_BACK
    assert [e.seq for e in journal.undo_entries(job_id, [EntryState.PENDING])] == [1, 2, 3]
    report = Transaction(journal, job_id, tmp_path).rollback()
    assert report.complete
    assert undone(tmp_path) == [5, 4, 3, 2, 1, 0]
    assert journal.get_job(job_id).state is JobState.ROLLED_BACK
    journal.close()
