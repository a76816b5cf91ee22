"""Why the fault matrices kill only at ``before:<first step>`` and ``after:<every step>``.

``kill-before:Y`` and ``kill-after:X`` (Y right after X) leave the same journal and the
same hosts: the runner writes nothing and runs nothing between the two points. The
integration matrices therefore test each distinct crash state once; this test keeps
that reasoning true (it fails if the runner starts doing work between two steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hotcopy.errors import StepFailed
from hotcopy.progress import NullReporter
from hotcopy.saga import SqliteJournal, Transaction, undo_action
from hotcopy.workflows.clone import STEPS
from hotcopy.workflows.faults import Faults
from hotcopy.workflows.runner import Step, StepContext, run_steps

from ..fault_points import kill_points
from ..journals import RecordingJournal


@undo_action("test_fault_boundaries.noop", describe="nothing, for step {step}")
def _noop(context: Any, params: Mapping[str, Any]) -> None:
    """The undo of the steps' stand-in change."""


class RecordingFaults(Faults):
    def __init__(self, events: list[tuple[str, ...]]) -> None:
        super().__init__([])
        self._events = events

    def at(self, when: str, step: str) -> None:
        self._events.append(("fault", when, step))


def test_nothing_durable_happens_between_one_step_and_the_next(tmp_path: Path) -> None:
    events: list[tuple[str, ...]] = []
    with SqliteJournal(tmp_path / "journal.db") as real:
        job = real.create_job("clone", {})
        journal = RecordingJournal(real, lambda name: events.append(("journal", name)))

        def work(ctx: StepContext) -> dict[str, Any]:
            ctx.push("test_fault_boundaries.noop", {"step": ctx.step})
            return {ctx.step: True}

        steps = [Step(name, name, work) for name in ("first", "second", "third")]
        tx = Transaction(journal, job.id, None)
        ctx = StepContext(job.id, {}, None, journal, tx, NullReporter(),  # type: ignore[arg-type]
                          RecordingFaults(events))
        run_steps(steps, ctx)
    faults = [i for i, event in enumerate(events) if event[0] == "fault"]
    for after, before in zip(faults[1::2], faults[2::2], strict=False):
        assert events[after][1:] != events[before][1:]
        assert events[after][1] == "after" and events[before][1] == "before"
        assert before == after + 1, f"work between {events[after]} and {events[before]}: " \
                                    f"{events[after + 1:before]}"
    assert [events[i] for i in faults] == [
        ("fault", when, name) for name in ("first", "second", "third")
        for when in ("before", "after")]


def test_the_kill_points_are_every_distinct_crash_state_of_the_clone() -> None:
    names = [step.name for step in STEPS]
    points = kill_points(names)
    assert points[0] == ("before", names[0])
    assert points[1:] == [("after", name) for name in names]


def test_records_held_in_a_lock_window_are_written_after_it_and_before_a_failure(
    tmp_path: Path,
) -> None:
    """What the source's lock window relies on: held step records reach the journal when
    the window's last step lets go of them, and before the record of a step that failed
    while they were held (a rollback must find the journal complete)."""
    with SqliteJournal(tmp_path / "journal.db") as journal:
        def lock(ctx: StepContext) -> dict[str, Any]:
            ctx.push("test_fault_boundaries.noop", {"step": ctx.step})
            ctx.hold_records()
            ctx.info(locked=True)
            return {"locked": True}

        def under_lock(ctx: StepContext) -> dict[str, Any]:
            assert [r.name for r in journal.steps(ctx.job_id)] == ["lock"]
            assert "locked" not in journal.get_job(ctx.job_id).info
            return {"position": 42}

        def release(ctx: StepContext) -> dict[str, Any]:
            ctx.write_held_records()
            return {}

        def failing(ctx: StepContext) -> dict[str, Any]:
            raise RuntimeError("the snapshot failed")

        good = journal.create_job("clone", {})
        run_steps([Step("lock", "", lock), Step("record", "", under_lock),
                   Step("release", "", release)], _context(journal, good.id))
        assert [(r.name, r.outcome) for r in journal.steps(good.id)] == [
            ("lock", "done"), ("record", "done"), ("release", "done")]
        assert {r.name: r.outputs for r in journal.steps(good.id)}["record"] == {"position": 42}
        assert journal.get_job(good.id).info["locked"] is True

        bad = journal.create_job("clone", {})
        ctx = _context(journal, bad.id)
        with pytest.raises(StepFailed, match="the snapshot failed"):
            run_steps([Step("lock", "", lock), Step("record", "", under_lock),
                       Step("snapshot", "", failing)], ctx)
        assert [(r.name, r.outcome) for r in journal.steps(bad.id)] == [
            ("lock", "done"), ("record", "done"), ("snapshot", "failed")]
        assert ctx.held_records is None


def _context(journal: SqliteJournal, job_id: str) -> StepContext:
    return StepContext(job_id, {}, None, journal, Transaction(journal, job_id, None),  # type: ignore[arg-type]
                       NullReporter(), Faults([]))
