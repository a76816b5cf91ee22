"""Where the journal lives, and when hotcopy may create it.

The journal is the only record of what a job changed; ``rollback JOB`` needs the one
the job wrote. A mistyped ``[journal] path`` that silently became a new, empty journal
would split the history: the next clone would not see a running job, and a rollback
would find nothing to undo. So a missing journal directory is refused (exit 2) unless
the operator asks for it, and read-only commands never create anything.
"""

from __future__ import annotations

import logging
import os

from hotcopy.config import Config
from hotcopy.errors import RefusedError
from hotcopy.saga import SqliteJournal

log = logging.getLogger(__name__)

CREATE_FLAG = "--create-journal"


def open_journal(config: Config, *, writes: bool = False,
                 create_directory: bool = False) -> SqliteJournal:
    """The config's journal; ``writes``: a job may start, so a missing file is created.

    Without ``writes`` nothing is created: a journal file that does not exist yet is
    an empty journal in memory (a plan on a fresh control host still works).
    """
    path = os.path.abspath(config.journal_path())
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        if not (writes and create_directory):
            raise RefusedError(
                f"the journal directory {directory} does not exist (journal "
                f"{path}, from [journal] path in {config.source_path} or the default)",
                hint=f"if the path is right, create it with `install -d -m 0700 {directory}` "
                     f"or let a clone create it with `hotcopy clone {CREATE_FLAG} ...`; if it "
                     "is a typo, fix [journal] path: the jobs so far are in the journal "
                     "they were written to")
        log.info("creating the journal directory %s", directory)
    return SqliteJournal(path, create=writes)
