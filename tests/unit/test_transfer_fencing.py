"""A transfer that fails and would start again first proves the controller still owns
the job (a fenced journal write), on both journal backends.

Real processes (the stand-in client fails once with rsync's retryable exit 10, and on
its second run leaves a file), the real retry loop of the rsync methods, the clone's
own fenced retry hook, and a real SQLite journal or etcd. The owner is deposed just
before the retry: the retry must then raise FencedOut and start nothing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from hotcopy.errors import CommandError
from hotcopy.hosts import LocalExecutor
from hotcopy.progress import NullReporter
from hotcopy.saga import FencedOut, Journal, Transaction
from hotcopy.transfer.base import TransferRequest, marker
from hotcopy.transfer.rsyncd import run_clients
from hotcopy.workflows.faults import Faults
from hotcopy.workflows.runner import StepContext
from hotcopy.workflows.target_steps import _fenced_retry
from tests.journals import JournalStore

#: Fails the first time (exit 10, as rsync does on a broken socket), then succeeds and
#: leaves proof that it ran again.
CLIENT = 'if [ -e "$1" ]; then : > "$2"; exit 0; fi; : > "$1"; exit 10'


def request_with(job_id: str, before_retry: Callable[[int], None]) -> TransferRequest:
    return TransferRequest(job_id, "src", "dst", "127.0.0.1", "127.0.0.1", "/nonexistent",
                           "/nonexistent", [], None, None, 60, 2, before_retry=before_retry)


def context(journal: Journal, job_id: str) -> StepContext:
    return StepContext(job_id, {}, None, journal, Transaction(journal, job_id, None),  # type: ignore[arg-type]
                       NullReporter(), Faults([]))


def client(tmp_path: Path) -> tuple[list[str], Path]:
    retried = tmp_path / "retried"
    return ["sh", "-c", CLIENT, "client", str(tmp_path / "failed-once"), str(retried)], retried


def test_the_owner_retries_and_the_journal_shows_it(journal_store: JournalStore,
                                                    tmp_path: Path) -> None:
    journal = journal_store.open()
    job = journal.create_job("clone", {"source": "src", "target": "dst"})
    argv, retried = client(tmp_path)
    request = request_with(job.id, _fenced_retry(context(journal, job.id)))
    result = run_clients(LocalExecutor(), request, [argv], lambda *_: None,
                         stall_timeout_s=60, retryable={10})
    assert retried.exists()
    assert result.attempts == 2
    assert journal.get_job(job.id).info["transfer_attempt"] == 2


def test_a_deposed_controller_restarts_nothing(journal_store: JournalStore,
                                               tmp_path: Path) -> None:
    first = journal_store.open()
    job = first.create_job("clone", {"source": "src", "target": "dst"})
    fenced = _fenced_retry(context(first, job.id))
    second = journal_store.open()

    def deposed_then_fenced(attempt: int) -> None:
        journal_store.crash(first)  # its lease ran out (etcd) / another process took over
        second.claim_job(job.id, "ctl2", 4321)
        fenced(attempt)

    argv, retried = client(tmp_path)
    with pytest.raises(FencedOut, match=job.id):
        run_clients(LocalExecutor(), request_with(job.id, deposed_then_fenced), [argv],
                    lambda *_: None, stall_timeout_s=60, retryable={10})
    assert not retried.exists(), "the deposed controller started the client again"
    assert "transfer_attempt" not in second.get_job(job.id).info


def marked_sleeper(job_id: str) -> subprocess.Popen[bytes]:
    """A process of the job's transfer as the new owner's resume would start it: the
    same marker in its environment, so a kill by marker would find it."""
    return subprocess.Popen(["sh", "-c", "sleep 60"], env={**os.environ, **dict(
        [marker(job_id).split("=", 1)])})


@pytest.mark.parametrize("deposed", [False, True], ids=["owner", "deposed"])
def test_after_a_failed_stream_only_the_owner_stops_the_jobs_processes(
    journal_store: JournalStore, tmp_path: Path, deposed: bool,
) -> None:
    """One stream fails for good: the owner stops the job's other processes (its own
    streams) at once; a deposed controller stops none, as they may be the new owner's."""
    first = journal_store.open()
    job = first.create_job("clone", {"source": "src", "target": "dst"})
    if deposed:
        journal_store.crash(first)
        journal_store.open().claim_job(job.id, "ctl2", 4321)
    other = marked_sleeper(job.id)
    try:
        request = replace(request_with(job.id, lambda attempt: None),
                          may_act=context(first, job.id).may_act)
        with pytest.raises(CommandError):
            run_clients(LocalExecutor(), request, [["sh", "-c", "exit 1"]], lambda *_: None,
                        stall_timeout_s=60, retryable={10})
        if deposed:
            assert other.poll() is None, "a deposed controller killed the job's processes"
        else:
            assert other.wait(timeout=30) is not None, "the owner left the job's process"
    finally:
        other.kill()
        other.wait(timeout=30)
