"""Steps 3-8 of the procedure: quiesce the source, snapshot it, give it back at once.

The source is a production replica: everything here is ordered so that the SQL thread
is stopped for as short a time as possible and writes are blocked for milliseconds.
Expensive waits (flushing dirty pages) happen before replication is paused.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hotcopy.hosts import files
from hotcopy.mysql import locks, replication
from hotcopy.snapshot.base import SnapshotPlan, load_backend
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)

QUIESCE_STEPS = {"preflush", "stop_sql_thread", "lock_source"}


def stop_sql_thread(ctx: StepContext) -> dict[str, Any]:
    server = ctx.runtime.server(ctx.params["source"])
    ctx.push("mysql.start_sql_thread", {"server": server.name})
    # From here until release_source restarts the SQL thread, step records and job info
    # wait in memory (StepContext.hold_records): with a quorum journal each would be a
    # network round trip inside the source's replication pause and write lock.
    ctx.hold_records()
    stopped_at = time.time()
    server.execute(server.flavor.stop_sql_thread())
    return {"sql_thread_stopped_at": stopped_at}


def lock_source(ctx: StepContext) -> dict[str, Any]:
    server = ctx.runtime.server(ctx.params["source"])
    config = ctx.runtime.config.clone
    session = server.new_session()
    user = session.scalar("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")
    ctx.push("mysql.release_lock_session",
             {"server": server.name, "thread_id": session.thread_id, "user": user})
    # The SQL thread is stopped: flush now what the lock would otherwise wait for, so
    # the work done under the lock (engine log flush, snapshot commit) is small.
    sql, args = server.flavor.flush_engine_logs()
    session.execute(sql, args)
    datadir = ctx.runtime.config.server(server.name).datadir
    files.flush_to_disk(ctx.runtime.executor(server.name), datadir, timeout=600)
    # The snapshot's undo is journaled now, not under the lock: with a quorum journal
    # that write is a network round trip the source's writers would wait for. Until the
    # snapshot exists, destroying it is a no-op (every backend's destroy is idempotent).
    plan = SnapshotPlan.from_dict(ctx.state["snapshot_plan"])
    ctx.tx.push(f"snapshot.{plan.backend}.destroy", plan.as_dict(), step="snapshot")
    try:
        held = locks.acquire(
            session, server.flavor, lock_wait_timeout_s=config.lock_wait_timeout_s,
            attempts=config.lock_attempts, retry_delay_s=config.lock_retry_delay_s,
            on_retry=lambda n, stage: ctx.reporter.warning(
                f"`{stage}` timed out on {server.name} (attempt {n} of {config.lock_attempts})"
                "; released" + (", retrying" if n < config.lock_attempts else "")))
    except locks.LockNotAcquired as exc:
        session.close()
        ctx.info(lock_attempts=len(exc.waits_ms), lock_waits_ms=_rounded(exc.waits_ms))
        raise
    except BaseException:
        session.close()
        raise
    ctx.live["lock"] = held
    ctx.info(lock_attempts=held.attempts, lock_waits_ms=_rounded(held.waits_ms))
    detail = "" if held.attempts == 1 else \
        f"attempt {held.attempts}; waited {', '.join(_ms(ms) for ms in held.waits_ms)}"
    return {"lock_thread_id": session.thread_id, "lock_attempts": held.attempts,
            "lock_waits_ms": _rounded(held.waits_ms), "_detail": detail}


def _rounded(values: list[float]) -> list[float]:
    return [round(value, 1) for value in values]


def record_position(ctx: StepContext) -> dict[str, Any]:
    """Under the lock: make InnoDB commits durable, then read the position."""
    held: locks.HeldLock = ctx.live["lock"]
    sql, args = held.flavor.flush_engine_logs()
    held.conn.execute(sql, args)
    coords = replication.record_coordinates(held.conn, held.flavor)
    detail = (f"{coords.gtid_variable}={coords.gtid}" if coords.gtid else
              f"{coords.master_log_file}:{coords.master_log_pos}")
    return {"coordinates": coords.as_dict(), "_detail": detail}


def snapshot(ctx: StepContext) -> dict[str, Any]:
    source = ctx.params["source"]
    executor = ctx.runtime.executor(source)
    plan = SnapshotPlan.from_dict(ctx.state["snapshot_plan"])
    backend = load_backend(plan.backend, ctx.runtime.config.server(source))
    # Its undo was journaled by lock_source, before the lock was waited for (seconds,
    # at worst): make sure this controller still owns the job before acting on it.
    ctx.journal.ensure_may_act(ctx.job_id, "taking the snapshot")
    # Only the instant part happens under the lock; exposing it (a ZFS clone or an LVM
    # snapshot mount can take a second on a busy host) waits for release_source.
    backend.create_snapshot(executor, plan)
    return {"snapshot": plan.as_dict(), "_detail": plan.snapshot}


def release_source(ctx: StepContext) -> dict[str, Any]:
    """Unlock, restart the SQL thread, restore the flush setting: in that order, at once."""
    server = ctx.runtime.server(ctx.params["source"])
    lock_ms: float | None = None
    held: locks.HeldLock | None = ctx.live.pop("lock", None)
    if held is not None:  # first, before any journal round trip
        lock_ms = held.release()
        held.conn.close()
    outstanding = list(reversed(ctx.outstanding(steps=QUIESCE_STEPS)))
    if held is not None:
        # Our lock is gone: the SQL thread next, then the rest newest first (stable sort).
        # Resumed after a crash, the lock's session is killed first, as it may linger.
        outstanding.sort(key=lambda e: e.action != "mysql.start_sql_thread")
    for entry in outstanding:
        if entry.action == "mysql.release_lock_session" and held is not None:
            ctx.tx.remove(entry.seq)
        else:
            ctx.tx.exec_remove(entry.seq)
        if entry.action == "mysql.start_sql_thread":
            stopped_at = ctx.state.get("sql_thread_stopped_at")
            if stopped_at is not None:
                ctx.state["source_replication_paused_ms"] = (time.time() - stopped_at) * 1000
    ctx.write_held_records()
    paused_ms = ctx.state.get("source_replication_paused_ms")
    ctx.info(source_lock_ms=lock_ms, source_replication_paused_ms=paused_ms)
    status = replication.single_channel(server)
    if status is not None and status.sql_running != "Yes":
        ctx.reporter.warning(f"{server.name}: SQL thread did not restart: {status.last_sql_error}")
    plan = SnapshotPlan.from_dict(ctx.state["snapshot"])
    load_backend(plan.backend).expose(ctx.runtime.executor(ctx.params["source"]), plan)
    return {"source_lock_ms": lock_ms, "source_replication_paused_ms": paused_ms,
            "_detail": f"write lock {_ms(lock_ms)}, replication paused {_ms(paused_ms)}"}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"
