"""Dropping the snapshot while the target starts and catches up: off the critical path.

Destroying the source's snapshot (and stopping the transfer server before it) took
1.5 s at 4 GB in the benchmark, serially between the copy and the target's swap, and
nothing on the target needs it. So ``drop_snapshot`` runs after the swap and only
*starts* the drop in a thread; the target starts, is pointed at the master and catches
up meanwhile, and ``finish_drop``, just before the commit, waits for it. (Waiting at
the end of ``start_target`` still cost 0.4-0.8 s of every clone in the benchmark: the
new mysqld answered in 0.3 s, the drop took 0.6-1.1 s.) The undo entries of the
transfer server and of the snapshot are claimed in the journal before the thread runs
them (a deposed controller is stopped there) and are marked done only after the drop
finished: a crash in between leaves them outstanding, so a rollback or a resume runs
them again (both are idempotent), and a failure of any step in between lets the drop
end (``settle``) before the rollback runs what is still owed. All journal writes stay
on the steps' own thread; the drop thread only runs the undo actions on the source host.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hotcopy.errors import HotcopyError
from hotcopy.progress import human_duration
from hotcopy.saga import EntryState, UndoEntry
from hotcopy.saga.actions import lookup
from hotcopy.workflows import target_steps, timing
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)

DROP_STEPS = {"serve", "snapshot"}
ATTEMPTS = 3
RETRY_DELAY_S = 0.5


@dataclass
class _Drop:
    """The background drop: which entries it runs and how each ended."""

    entries: list[UndoEntry]
    errors: dict[int, str] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    thread: threading.Thread | None = None

    def run(self, context: Any) -> None:
        for entry in self.entries:  # newest first: the server stops before its snapshot goes
            for attempt in range(1, ATTEMPTS + 1):
                self.attempts[entry.seq] = attempt
                try:
                    lookup(entry.action).fn(context, dict(entry.params))
                except Exception as exc:  # recorded, reported by the joiner
                    self.errors[entry.seq] = str(exc) or type(exc).__name__
                    log.warning("undo #%d (%s) failed, attempt %d of %d: %s", entry.seq,
                                entry.label, attempt, ATTEMPTS, exc)
                    if attempt < ATTEMPTS:
                        time.sleep(RETRY_DELAY_S * attempt)
                    continue
                self.errors.pop(entry.seq, None)
                break
        self.ended = time.monotonic()


def drop_snapshot(ctx: StepContext) -> dict[str, Any]:
    """Claim the drop's undo entries, then run them in the background."""
    entries = list(reversed(ctx.outstanding(steps=DROP_STEPS)))
    ctx.live.pop("transfer", None)
    if not entries:
        return {"_detail": "nothing to drop"}
    claimed = [ctx.journal.claim_undo(ctx.job_id, entry.seq) for entry in entries]
    drop = _Drop(claimed)
    drop.thread = threading.Thread(target=drop.run, args=(ctx.runtime,), name="drop-snapshot",
                                   daemon=True)
    ctx.live["drop"] = drop
    drop.thread.start()
    return {"_detail": "started; the target starts meanwhile"}


def finish_drop(ctx: StepContext, timeout_s: float) -> dict[str, Any]:
    """Wait for the background drop and journal how each entry ended; a drop that
    was never started here (a resumed job) runs now, in the foreground."""
    drop: _Drop | None = ctx.live.pop("drop", None)
    if drop is None or drop.thread is None:
        started = time.monotonic()
        owed = list(reversed(ctx.outstanding(steps=DROP_STEPS)))
        for entry in owed:
            ctx.tx.exec_remove(entry.seq)
        ms = round((time.monotonic() - started) * 1000, 1)
        return {"snapshot_drop_ms": ms, "snapshot_drop_waited_ms": None,
                "_detail": (f"snapshot dropped in {human_duration(ms / 1000)}, in the "
                            "foreground (a resumed job)" if owed else "nothing to drop")}
    waited_from = time.monotonic()
    drop.thread.join(timeout_s)
    waited_ms = round((time.monotonic() - waited_from) * 1000, 1)
    if drop.thread.is_alive():
        # Left outstanding, and left for settle() to wait for once more before the
        # rollback that follows runs them again.
        ctx.live["drop"] = drop
        raise HotcopyError(f"step 'drop_snapshot': destroying the snapshot took more than "
                           f"{timeout_s:.0f} s", hint="see the source's snapshot tool")
    _journal_outcome(ctx, drop)
    if drop.errors:
        failed = ", ".join(f"undo #{seq}: {text}" for seq, text in drop.errors.items())
        raise HotcopyError(f"step 'drop_snapshot' failed: {failed}",
                           hint="the rollback retries it; see the source's snapshot tool")
    assert drop.ended is not None
    return {"snapshot_drop_ms": round((drop.ended - drop.started) * 1000, 1),
            "snapshot_drop_waited_ms": waited_ms}


def _journal_outcome(ctx: StepContext, drop: _Drop) -> None:
    for entry in drop.entries:
        error = drop.errors.get(entry.seq)
        state = EntryState.DONE if error is None else EntryState.FAILED
        ctx.journal.set_undo_state(ctx.job_id, entry.seq, state,
                                   attempts=entry.attempts + drop.attempts.get(entry.seq, 0),
                                   error=error)


def settle(ctx: StepContext) -> None:
    """Before a rollback: let a background drop finish and journal it, so the rollback
    never runs the same undo at the same time (it runs whatever is left owed)."""
    drop: _Drop | None = ctx.live.pop("drop", None)
    if drop is None or drop.thread is None:
        return
    drop.thread.join(ctx.runtime.config.clone.start_timeout_s)
    if drop.thread.is_alive():
        log.error("the snapshot drop is still running; the rollback runs its undo again")
        return
    _journal_outcome(ctx, drop)


def start_target(ctx: StepContext) -> dict[str, Any]:
    """Start the new target; the snapshot drop runs on beside it (``finish_drop``)."""
    outputs = target_steps.start_target(ctx)
    outputs.update(timing.record_downtime(ctx))
    if "drop" in ctx.live:
        outputs["_detail"] = (f"{outputs.get('_detail', '')}; the snapshot drop goes on in "
                              "the background").lstrip("; ")
    return outputs


def await_drop(ctx: StepContext) -> dict[str, Any]:
    """The commit needs the snapshot gone: wait here for the background drop."""
    outputs = finish_drop(ctx, ctx.runtime.config.clone.start_timeout_s)
    waited = outputs.get("snapshot_drop_waited_ms")
    if waited is not None:
        outputs["_detail"] = (f"snapshot dropped in the background in "
                              f"{human_duration(outputs['snapshot_drop_ms'] / 1000)}; "
                              f"waited {human_duration(waited / 1000)} for it here")
    return outputs
