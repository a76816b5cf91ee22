"""The job report behind ``hotcopy show``: the journal, summarised for people and scripts."""

from __future__ import annotations

from typing import Any

from hotcopy.saga import Journal

# Step outputs worth showing at the top level of the report.
_HEADLINE_KEYS = ("source_lock_ms", "source_replication_paused_ms", "bytes_transferred",
                  "literal_bytes", "catchup_s", "verify_source_paused_ms",
                  # issue 13: what the clone cost end to end, and how warm the target is
                  "target_downtime_ms", "time_to_caught_up_ms", "verify_ms",
                  "snapshot_drop_ms", "buffer_pool_dump", "buffer_pool_loaded",
                  "buffer_pool_load_status", "dirty_pages_before", "dirty_pages_after",
                  "preflush_outcome", "preflush_reason")


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
        "state": job.state.value,
        "source": job.params.get("source"),
        "target": job.params.get("target"),
        "pipeline": job.params.get("pipeline", "snapshot"),
        "created": job.created,
        "updated": job.updated,
        "controller": {"host": job.owner_host, "pid": job.owner_pid},
        "error": job.error or job.info.get("failure"),
    }
    for key in _HEADLINE_KEYS:
        report[key] = job.info.get(key, outputs.get(key))
    report["coordinates"] = outputs.get("coordinates")
    report["snapshot"] = outputs.get("snapshot")
    report["verified"] = outputs.get("verified")
    report["tables_checked"] = outputs.get("tables_checked")
    report["audit"] = outputs.get("audit")
    report["steps"] = step_rows
    report["undo"] = undo
    report["outstanding_undo"] = [u for u in undo if u["state"] in ("pending", "failed")]
    return report
