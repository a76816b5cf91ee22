"""The transactional engine: undo entries as durable data, run back in any process.

``saga`` knows nothing above it: the parts that make changes register their undo
actions by name, and the workflows pass an opaque context the actions understand.
"""

from hotcopy.saga.actions import (
    UndoAction,
    UndoFn,
    UnknownUndoAction,
    lookup,
    registered,
    undo_action,
)
from hotcopy.saga.journal import (
    OUTSTANDING,
    STEP_OUTCOMES,
    TERMINAL_STATES,
    EntryState,
    FencedOut,
    Job,
    JobNotFound,
    JobState,
    Journal,
    JournalUnavailable,
    LockConflict,
    LockInfo,
    OwnerAlive,
    Ownership,
    StepRecord,
    UndoEntry,
    dump_json,
    new_job_id,
)
from hotcopy.saga.sqlite_journal import SqliteJournal
from hotcopy.saga.transaction import RollbackReport, Transaction, UndoFailed, signals_as_exceptions

__all__ = [
    "OUTSTANDING",
    "STEP_OUTCOMES",
    "TERMINAL_STATES",
    "EntryState",
    "FencedOut",
    "Job",
    "JobNotFound",
    "JobState",
    "Journal",
    "JournalUnavailable",
    "LockConflict",
    "LockInfo",
    "OwnerAlive",
    "Ownership",
    "RollbackReport",
    "SqliteJournal",
    "StepRecord",
    "Transaction",
    "UndoAction",
    "UndoEntry",
    "UndoFailed",
    "UndoFn",
    "UnknownUndoAction",
    "dump_json",
    "lookup",
    "new_job_id",
    "registered",
    "signals_as_exceptions",
    "undo_action",
]
