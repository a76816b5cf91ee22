"""The clone workflow: DESIGN.md's procedure as a list of steps, plus its lifecycle.

``clone`` runs it under the durable rollback queue; any exception, SIGINT or SIGTERM
rolls everything back. ``resume`` continues a job whose controller died; ``rollback``
finishes undoing one. All three work from the journal alone, in a fresh process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

# Importing these registers the undo actions a rollback in a fresh process may need.
import hotcopy.hosts.files
import hotcopy.mysql.undo  # noqa: F401
from hotcopy.errors import ExitCode, HotcopyError, RefusedError
from hotcopy.hosts import files
from hotcopy.progress import Reporter, acknowledge_signals, human_duration
from hotcopy.runtime import Runtime
from hotcopy.saga import (
    FencedOut,
    Job,
    JobState,
    Journal,
    JournalUnavailable,
    RollbackReport,
    Transaction,
    signals_as_exceptions,
)
from hotcopy.snapshot import base as snapshot_base
from hotcopy.transfer import base as transfer_base
from hotcopy.workflows import (
    backup_steps,
    clone_hooks,
    overlap,
    preflight,
    preflush,
    source_steps,
    target_steps,
    timing,
    warm,
)
from hotcopy.workflows.faults import Faults
from hotcopy.workflows.runner import Step, StepContext, run_steps

log = logging.getLogger(__name__)

snapshot_base.load_all()
transfer_base.load_all()


def _preflight(ctx: StepContext) -> dict[str, Any]:
    report = preflight.run(ctx.runtime, ctx.journal, ctx.params["source"], ctx.params["target"],
                           ctx.job_id, transfer=ctx.params.get("transfer"))
    for finding in report.findings:
        if finding.severity == "warning":
            ctx.reporter.warning(finding.message)
    report.raise_if_errors()
    facts = report.facts
    pipeline = ctx.params.get("pipeline") or "snapshot"
    if facts.get("pipeline") != pipeline:
        raise RefusedError(f"this job was started for the {pipeline} pipeline, but the "
                           f"preflight now finds the {facts.get('pipeline')} one fits the "
                           f"source's datadir; nothing was changed",
                           hint="its storage changed meanwhile: clone again")
    return {**facts, "_detail": f"{facts['ship_bytes'] / 1e6:.1f} MB in "
                                f"{facts['ship_files']} files to ship; pipeline {pipeline}"}


def _lock_job(ctx: StepContext) -> dict[str, Any]:
    # Two fleets may share one journal (etcd): a lock names the shard, not just "db2".
    shard = ctx.params.get("shard") or ctx.runtime.config.shard.name
    ctx.journal.acquire_locks(ctx.job_id, [f"server:{shard}/{ctx.params['source']}",
                                           f"server:{shard}/{ctx.params['target']}"])
    return {}


def _crash_safety(ctx: StepContext) -> dict[str, Any]:
    """The new replica must survive its own crash: fix what can be fixed online, report."""
    from hotcopy.workflows.audit import audit_after_clone

    report = audit_after_clone(ctx.runtime, ctx.params["target"])
    fixed = report.get("fixed") or []
    verdict = "crash-safe" if report.get("crash_safe") else "NOT crash-safe"
    if not report.get("crash_safe"):
        ctx.reporter.warning(f"{ctx.params['target']} is not crash-safe: see `hotcopy show` "
                             "or `hotcopy audit`")
    return {"audit": report,
            "_detail": verdict + (f"; fixed: {', '.join(fixed)}" if fixed else "")}


def _commit(ctx: StepContext) -> dict[str, Any]:
    """Commit first, clean up after: the old datadir is what a rollback would restore.

    Removing it before the job is committed would let a crash in between leave a job
    whose rollback "succeeds" with the target still on the new datadir.
    """
    old = ctx.state.get("old_datadir")
    target = ctx.params["target"]
    keep = ctx.runtime.config.clone.keep_old_datadir
    # The new datadir is on disk before the old one stops being the way back: the copy
    # was written through the page cache, and nothing else waits for it to reach disk.
    flushing_from = time.monotonic()
    files.flush_to_disk(ctx.runtime.executor(target), ctx.runtime.config.server(target).datadir)
    flush_s = time.monotonic() - flushing_from
    ctx.tx.commit()
    # Half-way: committed, the old datadir not yet removed (what `hotcopy cleanup` is for).
    ctx.faults.progress("commit", 0.5)
    flushed = {"datadir_flush_ms": round(flush_s * 1000, 1)}
    on_disk = f"new datadir flushed to disk in {human_duration(flush_s)}; "
    if not old or keep:
        return {"old_datadir_kept": bool(old), **flushed,
                "_detail": on_disk + (f"old datadir kept at {old}" if old else "no old datadir")}
    try:
        files.remove_tree(ctx.runtime.executor(target), old)
    except HotcopyError as exc:
        # The clone is committed; a failed cleanup must not turn it into a failure.
        ctx.reporter.warning(f"committed, but the old datadir {old} on {target} could not be "
                             f"removed ({exc.message}); remove it by hand")
        return {"old_datadir_kept": True, "old_datadir_left": old, **flushed,
                "_detail": on_disk + f"old datadir left at {old}: remove it by hand"}
    return {"old_datadir_kept": False, **flushed, "_detail": on_disk + "old datadir removed"}


STEPS: list[Step] = [
    Step("preflight", "check both servers, read-only", _preflight),
    Step("lock_job", "take the job lock on source and target", _lock_job),
    Step("hook_pre_clone", "run the pre_clone hook (it may veto the clone)",
         clone_hooks.pre_clone),
    Step("preflush", "flush InnoDB dirty pages on the source", preflush.preflush, "source"),
    Step("dump_buffer_pool", "dump the source's buffer pool list for a warm target",
         warm.dump_buffer_pool, "source"),
    Step("stop_sql_thread", "stop the source's replication SQL thread",
         source_steps.stop_sql_thread, "source"),
    Step("lock_source", "take the backup lock on the source", source_steps.lock_source, "source"),
    Step("record_position", "flush engine logs and record the replication position",
         source_steps.record_position, "source"),
    Step("snapshot", "snapshot the source datadir", source_steps.snapshot, "source"),
    Step("release_source", "unlock the source and restart its SQL thread",
         source_steps.release_source),
    Step("prepare_target", "make the staging directory on the target",
         target_steps.prepare_target),
    Step("serve", "start the transfer server on the source", target_steps.serve, "transfer"),
    Step("pull", "copy the snapshot to the target", target_steps.pull, "transfer"),
    Step("hook_before_stop_target", "run the before_stop_target hook (drain the target)",
         clone_hooks.before_stop_target),
    Step("stop_target", "stop mysqld on the target", timing.stop_target),
    Step("swap_datadir", "move the old datadir aside and install the new one",
         target_steps.swap_datadir),
    Step("drop_snapshot", "stop the transfer server and destroy the snapshot (in the "
         "background)", overlap.drop_snapshot),
    Step("start_target", "start mysqld on the target (InnoDB recovery)", overlap.start_target),
    Step("change_master", "point the target at the master at the recorded position",
         target_steps.change_master),
    Step("catch_up", "wait for the target to catch up", timing.catch_up),
    Step("verify", "compare table checksums of source and target", timing.verify_step),
    Step("buffer_pool_load", "check the target loaded the source's buffer pool list",
         warm.check_load),
    Step("crash_safety", "make the new replica crash-safe and audit it", _crash_safety),
    Step("finish_drop", "wait for the background snapshot drop to end",
         overlap.await_drop),
    Step("commit", "commit: remove the old datadir", _commit),
    Step("hook_after_commit", "run the after_commit hook (put the target back)",
         clone_hooks.after_commit),
]


def _shared(first: str, last: str) -> list[Step]:
    names = [step.name for step in STEPS]
    return STEPS[names.index(first):names.index(last) + 1]


# Without a snapshot: a streamed hot backup, prepared on the target; from stop_target on,
# the same steps. Listener, stream and prepare redo together on resume (a token and a
# half-sent stream do not survive a crash, an interrupted prepare is not trusted).
BACKUP_STEPS: list[Step] = [
    *_shared("preflight", "hook_pre_clone"),
    Step("prepare_target", "make the staging directory on the target",
         target_steps.prepare_target),
    Step("listen", "start the backup stream listener on the target", backup_steps.listen,
         "backup"),
    Step("backup_stream", "stream a hot backup of the source into the staging directory",
         backup_steps.backup_stream, "backup"),
    Step("stop_stream", "stop the listener, remove the job's files on both hosts",
         backup_steps.stop_stream, "backup"),
    Step("prepare_backup", "prepare the backup on the target, read its position",
         backup_steps.prepare_backup, "backup"),
    # No snapshot to drop here.
    *[step for step in _shared("hook_before_stop_target", "hook_after_commit")
      if step.name not in ("drop_snapshot", "finish_drop")],
]

PIPELINES: dict[str, list[Step]] = {"snapshot": STEPS, "backup": BACKUP_STEPS}


def steps_for(pipeline: str | None) -> list[Step]:
    """A job's step list; jobs journaled before there was a choice ran the snapshot one."""
    return PIPELINES[pipeline or "snapshot"]


@dataclass
class Outcome:
    job: Job
    exit_code: ExitCode
    error: HotcopyError | None = None
    rollback: RollbackReport | None = None


def plan(runtime: Runtime, journal: Journal, source: str, target: str,
         transfer: str | None = None) -> preflight.Preflight:
    """What --dry-run prints: the read-only checks; the caller renders STEPS beside them."""
    return preflight.run(runtime, journal, source, target, transfer=transfer)


def _context(runtime: Runtime, journal: Journal, job: Job, reporter: Reporter) -> StepContext:
    tx = Transaction(journal, job.id, runtime)
    return StepContext(job.id, dict(job.params), runtime, journal, tx, reporter,
                       Faults.from_environment())


def start(runtime: Runtime, journal: Journal, source: str, target: str,
          reporter: Reporter, *, transfer: str | None = None) -> Outcome:
    runtime.config.server(source)
    runtime.config.server(target)
    faults = Faults.from_environment()  # a bad HOTCOPY_FAULT is refused before any job exists
    job = journal.create_job("clone", {"source": source, "target": target,
                                       "shard": runtime.config.shard.name,
                                       "servers": {name: server_identity(runtime, name)
                                                   for name in (source, target)},
                                       "transfer": transfer,
                                       "pipeline": preflight.pipeline_for(runtime, source),
                                       "config": runtime.config.source_path})
    ctx = _context(runtime, journal, job, reporter)
    ctx.faults = faults
    return _execute(ctx, resume=False)


def server_identity(runtime: Runtime, name: str) -> dict[str, Any]:
    """What the job's undo entries act on: where the server is and its datadir."""
    conf = runtime.config.server(name)
    return {"host": conf.host, "port": conf.port, "ssh": conf.ssh, "datadir": conf.datadir}


def refuse_other_config(runtime: Runtime, job: Job) -> None:
    """A rollback or resume acts with the config given now: it must name the job's servers.

    Its undo entries say "server replica2", not where replica2 is; a config of another
    shard (or an edited one) would restart, move and remove things on other hosts.
    """
    config = runtime.config
    shard = job.params.get("shard")
    if shard is not None and shard != config.shard.name:
        raise RefusedError(f"job {job.id} belongs to shard {shard}, but "
                           f"{config.source_path} is shard {config.shard.name}",
                           hint=f"pass the config the job was started with "
                                f"({job.params.get('config')}); nothing was changed")
    for name, recorded in (job.params.get("servers") or {}).items():
        now = server_identity(runtime, name) if name in config.servers else None
        if now != recorded:
            found = "does not name it" if now is None else f"says {now}"
            raise RefusedError(f"job {job.id} worked on {name} = {recorded}, but "
                               f"{config.source_path} {found}",
                               hint=f"pass the config the job was started with "
                                    f"({job.params.get('config')}); nothing was changed")


def resume(runtime: Runtime, journal: Journal, job_id: str, reporter: Reporter) -> Outcome:
    job = journal.get_job(job_id)
    refuse_other_config(runtime, job)
    if job.terminal:
        raise RefusedError(f"job {job.id} is {job.state}; there is nothing to resume")
    if job.state in (JobState.ROLLING_BACK, JobState.ROLLBACK_INCOMPLETE):
        raise RefusedError(f"job {job.id} was rolling back; finish with `hotcopy rollback "
                           f"{job.id}`")
    return _execute(_context(runtime, journal, job, reporter), resume=True)


def rollback(runtime: Runtime, journal: Journal, job_id: str, reporter: Reporter) -> Outcome:
    job = journal.get_job(job_id)
    refuse_other_config(runtime, job)
    if job.terminal:
        raise RefusedError(f"job {job.id} is {job.state}; there is nothing to roll back")
    # Refused (OwnerAlive) while another live controller owns the job; the claim is
    # one atomic check-and-set, so of two racing rollbacks exactly one gets here.
    journal.claim_job(job.id, socket.gethostname(), os.getpid())
    tx = Transaction(journal, job.id, runtime)
    with signals_as_exceptions():
        report = tx.rollback()
    for entry in report.done:
        reporter.note(f"undone: {entry.label}")
    clone_hooks.on_rollback(runtime, journal, job.id, job.params, reporter)
    job = journal.get_job(job.id)
    if report.complete:
        return Outcome(job, ExitCode.OK, rollback=report)
    return Outcome(job, ExitCode.ROLLBACK_INCOMPLETE, HotcopyError(report.describe()), report)


def _execute(ctx: StepContext, *, resume: bool) -> Outcome:
    journal, job_id = ctx.journal, ctx.job_id
    journal.claim_job(job_id, socket.gethostname(), os.getpid())
    journal.set_job_state(job_id, JobState.RUNNING)
    try:
        with signals_as_exceptions(), acknowledge_signals(ctx.reporter):
            run_steps(steps_for(ctx.params.get("pipeline")), ctx, resume=resume)
            ctx.tx.commit()
    except (FencedOut, JournalUnavailable):
        # The journal can no longer record an undo for us: any change we make now,
        # including an undo, would be one the job's next owner cannot see. Stop.
        log.error("job %s: stopped without touching a host; the journal's owner (or, "
                  "after the lease expires, `hotcopy rollback %s`) finishes it",
                  job_id, job_id)
        raise
    except BaseException as exc:
        error = exc if isinstance(exc, HotcopyError) else HotcopyError(f"unexpected error: {exc!r}")
        log.debug("clone %s failed", job_id, exc_info=True)
        return _roll_back_after(ctx, error)
    finally:
        ctx.runtime.close()
    return Outcome(journal.get_job(job_id), ExitCode.OK)


def _roll_back_after(ctx: StepContext, error: HotcopyError) -> Outcome:
    journal, job_id = ctx.journal, ctx.job_id
    overlap.settle(ctx)  # a snapshot drop still running in the background ends first
    live_lock = ctx.live.pop("lock", None)
    if live_lock is not None:
        live_lock.conn.close()  # the server drops a session's backup lock with the session
    if journal.get_job(job_id).state is JobState.COMMITTED:
        # Past the commit point only cleanup can fail; the clone itself stands.
        ctx.reporter.warning(f"{error.message} (after the commit: the clone stands)")
        return Outcome(journal.get_job(job_id), ExitCode.OK, error)
    if not ctx.tx.pending():
        if isinstance(error, RefusedError):
            journal.update_job_info(job_id, refused=True)  # shown as "refused", as exit 2
        journal.set_job_state(job_id, JobState.FAILED, error=str(error))
        journal.release_locks(job_id)
        code = ExitCode.REFUSED if isinstance(error, RefusedError) else ExitCode.FAILED_ROLLED_BACK
        return Outcome(journal.get_job(job_id), code, error)
    ctx.reporter.warning(f"{error.message}; rolling back")
    journal.update_job_info(job_id, failure=str(error))
    report = ctx.tx.rollback()
    for entry in report.done:
        ctx.reporter.note(f"undone: {entry.label}")
    clone_hooks.on_rollback(ctx.runtime, journal, job_id, ctx.params, ctx.reporter)
    if report.complete:
        journal.release_locks(job_id)
    job = journal.get_job(job_id)
    if report.complete:
        return Outcome(job, ExitCode.FAILED_ROLLED_BACK, error, report)
    # The operator needs both: why the clone stopped, and exactly what is still owed.
    incomplete = HotcopyError(f"{error.message}\n{report.describe()}", hint=error.hint)
    return Outcome(job, ExitCode.ROLLBACK_INCOMPLETE, incomplete, report)
