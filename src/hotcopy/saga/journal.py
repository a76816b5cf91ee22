"""What a journal stores and promises, independent of where it stores it.

The journal is the only memory a rollback can trust after a crash: the controller may
be gone, so everything needed to finish its work (which job, which undo entries in
which state, which resources it holds) must be in here, written before the change it
protects. SQLite is the default backend; a distributed one (etcd) implements the same
Protocol, which is why the types below are plain data and not ORM rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from hotcopy.errors import ExitCode, HotcopyError, RefusedError

log = logging.getLogger(__name__)


class JobState(StrEnum):
    RUNNING = "running"
    ROLLING_BACK = "rolling-back"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"
    ROLLBACK_INCOMPLETE = "rollback-incomplete"
    FAILED = "failed"
    """Failed before anything changed: there is nothing to undo."""


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.COMMITTED, JobState.ROLLED_BACK, JobState.FAILED}
)
"""A job in one of these owes the fleet nothing, so its locks are stale."""


class EntryState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    """The undo ran to completion."""
    REMOVED = "removed"
    """Discarded without running: the forward change was reversed or committed."""
    FAILED = "failed"
    """The undo was attempted and failed after its retries; still owed."""


OUTSTANDING: frozenset[EntryState] = frozenset({EntryState.PENDING, EntryState.FAILED})
"""Entries a rollback still has to run."""

STEP_OUTCOMES: frozenset[str] = frozenset({"running", "done", "failed", "skipped"})


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    state: JobState
    params: dict[str, Any]
    info: dict[str, Any]
    created: float
    updated: float
    owner_host: str | None = None
    owner_pid: int | None = None
    error: str | None = None
    owner_epoch: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class UndoEntry:
    job_id: str
    seq: int
    action: str
    params: dict[str, Any]
    label: str
    step: str | None
    state: EntryState
    attempts: int = 0
    error: str | None = None
    created: float = 0.0
    finished: float | None = None

    @property
    def outstanding(self) -> bool:
        return self.state in OUTSTANDING


@dataclass(frozen=True)
class StepRecord:
    job_id: str
    name: str
    started: float
    ended: float | None
    outcome: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempt: int = 1


class JobNotFound(RefusedError):
    """The user named a job this journal has never seen: usually a typo or another journal."""

    def __init__(self, job_id: str, where: str = "the journal") -> None:
        super().__init__(
            f"no job '{job_id}' in {where}",
            hint="`hotcopy jobs --config FILE` lists the jobs this journal knows; check that "
            "the config points at the same journal the job was started with",
        )
        self.job_id = job_id


class LockConflict(RefusedError):
    """Another unfinished job holds a resource: starting now could undo or clobber its work."""

    def __init__(
        self, resource: str, holder: str, holder_state: str, *,
        owner_host: str | None = None, owner_pid: int | None = None,
    ) -> None:
        owner = f" (controller {owner_host} pid {owner_pid})" if owner_host else ""
        super().__init__(
            f"'{resource}' is locked by job {holder}{owner}, which is {holder_state}",
            hint=f"if that job's controller is gone, finish it with `hotcopy rollback {holder}` "
            f"or continue it with `hotcopy resume {holder}`; `hotcopy show {holder}` shows "
            "where it stopped",
        )
        self.resource = resource
        self.holder = holder
        self.holder_state = holder_state


@dataclass(frozen=True)
class Ownership:
    """The token a controller holds for a job; every write it makes is checked against it.

    ``epoch`` only grows: SQLite counts claims, etcd uses the owner key's create
    revision. A write whose epoch is no longer the job's current one is refused, which
    is what keeps a deposed controller from recording (and so making) another change.
    """

    job_id: str
    epoch: int
    host: str
    pid: int
    since: float
    lease_id: int | None = None


@dataclass(frozen=True)
class LockInfo:
    """One row of ``hotcopy locks``: who holds what, and whether it is still alive."""

    resource: str
    job_id: str
    job_state: str | None
    host: str | None
    pid: int | None
    since: float
    lease_remaining_s: float | None = None
    """etcd: seconds left on the holder's lease (<= 0: expired); SQLite: None."""


class FencedOut(HotcopyError):
    """This process no longer owns the job: another controller took it over (or its
    lease expired). It must stop before its next change and leave the job to the owner."""

    exit_code = ExitCode.ROLLBACK_INCOMPLETE

    def __init__(self, job_id: str, why: str) -> None:
        super().__init__(
            f"job {job_id}: this controller no longer owns it ({why}); it stopped without "
            "making another change",
            hint=f"`hotcopy show {job_id}` shows who owns it now and where it stands",
        )
        self.job_id = job_id


class OwnerAlive(RefusedError):
    """Another live controller owns the job: acting now would race it."""

    def __init__(self, job_id: str, holder: str) -> None:
        super().__init__(
            f"job {job_id} is owned by {holder}, which is still alive; nothing was changed",
            hint="wait for it to finish, or stop it (SIGTERM rolls it back); once its "
            "process or lease is gone, `hotcopy rollback`/`resume` can take the job over",
        )
        self.job_id = job_id
        self.holder = holder


class JournalUnavailable(HotcopyError):
    """The journal cannot be reached: no change may be made that it cannot record first."""

    exit_code = ExitCode.ROLLBACK_INCOMPLETE


def refuse_unless_running(job_id: str, state: str) -> None:
    """Checked inside the write that appends an undo: another process may be rolling
    the job back, and a change recorded now would be made behind its back."""
    if state != JobState.RUNNING.value:
        raise RefusedError(
            f"job {job_id} is {state}; refusing to record new changes for it",
            hint=f"`hotcopy show {job_id}` shows what happened to it",
        )


def hotcopy_pid_alive(pid: int | None) -> bool:
    """Is ``pid`` a live hotcopy process on this host? A recycled pid running something
    else does not count, which is why the command line is read too."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"hotcopy" in handle.read()
    except OSError:
        return False


def new_job_id(now: float | None = None) -> str:
    """Short, sortable (UTC time first), easy to type, unique enough with a retry on clash."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def _check_json(value: Any, path: str) -> None:
    # json.dumps alone would silently turn {1: x} into {"1": x} and accept NaN, so an
    # undo read back after a crash could differ from what was pushed. Refuse instead.
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path} is {value!r}, which JSON cannot hold")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has a non-string key {key!r}; JSON keys are strings")
            _check_json(item, f"{path}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
        return
    raise TypeError(
        f"{path} is a {type(value).__name__}, which is not JSON-serialisable; "
        "journal entries must be plain data (str, int, float, bool, None, list, dict)"
    )


def dump_json(value: Mapping[str, Any], what: str = "params") -> str:
    """Canonical JSON for a journal column; TypeError before anything is written."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping, not {type(value).__name__}")
    _check_json(value, what)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Journal(Protocol):
    """Durable store of jobs, undo entries, step records and resource locks.

    Every method that writes has made its write durable before it returns, so a caller
    may act on the assumption that a crash right after the call loses nothing.
    """

    def create_job(
        self, kind: str, params: Mapping[str, Any], job_id: str | None = None
    ) -> Job: ...

    def get_job(self, job_id: str) -> Job: ...

    def list_jobs(self, limit: int = 50) -> list[Job]: ...

    def set_job_state(self, job_id: str, state: JobState, error: str | None = None) -> None:
        """``error=None`` keeps the recorded error: the first failure still explains a
        job after its rollback finished."""
        ...

    def update_job_info(self, job_id: str, /, **items: Any) -> None: ...

    def claim_job(self, job_id: str, host: str, pid: int) -> Ownership:
        """Make this journal instance the job's owner, in one atomic check-and-set.

        Raises OwnerAlive while another live controller owns it (same host and its pid
        alive for SQLite; its lease alive for etcd). From here on, every write this
        instance makes for the job is a compare-and-set against the returned epoch and
        raises FencedOut once another instance has claimed the job. ``create_job``
        claims the new job for its creator.
        """
        ...

    def ownership(self, job_id: str) -> Ownership | None:
        """The token this instance holds for the job, if it claimed or created it."""
        ...

    def claim_undo(self, job_id: str, seq: int) -> UndoEntry:
        """Take an outstanding entry to run it: owner and entry state checked in one
        transaction, so a deposed controller never starts an undo. ValueError if the
        entry is not outstanding (someone ran or dropped it)."""
        ...

    def ensure_may_act(self, job_id: str, what: str) -> None:
        """Raise FencedOut or JournalUnavailable unless this instance may still make a
        change it journaled a while ago (``what`` names it in the message): for etcd, its
        lease is valid by its own clock for a margin (no round trip); for SQLite, no other
        process claimed the job.

        ``append_undo`` checks this itself; a step calls it when time passes between
        journaling an undo and making its change (the snapshot's undo is journaled before
        the source's lock is waited for)."""
        ...

    def locks(self) -> list[LockInfo]: ...

    def append_undo(
        self, job_id: str, action: str, params: Mapping[str, Any], label: str,
        step: str | None,
    ) -> UndoEntry: ...

    def set_undo_state(
        self, job_id: str, seq: int, state: EntryState, *, attempts: int, error: str | None
    ) -> None: ...

    def undo_entries(
        self, job_id: str, states: Collection[EntryState] | None = None
    ) -> list[UndoEntry]: ...

    def step_started(self, job_id: str, name: str) -> None: ...

    def step_finished(
        self, job_id: str, name: str, outcome: str,
        outputs: Mapping[str, Any] | None = None, error: str | None = None,
    ) -> None: ...

    def steps(self, job_id: str) -> list[StepRecord]: ...

    def acquire_locks(self, job_id: str, resources: Sequence[str]) -> None:
        """All or nothing; raises LockConflict if a non-terminal job holds any of them.

        Locks of terminal jobs are stale and taken over, so a crashed job that was later
        rolled back never blocks the shard; a rollback-incomplete one does, on purpose.
        """
        ...

    def release_locks(self, job_id: str) -> None: ...

    def close(self) -> None: ...
