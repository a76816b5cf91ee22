"""The job report behind ``hotcopy show``: the journal, summarised for people and scripts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hotcopy.saga import Job, JobState, Journal

# Step outputs worth showing at the top level of the report.
_HEADLINE_KEYS = ("source_lock_ms", "source_replication_paused_ms", "bytes_transferred",
                  "literal_bytes", "catchup_s", "verify_source_paused_ms",
                  # issue 13: what the clone cost end to end, and how warm the target is
                  "target_downtime_ms", "time_to_caught_up_ms", "verify_ms",
                  "snapshot_drop_ms", "snapshot_drop_waited_ms", "buffer_pool_dump",
                  "buffer_pool_loaded",
                  "buffer_pool_load_status", "dirty_pages_before", "dirty_pages_after",
                  "preflush_outcome", "preflush_reason",
                  # the latency throttle: its state (live, then final) and what it cost
                  "pacing", "pacing_cost_s")

#: How often a running copy writes its progress into the journal, for ``show``.
PROGRESS_JOURNAL_INTERVAL_S = 5.0


class ProgressRecorder:
    """Writes a running copy's progress into the job's info, at most every interval
    (and always the first reading and the last), so that ``hotcopy show`` of a running
    job can say how far it is from any process."""

    def __init__(self, record: Callable[..., None],
                 interval_s: float = PROGRESS_JOURNAL_INTERVAL_S) -> None:
        self._record = record
        self._interval_s = interval_s
        self._last: float | None = None

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = bool(total) and total is not None and done >= total
        if self._last is None or now - self._last >= self._interval_s or finished:
            self._last = now
            self._record(progress_bytes=done, progress_total=total, progress_at=time.time())


def job_report(journal: Journal, job_id: str) -> dict[str, Any]:
    job = journal.get_job(job_id)
    steps = journal.steps(job_id)
    outputs: dict[str, Any] = {}
    step_rows = []
    for record in steps:
        outputs.update(record.outputs)
        step_rows.append({
            "name": record.name,
            "started": record.started,
            "ended": record.ended,
            "ms": (None if record.ended is None
                   else round((record.ended - record.started) * 1000, 1)),
            "outcome": record.outcome,
            "attempt": record.attempt,
            "detail": record.outputs.get("_detail", ""),
            "error": record.error,
        })
    undo = [{"seq": e.seq, "action": e.action, "label": e.label, "step": e.step,
             "state": e.state.value, "attempts": e.attempts, "error": e.error}
            for e in journal.undo_entries(job_id)]
    report: dict[str, Any] = {
        "job": job.id,
        "kind": job.kind,
        "state": display_state(job),
        "source": job.params.get("source"),
        "target": job.params.get("target"),
        "pipeline": job.params.get("pipeline", "snapshot"),
        "created": job.created,
        "updated": job.updated,
        "controller": {"host": job.owner_host, "pid": job.owner_pid},
        "error": job_error(job),
    }
    for key in _HEADLINE_KEYS:
        report[key] = job.info.get(key, outputs.get(key))
    report["coordinates"] = outputs.get("coordinates")
    report["snapshot"] = outputs.get("snapshot")
    report["verified"] = outputs.get("verified")
    report["tables_checked"] = outputs.get("tables_checked")
    report["audit"] = outputs.get("audit")
    report["transfer_method"] = outputs.get("transfer_method") or job.params.get("transfer")
    report["total_s"] = _total_s(job, step_rows)
    report["live"] = _live(job, step_rows)
    report["steps"] = step_rows
    report["undo"] = undo
    report["outstanding_undo"] = [u for u in undo if u["state"] in ("pending", "failed")]
    return report


def display_state(job: Job) -> str:
    """A preflight refusal (exit 2) reads as ``refused``, not as a failure of the fleet.

    The journal keeps the engine's state (``failed``: nothing to undo); the refusal is
    recorded beside it, so scripts see the same verdict as the exit code gave.
    """
    if job.state is JobState.FAILED and job.info.get("refused"):
        return "refused"
    return job.state.value


def job_error(job: Job) -> str | None:
    """Why the job ended; a rolled-back job keeps the failure that started the rollback."""
    return job.error or job.info.get("failure")


def _total_s(job: Job, steps: list[dict[str, Any]]) -> float | None:
    ends = [s["ended"] for s in steps if s["ended"] is not None]
    if not steps or not ends:
        return None
    return round(float(max(ends)) - float(min(s["started"] for s in steps)), 3)


def _live(job: Job, steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For a running job: the step under way and, in a copy, the bytes so far."""
    if job.terminal or not steps or steps[-1]["ended"] is not None:
        return None
    current = steps[-1]
    return {"step": current["name"], "since": current["started"],
            "bytes_done": job.info.get("progress_bytes"),
            "bytes_expected": job.info.get("progress_total"),
            "progress_at": job.info.get("progress_at")}
