"""Running a workflow's steps against the journal, and resuming it after a crash.

Each step is journaled when it starts and when it ends, with its outputs (plain data
the later steps need). Resume restarts at the first unfinished step's *group*: steps
whose effects do not survive a crash (a lock session, a transfer daemon and its
in-memory secret) share a group, so the whole group is undone and run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hotcopy.errors import HotcopyError, StepFailed
from hotcopy.progress import Reporter
from hotcopy.runtime import Runtime
from hotcopy.saga import FencedOut, Journal, JournalUnavailable, Transaction, UndoEntry
from hotcopy.workflows.faults import Faults

log = logging.getLogger(__name__)


@dataclass
class StepContext:
    """What a running step sees: the job's handles and the outputs of earlier steps."""

    job_id: str
    params: dict[str, Any]
    runtime: Runtime
    journal: Journal
    tx: Transaction
    reporter: Reporter
    faults: Faults
    state: dict[str, Any] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)
    step: str = ""
    held_records: list[Callable[[], None]] | None = None

    def hold_records(self) -> None:
        """Keep step records and job info in memory until :meth:`write_held_records`.

        For the source's lock window: with a quorum journal (etcd) each record is a
        network round trip that would lengthen the write lock. Only bookkeeping is held;
        undo entries are never held (``push`` always writes through), and a crash that
        loses held records leaves the journal as it was when holding began, a state
        resume and rollback already handle (the whole step group is redone or undone).
        """
        if self.held_records is None:
            self.held_records = []

    def write_held_records(self) -> None:
        held, self.held_records = self.held_records or [], None
        for write in held:
            write()

    def record(self, write: Callable[[], None]) -> None:
        if self.held_records is None:
            write()
        else:
            self.held_records.append(write)

    def push(self, action: str, params: dict[str, Any]) -> int:
        """Journal the undo of the change this step is about to make."""
        return self.tx.push(action, params, step=self.step)

    def outstanding(self, *, steps: set[str] | None = None,
                    action: str | None = None) -> list[UndoEntry]:
        return [e for e in self.tx.pending()
                if (steps is None or e.step in steps) and (action is None or e.action == action)]

    def may_act(self, what: str) -> bool:
        """False once this controller may no longer act for the job (its etcd lease has
        lapsed by its own clock, or another controller took the job over).

        For what stops the job's own processes on a host from a watchdog or after a
        failure (transfer.base.unless_deposed says why a deposed controller must not):
        asked without a journal round trip, as etcd may be out of reach just then.
        """
        try:
            self.journal.ensure_may_act(self.job_id, what)
        except (JournalUnavailable, FencedOut) as exc:
            log.warning("%s", exc.message)
            return False
        return True

    def info(self, **items: Any) -> None:
        self.record(lambda: self.journal.update_job_info(self.job_id, **items))


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[StepContext], dict[str, Any] | None]
    group: str = ""

    @property
    def group_name(self) -> str:
        return self.group or self.name


def run_steps(steps: list[Step], ctx: StepContext, *, resume: bool = False) -> None:
    done = {r.name: r for r in ctx.journal.steps(ctx.job_id) if r.outcome == "done"}
    start = 0
    if resume:
        start = _resume_point(steps, done, ctx)
    for step in steps[:start]:
        ctx.state.update(done[step.name].outputs)
    try:
        for step in steps[start:]:
            _run_one(step, ctx)
    finally:
        ctx.write_held_records()  # a step that held them failed before writing them


def _resume_point(steps: list[Step], done: dict[str, Any], ctx: StepContext) -> int:
    first = next((i for i, s in enumerate(steps) if s.name not in done), len(steps))
    if first == len(steps):
        return first
    group = steps[first].group_name
    start = next(i for i, s in enumerate(steps) if s.group_name == group)
    redo = {s.name for s in steps[start:]}
    for entry in reversed(ctx.outstanding(steps=redo)):
        ctx.reporter.note(f"resume: undoing '{entry.label}' so step {entry.step} can run again")
        ctx.tx.exec_remove(entry.seq)
    return start


def _run_one(step: Step, ctx: StepContext) -> None:
    ctx.step = step.name
    ctx.faults.at("before", step.name)
    ctx.record(lambda: ctx.journal.step_started(ctx.job_id, step.name))
    ctx.reporter.step_started(step.name, step.title)
    started = time.monotonic()
    try:
        outputs = step.run(ctx) or {}
    except BaseException as exc:
        ctx.write_held_records()
        ctx.journal.step_finished(ctx.job_id, step.name, "failed", error=str(exc))
        ctx.reporter.step_finished(step.name, "failed", time.monotonic() - started, str(exc))
        if isinstance(exc, HotcopyError | KeyboardInterrupt | SystemExit):
            raise
        raise StepFailed(step.name, exc) from exc
    ctx.record(lambda: ctx.journal.step_finished(ctx.job_id, step.name, "done",
                                                  outputs=outputs))
    ctx.state.update(outputs)
    detail = outputs.get("_detail", "") if isinstance(outputs.get("_detail"), str) else ""
    ctx.reporter.step_finished(step.name, "done", time.monotonic() - started, detail)
    ctx.faults.at("after", step.name)
