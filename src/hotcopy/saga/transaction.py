"""The durable rollback queue: push an undo before each change, run them all on failure.

Each undo is written to the journal before the caller makes the change it reverses, so
the queue survives the process: a fresh Transaction on the same journal, in any process,
sees exactly what is still owed. Undo actions are idempotent and safe when the forward
change never happened, which is what makes "write first, act second" correct even when
a crash lands between the two.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from hotcopy.errors import ExitCode, HotcopyError, Interrupted, RefusedError
from hotcopy.saga.actions import UnknownUndoAction, lookup
from hotcopy.saga.journal import (
    OUTSTANDING,
    TERMINAL_STATES,
    EntryState,
    JobState,
    Journal,
    UndoEntry,
    dump_json,
)

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class UndoFailed(HotcopyError):
    """An undo run early (exec_remove) failed; it stays owed and a rollback retries it."""

    exit_code = ExitCode.ROLLBACK_INCOMPLETE

    def __init__(self, entry: UndoEntry, cause: BaseException) -> None:
        super().__init__(
            f"undo #{entry.seq} ({entry.label}) failed after {entry.attempts} attempt(s): "
            f"{_error_text(cause)}",
            hint=f"it is recorded as failed; `hotcopy rollback {entry.job_id}` retries it",
        )
        self.entry = entry
        self.cause = cause


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, HotcopyError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _what_it_does(entry: UndoEntry) -> str:
    try:
        return f"{entry.action}: {lookup(entry.action).describe_with(entry.params)}"
    except UnknownUndoAction:
        return f"{entry.action} (not registered in this process; its module was not imported)"


@dataclass(frozen=True)
class RollbackReport:
    done: list[UndoEntry]
    failed: list[UndoEntry]

    @property
    def complete(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        """What an operator needs at 3am: what was undone and exactly what is still owed."""
        if self.complete:
            lines = [f"rollback complete: {len(self.done)} undo action(s) ran"]
            lines += [f"  #{e.seq} {e.label}" for e in self.done]
            return "\n".join(lines)
        lines = [
            f"rollback incomplete: {len(self.failed)} undo action(s) failed and must be "
            f"finished by hand or retried ({len(self.done)} ran):"
        ]
        for entry in self.failed:
            error = (entry.error or "unknown error").replace("\n", "\n             ")
            lines += [
                f"  #{entry.seq} {entry.label}",
                f"     error: {error} (after {entry.attempts} attempt(s))",
                f"     would: {_what_it_does(entry)}",
            ]
        job_id = self.failed[0].job_id
        lines.append(
            f"once the cause is fixed, `hotcopy rollback {job_id}` retries them (every undo "
            "is safe to run again)"
        )
        return "\n".join(lines)


def _restore(previous: Mapping[signal.Signals, _Handler]) -> None:
    for sig, handler in previous.items():
        # None means a handler installed outside Python; the default is the closest.
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into Interrupted, so a killed clone unwinds into its rollback.

    Only the main thread can own signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, raise_interrupted) for sig in _SIGNALS}
    try:
        yield
    finally:
        _restore(previous)


@contextmanager
def _hold_signals(message: str, *, redeliver: bool) -> Iterator[None]:
    """Keep SIGINT/SIGTERM from cutting an undo in half, which would leave the fleet in a
    state neither the forward change nor its undo describes. ``redeliver`` hands the
    signal to the previous handler once the undo is recorded instead of dropping it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        log.warning("%s (%s ignored)", message, signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, hold) for sig in _SIGNALS}
    try:
        yield
    finally:
        _restore(previous)
        if redeliver and received:
            signal.raise_signal(received[0])


class Transaction:
    """The rollback queue of one job, kept in its journal rather than in memory."""

    def __init__(
        self, journal: Journal, job_id: str, context: Any, *, retries: int = 3,
        retry_delay: float = 0.5, sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 1:
            raise ValueError("retries counts attempts and must be at least 1")
        if retry_delay < 0:
            raise ValueError("retry_delay must not be negative")
        self.journal = journal
        self.job_id = job_id
        self.context = context
        self.retries = retries
        self.retry_delay = retry_delay
        self._sleep = sleep

    def push(
        self, action: str, params: Mapping[str, Any], *, label: str | None = None,
        step: str | None = None,
    ) -> int:
        """Record how to undo a change; make the change only after this returns."""
        undo = lookup(action)
        dump_json(params)
        # The journal checks, in the same write, that the job is still running and
        # still ours: a rollback racing us never misses a change recorded here.
        entry = self.journal.append_undo(
            self.job_id, action, params, label or undo.describe_with(params), step
        )
        log.info("undo #%d recorded: %s", entry.seq, entry.label)
        log.debug("undo #%d is %s with params %r", entry.seq, action, params)
        return entry.seq

    def pending(self) -> list[UndoEntry]:
        """What is still owed (pending or failed), oldest first."""
        return self.journal.undo_entries(self.job_id, OUTSTANDING)

    def _entry(self, seq: int, allowed: frozenset[EntryState]) -> UndoEntry:
        for entry in self.journal.undo_entries(self.job_id):
            if entry.seq == seq:
                if entry.state not in allowed:
                    wanted = " or ".join(sorted(allowed))
                    raise ValueError(
                        f"undo #{seq} of job {self.job_id} is {entry.state}, not {wanted}"
                    )
                return entry
        raise ValueError(f"job {self.job_id} has no undo entry #{seq}")

    def _attempt(self, entry: UndoEntry) -> tuple[int, Exception | None]:
        """Run one undo with retries; returns (attempts made, last error or None)."""
        try:
            action = lookup(entry.action)
        except UnknownUndoAction as exc:
            return 1, exc  # retrying cannot make the module appear
        delay = self.retry_delay
        error: Exception | None = None
        for attempt in range(1, self.retries + 1):
            try:
                action.fn(self.context, dict(entry.params))
            except Exception as exc:
                error = exc
                log.warning(
                    "undo #%d (%s) failed, attempt %d of %d: %s",
                    entry.seq, entry.label, attempt, self.retries, _error_text(exc),
                )
                if attempt < self.retries:
                    self._sleep(delay)
                    delay *= 2
                continue
            return attempt, None
        return self.retries, error

    def _run(self, entry: UndoEntry) -> tuple[UndoEntry, Exception | None]:
        # Taken in one journal transaction (owner and state checked) before it runs:
        # a deposed owner raises FencedOut here and never starts the undo.
        entry = self.journal.claim_undo(self.job_id, entry.seq)
        made, error = self._attempt(entry)
        attempts = entry.attempts + made
        if error is None:
            state, text = EntryState.DONE, None
        else:
            state, text = EntryState.FAILED, _error_text(error)
        self.journal.set_undo_state(self.job_id, entry.seq, state, attempts=attempts, error=text)
        return UndoEntry(
            entry.job_id, entry.seq, entry.action, entry.params, entry.label, entry.step,
            state, attempts, text, entry.created, time.time(),
        ), error

    def exec_remove(self, seq: int) -> None:
        """Undo one change now, out of order (e.g. unlock the source as soon as possible)."""
        entry = self._entry(seq, frozenset({EntryState.PENDING}))
        log.info("undo #%d now: %s", seq, entry.label)
        with _hold_signals("an undo is running; it will finish first", redeliver=True):
            result, error = self._run(entry)
        if error is not None:
            raise UndoFailed(result, error) from error

    def remove(self, seq: int) -> None:
        """Forget an undo without running it: the change was reversed or is now wanted."""
        entry = self._entry(seq, OUTSTANDING)
        self.journal.set_undo_state(
            self.job_id, seq, EntryState.REMOVED, attempts=entry.attempts, error=entry.error
        )
        log.info("undo #%d dropped: %s", seq, entry.label)

    def rollback(self) -> RollbackReport:
        """Run everything still owed, newest first; a failure never stops the others."""
        job = self.journal.get_job(self.job_id)
        if job.state is JobState.COMMITTED:
            raise RefusedError(
                f"job {self.job_id} is committed; there is nothing to roll back",
                hint="a committed change is undone by a new job, not by a rollback",
            )
        if job.state in TERMINAL_STATES and not self.pending():
            return RollbackReport(done=[], failed=[])
        if self.journal.ownership(self.job_id) is None:
            # A rollback in a fresh process takes the job over first (refused while
            # its owner lives); from here on every write is fenced by that claim.
            self.journal.claim_job(self.job_id, socket.gethostname(), os.getpid())
            job = self.journal.get_job(self.job_id)  # a rival may have finished meanwhile
            if job.state in TERMINAL_STATES and not self.pending():
                return RollbackReport(done=[], failed=[])
        done: list[UndoEntry] = []
        failed: list[UndoEntry] = []
        with _hold_signals("rollback in progress; it will finish", redeliver=False):
            self.journal.set_job_state(self.job_id, JobState.ROLLING_BACK)
            attempted: set[int] = set()
            # Loop: an entry pushed by a racing process while we ran is owed as well.
            while batch := [e for e in self.pending() if e.seq not in attempted]:
                log.info("rolling back job %s: %d undo action(s)", self.job_id, len(batch))
                for entry in reversed(batch):
                    attempted.add(entry.seq)
                    log.info("undo #%d: %s", entry.seq, entry.label)
                    result, error = self._run(entry)
                    (done if error is None else failed).append(result)
            final = JobState.ROLLED_BACK if not failed else JobState.ROLLBACK_INCOMPLETE
            self.journal.set_job_state(self.job_id, final)
            if not failed:
                self.journal.release_locks(self.job_id)
        report = RollbackReport(done=done, failed=failed)
        (log.info if report.complete else log.error)("job %s: %s", self.job_id, report.describe())
        return report

    def commit(self) -> None:
        """Keep every change: the job state is the commit point, the cleanup comes after."""
        job = self.journal.get_job(self.job_id)
        if job.state not in (JobState.RUNNING, JobState.COMMITTED):
            raise RefusedError(f"job {self.job_id} is {job.state}; it cannot be committed")
        outstanding = self.pending()
        self.journal.set_job_state(self.job_id, JobState.COMMITTED)
        for entry in outstanding:
            if entry.state is EntryState.FAILED:
                log.warning("undo #%d (%s) failed earlier and is discarded by the commit",
                            entry.seq, entry.label)
            self.journal.set_undo_state(
                self.job_id, entry.seq, EntryState.REMOVED,
                attempts=entry.attempts, error=entry.error,
            )
        self.journal.release_locks(self.job_id)
        log.info("job %s committed", self.job_id)
