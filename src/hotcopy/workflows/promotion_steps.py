"""What switchover and failover share: the shard lock, hooks, waits, repointing, and the
lifecycle around a point of no return.

Before the point of no return every change has its undo journaled and any failure
rolls all of them back. The point of no return is the moment the new master becomes
writable: from then on clients may commit on it, so putting the old master back would
lose their writes. Crossing it drops the remaining undo entries (recording that it was
crossed, durably); a later failure leaves the job running and holding the shard lock,
exits 3 with what is left to do, and `hotcopy resume JOB` finishes it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from hotcopy.errors import ExitCode, HotcopyError, RefusedError
from hotcopy.hooks import run_hook
from hotcopy.mysql import replication, repoint
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.mysql.flavor import promotion as sql
from hotcopy.mysql.server import Server
from hotcopy.progress import Reporter
from hotcopy.runtime import Runtime
from hotcopy.saga import JobState, Journal, Transaction, signals_as_exceptions
from hotcopy.workflows import clone
from hotcopy.workflows.faults import Faults
from hotcopy.workflows.runner import Step, StepContext, run_steps

log = logging.getLogger(__name__)

PONR = "point_of_no_return"
KINDS = ("switchover", "failover")


class Attention(HotcopyError):
    """Past the point of no return: nothing is rolled back, a human finishes the job."""

    exit_code = ExitCode.ROLLBACK_INCOMPLETE


def lock_shard(ctx: StepContext) -> dict[str, Any]:
    """The whole shard: a clone or another promotion must not run beside this one."""
    names = sorted(ctx.runtime.config.servers)
    ctx.journal.acquire_locks(ctx.job_id, [f"shard:{ctx.runtime.config.shard.name}",
                                           *(f"server:{n}" for n in names)])
    return {"_detail": f"shard {ctx.runtime.config.shard.name}, servers {', '.join(names)}"}


def hook_env(ctx: StepContext, old: str, new: str) -> dict[str, str]:
    env = {"HOTCOPY_JOB_ID": ctx.job_id, "HOTCOPY_KIND": str(ctx.params.get("kind", "")),
           "HOTCOPY_OLD_MASTER": old, "HOTCOPY_NEW_MASTER": new}
    for prefix, name in (("HOTCOPY_OLD_MASTER", old), ("HOTCOPY_NEW_MASTER", new)):
        address = ctx.runtime.address(name)
        env[f"{prefix}_HOST"] = address.host
        env[f"{prefix}_PORT"] = str(address.port)
    return env


def hook(ctx: StepContext, name: str) -> dict[str, Any]:
    run_hook(ctx.runtime.config, name, hook_env(ctx, ctx.state["old_master"],
                                                ctx.state["new_master"]), ctx.reporter)
    argv = getattr(ctx.runtime.config.hooks, name)
    return {"_detail": "ran" if argv else "none configured"}


def wait_position(ctx: StepContext, name: str, position: str, timeout_s: float) -> None:
    """MASTER_GTID_WAIT, bounded; a replica that cannot get there says so."""
    server = ctx.runtime.server(name)
    started = time.monotonic()
    result = server.scalar(server.flavor.wait_for_gtid(position, timeout_s))
    if result is None or int(result) != 0:
        raise HotcopyError(f"{name} did not reach {position} within {timeout_s:g}s",
                           hint=f"`hotcopy topology` shows where {name} stands and why")
    log.info("%s reached %s after %.2fs", name, position, time.monotonic() - started)


def cross_point_of_no_return(ctx: StepContext, new_master: str) -> None:
    """Drop every undo still owed, then record the crossing; both durable before return."""
    for entry in ctx.tx.pending():
        ctx.tx.remove(entry.seq)
    ctx.info(**{PONR: time.time(), "new_master": new_master})
    ctx.reporter.note(f"point of no return: {new_master} is the master now")


def repoint_all(ctx: StepContext, names: list[str], master: str) -> dict[str, Any]:
    """Every replica onto ``master``; one failing does not stop the others."""
    failed: dict[str, str] = {}
    for name in names:
        try:
            repoint.point_at(ctx.runtime, name, master)
        except HotcopyError as exc:
            failed[name] = exc.message
            ctx.reporter.warning(f"{name} could not be repointed at {master}: {exc.message}")
    if failed:
        raise HotcopyError("not repointed: " + "; ".join(f"{n}: {e}" for n, e in failed.items()),
                           hint=f"make each replicate from {master} with CHANGE MASTER TO ... "
                                "MASTER_USE_GTID=slave_pos, or fix the cause and run "
                                "`hotcopy resume JOB`")
    return {"repointed": names, "_detail": f"{', '.join(names) or 'none'} on {master}"}


#: How long a replica just told START SLAVE may take to have both threads running: its
#: IO thread says "Connecting" until the master has answered.
THREADS_START_S = 30.0


def _wait_running(server: Server, timeout_s: float) -> ReplicaStatus | None:
    """The channel once both threads run, or as it was when a thread stopped with an
    error or the time ran out (a replica already at the master's position has nothing
    to wait for, so it is asked here straight after its START SLAVE)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = replication.single_channel(server)
        if status is None or status.running or time.monotonic() >= deadline:
            return status
        if "No" in (status.io_running, status.sql_running) and (
                status.last_io_error or status.last_sql_error):
            return status
        time.sleep(0.1)


def verify_replicating(ctx: StepContext, names: list[str], master: str) -> dict[str, Any]:
    """Each replicates from the master, both threads running, and reached its position."""
    address = ctx.runtime.address(master)
    goal = str(ctx.runtime.server(master).scalar(sql.binlog_pos()) or "")
    timeout = ctx.runtime.config.promotion.gtid_wait_timeout_s
    problems = []
    for name in names:
        server = ctx.runtime.server(name)
        try:
            if not repoint.replicates_from(server, address.host, address.port):
                problems.append(f"{name} does not replicate from {master}")
                continue
            if goal:
                wait_position(ctx, name, goal, timeout)
            status = _wait_running(server, min(timeout, THREADS_START_S))
            if status is None or not status.running:
                why = ((status.last_io_error or status.last_sql_error or
                        f"IO thread {status.io_running}, SQL thread {status.sql_running}")
                       if status else "no channel")
                problems.append(f"{name}: replication not running ({why})")
        except HotcopyError as exc:
            problems.append(f"{name}: {exc.message}")
    if problems:
        raise HotcopyError("verify: " + "; ".join(problems))
    return {"verified_at": goal, "_detail": f"{len(names)} server(s) replicate from {master} "
                                            f"and reached {goal}"}


def passed_point_of_no_return(journal: Journal, job_id: str) -> bool:
    return bool(journal.get_job(job_id).info.get(PONR))


def context(runtime: Runtime, journal: Journal, job_id: str, reporter: Reporter) -> StepContext:
    job = journal.get_job(job_id)
    return StepContext(job.id, dict(job.params), runtime, journal,
                       Transaction(journal, job.id, runtime), reporter,
                       Faults.from_environment())


def execute(ctx: StepContext, steps: list[Step], *, resume: bool = False) -> clone.Outcome:
    journal, job_id = ctx.journal, ctx.job_id
    journal.claim_job(job_id, socket.gethostname(), os.getpid())
    journal.set_job_state(job_id, JobState.RUNNING)
    try:
        with signals_as_exceptions():
            run_steps(steps, ctx, resume=resume)
            ctx.tx.commit()
    except BaseException as exc:
        error = exc if isinstance(exc, HotcopyError) else HotcopyError(f"unexpected error: {exc!r}")
        log.debug("%s %s failed", ctx.params.get("kind"), job_id, exc_info=True)
        if passed_point_of_no_return(journal, job_id):
            return _attention(ctx, error)
        outcome = clone._roll_back_after(ctx, error)
        if isinstance(error, RefusedError) and outcome.exit_code is ExitCode.FAILED_ROLLED_BACK:
            # A refusal after a reversible pause (IO threads stopped to compare positions)
            # left nothing changed once rolled back: still "refused".
            return clone.Outcome(outcome.job, ExitCode.REFUSED, error, outcome.rollback)
        return outcome
    finally:
        ctx.runtime.close()
    return clone.Outcome(journal.get_job(job_id), ExitCode.OK)


def _attention(ctx: StepContext, error: HotcopyError) -> clone.Outcome:
    job = ctx.journal.get_job(ctx.job_id)
    new_master = job.info.get("new_master", "?")
    done = {r.name for r in ctx.journal.steps(ctx.job_id) if r.outcome == "done"}
    left = [s for s in ctx.params.get("steps", []) if s not in done]
    message = (f"{error.message}\npast the point of no return: {new_master} is the writable "
               f"master and stays so; nothing was rolled back. Steps not done: "
               f"{', '.join(left) or 'none'}.")
    ctx.journal.update_job_info(ctx.job_id, attention=message)
    hint = (f"fix the cause, then `hotcopy resume {ctx.job_id}` finishes the remaining steps "
            f"(the job holds the shard lock until then); `hotcopy topology` shows the shard")
    return clone.Outcome(job, ExitCode.ROLLBACK_INCOMPLETE, Attention(message, hint=hint))


def rollback(runtime: Runtime, journal: Journal, job_id: str,
             reporter: Reporter) -> clone.Outcome:
    if passed_point_of_no_return(journal, job_id):
        job = journal.get_job(job_id)
        raise RefusedError(f"job {job_id} passed its point of no return: "
                           f"{job.info.get('new_master')} is the master; rolling back would "
                           "lose the writes it took",
                           hint=f"`hotcopy resume {job_id}` finishes the promotion")
    return clone.rollback(runtime, journal, job_id, reporter)


def resume(runtime: Runtime, journal: Journal, job_id: str, reporter: Reporter,
           steps: list[Step]) -> clone.Outcome:
    job = journal.get_job(job_id)
    if job.terminal:
        raise RefusedError(f"job {job.id} is {job.state}; there is nothing to resume")
    if not passed_point_of_no_return(journal, job_id):
        raise RefusedError(f"job {job_id} stopped before its point of no return: the old "
                           "master is still the master",
                           hint=f"`hotcopy rollback {job_id}` undoes what it changed; then "
                                "start the promotion again")
    return execute(context(runtime, journal, job_id, reporter), steps, resume=True)
