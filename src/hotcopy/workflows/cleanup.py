"""`hotcopy cleanup`: remove what committed clones left behind.

A clone commits first and cleans up after (the old datadir is what a rollback would
restore, so it must outlive the commit point). A controller that dies in between, or
a removal that fails, leaves the old datadir behind on a job that is already committed:
`rollback` refuses such a job and `resume` has nothing to resume, so this is the
command that finishes the work. It also finds a staging directory left beside the
datadir, and undo entries that a committed job tried to run early (exec_remove: destroy
the snapshot, stop the transfer daemon, remove a one-time secret) and that failed, then
were discarded by the commit: those are re-run, as the step that pushed them meant.

Only paths a job names as its own (``<datadir>.hotcopy-old-JOB``,
``<datadir>.hotcopy-new-JOB``) are removed, never a datadir a mysqld runs on, and never
an old datadir the configuration or the job asked to keep. ``dry_run`` only reads.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any

from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor, files
from hotcopy.runtime import Runtime
from hotcopy.saga import EntryState, Job, JobState, Journal, UndoEntry, lookup

log = logging.getLogger(__name__)

#: How many recent jobs are searched; older ones were cleaned by earlier runs or by hand.
JOB_WINDOW = 1000


@dataclass(frozen=True)
class Leftover:
    job: str
    server: str
    kind: str  # old_datadir | staging | undo
    what: str  # a path, or an undo entry's description
    seq: int | None = None
    done: bool = False
    error: str | None = None


def _resolved(executor: Executor, path: str) -> str:
    out = executor.run(["readlink", "-f", "--", path], check=False, timeout=30)
    return out.stdout.strip() if out.ok and out.stdout.strip() else path


def _commit_outputs(journal: Journal, job: Job) -> tuple[bool, dict[str, Any]]:
    """(commit step finished, its outputs)."""
    for step in reversed(journal.steps(job.id)):
        if step.name == "commit":
            return step.outcome == "done", dict(step.outputs or {})
    return False, {}


def _kept_on_purpose(runtime: Runtime, journal: Journal, job: Job) -> bool:
    finished, outputs = _commit_outputs(journal, job)
    if finished:
        return bool(outputs.get("old_datadir_kept")) and not outputs.get("old_datadir_left")
    # The controller died before the commit step could say: the configuration decides.
    return runtime.config.clone.keep_old_datadir


def _paths(runtime: Runtime, journal: Journal, job: Job) -> list[Leftover]:
    target = str(job.params.get("target") or "")
    try:
        datadir = runtime.config.server(target).datadir.rstrip("/")
    except HotcopyError:
        log.info("job %s: its target %r is not in this config; skipped", job.id, target)
        return []
    executor = runtime.executor(target)
    found = []
    candidates = [("staging", f"{datadir}.hotcopy-new-{job.id}")]
    if not _kept_on_purpose(runtime, journal, job):
        candidates.append(("old_datadir", f"{datadir}.hotcopy-old-{job.id}"))
    live = _resolved(executor, datadir)
    for kind, path in candidates:
        if not executor.exists(path):
            continue
        if _resolved(executor, path) == live:
            log.warning("%s on %s is the live datadir; not touched", path, target)
            continue
        found.append(Leftover(job.id, target, kind, path))
    return found


def _discarded_failures(journal: Journal, job: Job) -> list[UndoEntry]:
    """Undos the job ran early that failed, then were discarded by the commit."""
    return [e for e in journal.undo_entries(job.id, states=[EntryState.REMOVED])
            if e.error is not None and e.attempts > 0]


def find(runtime: Runtime, journal: Journal) -> list[Leftover]:
    """Everything committed jobs left behind; reads only."""
    found: list[Leftover] = []
    for job in journal.list_jobs(limit=JOB_WINDOW):
        if job.state is not JobState.COMMITTED or job.kind != "clone":
            continue
        found.extend(_paths(runtime, journal, job))
        for entry in _discarded_failures(journal, job):
            server = str(entry.params.get("server") or entry.params.get("host") or "")
            found.append(Leftover(job.id, server, "undo", entry.label, seq=entry.seq))
    return found


def _remove(runtime: Runtime, journal: Journal, item: Leftover) -> None:
    if item.kind == "undo":
        # Every undo action a clone step may push (snapshot backends, transfer methods,
        # the steps' own) is registered by importing the workflow, as rollback does.
        import hotcopy.workflows.clone  # noqa: F401

        assert item.seq is not None
        # Recording the outcome is a fenced write like every other: the job must be ours
        # first (a committed job's controller may still be alive: then OwnerAlive says so).
        journal.claim_job(item.job, socket.gethostname(), os.getpid())
        entry = next(e for e in journal.undo_entries(item.job) if e.seq == item.seq)
        lookup(entry.action).fn(runtime, dict(entry.params))
        journal.set_undo_state(item.job, entry.seq, EntryState.DONE,
                               attempts=entry.attempts + 1, error=None)
        return
    files.remove_tree(runtime.executor(item.server), item.what)


def run(runtime: Runtime, journal: Journal, *, dry_run: bool) -> list[Leftover]:
    """Find, and unless ``dry_run`` remove, each leftover; one failure stops no other."""
    found = find(runtime, journal)
    if dry_run:
        return found
    results = []
    for item in found:
        try:
            _remove(runtime, journal, item)
        except Exception as exc:  # an undo action may raise anything; report, go on
            text = exc.message if isinstance(exc, HotcopyError) else f"{type(exc).__name__}: {exc}"
            log.warning("cleanup of %s (job %s) failed: %s", item.what, item.job, text)
            results.append(Leftover(**{**asdict(item), "error": text}))
            continue
        log.info("cleanup: removed %s of job %s on %s", item.what, item.job, item.server)
        results.append(Leftover(**{**asdict(item), "done": True}))
    return results
