"""``hotcopy switchover --to NAME``: a planned change of master, the old one alive.

The old master stops taking writes (read_only), the in-flight ones end, every replica
reaches the old master's last GTID, and only then is the candidate made writable: the
point of no return, a step of its own. Up to there every change is undone on failure
(old master writable again, candidate back on it); after it, the remaining steps
(repoint, demote, hooks, verify) report what is left and `hotcopy resume` finishes them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

# Importing these registers the undo actions a rollback in a fresh process may need.
import hotcopy.mysql.undo  # noqa: F401
from hotcopy.errors import HotcopyError, RefusedError
from hotcopy.mysql import gtid, repoint
from hotcopy.mysql.flavor import promotion as sql
from hotcopy.progress import Reporter
from hotcopy.runtime import Runtime
from hotcopy.saga import Journal
from hotcopy.workflows import clone, topology
from hotcopy.workflows import promotion_steps as common
from hotcopy.workflows.faults import Faults
from hotcopy.workflows.runner import Step, StepContext

log = logging.getLogger(__name__)


def check(runtime: Runtime, candidate: str) -> tuple[topology.ShardView, list[str]]:
    """Read-only: the shard and every reason a switchover to ``candidate`` is unsafe."""
    runtime.config.server(candidate)
    view = topology.read_shard(runtime)
    master = view.master
    if master is None:
        return view, ["no master found (is it down? then this is a failover)",
                      *view.problems]
    if candidate == master:
        return view, [f"{candidate} is already the master"]
    problems = [p for server in view.servers.values() for p in _server_problems(server, master)]
    problems += _candidate_problems(runtime, view, candidate, master)
    return view, problems


def _server_problems(server: topology.ServerView, master: str) -> list[str]:
    if not server.reachable:
        return [f"{server.name} is unreachable ({server.error}): it would be left on the old "
                "master"]
    problems = []
    if server.flavor != "mariadb":
        problems.append(f"{server.name} runs {server.flavor}: only MariaDB GTIDs are supported")
    if server.channels > 1:
        problems.append(f"{server.name} has {server.channels} replication channels: "
                        "multi-source replicas are not switched over")
    if server.name != master:
        if server.replicates_from != master:
            problems.append(f"{server.name} replicates from "
                            f"{server.replicates_from or 'nobody'}, not from {master}")
        elif server.using_gtid not in ("Slave_Pos", "Current_Pos"):
            problems.append(f"{server.name} does not replicate by GTID (Using_Gtid "
                            f"{server.using_gtid}): CHANGE MASTER TO MASTER_USE_GTID="
                            "slave_pos first (`hotcopy audit --fix` does it)")
    if server.errant:
        problems.append(f"{server.name} has errant transactions, GTIDs the master {master} "
                        f"never had: {', '.join(server.errant)}")
    return problems


def _candidate_problems(runtime: Runtime, view: topology.ShardView, candidate: str,
                        master: str) -> list[str]:
    problems: list[str] = []
    new = view.servers[candidate]
    old = view.servers[master]
    if new.reachable and old.reachable:
        if new.io_running != "Yes" or new.sql_running != "Yes":
            problems.append(f"{candidate} is not replicating (IO {new.io_running}, SQL "
                            f"{new.sql_running})")
        limit = runtime.config.promotion.max_lag_s
        if new.seconds_behind is None or new.seconds_behind > limit:
            problems.append(f"{candidate} is {new.seconds_behind}s behind (limit "
                            f"[promotion] max_lag_s = {limit})")
        if not new.log_bin or not new.log_slave_updates:
            problems.append(f"{candidate} needs log_bin and log_slave_updates on (log_bin "
                            f"{new.log_bin}, log_slave_updates {new.log_slave_updates})")
        if new.crash_safe is not True:
            problems.append(f"{candidate} is not crash-safe: "
                            f"{'; '.join(new.crash_safety_problems) or 'audit failed'}")
        majors = {s.name: s.major for s in view.servers.values() if s.reachable and s.version}
        if len(set(majors.values())) > 1:
            problems.append("servers run different major versions: " + ", ".join(
                f"{n} {v[0]}.{v[1]}" for n, v in sorted(majors.items())))
    return problems


def _preflight(ctx: StepContext) -> dict[str, Any]:
    candidate = ctx.params["to"]
    view, problems = check(ctx.runtime, candidate)
    if problems:
        raise RefusedError(f"switchover to {candidate} refused; nothing was changed:\n  - "
                           + "\n  - ".join(problems),
                           hint="`hotcopy topology` shows the shard; fix the items above")
    master = str(view.master)
    others = sorted(s.name for s in view.replicas() if s.name != candidate)
    return {"old_master": master, "new_master": candidate, "others": others,
            "old_master_read_only": view.servers[master].read_only,
            "_detail": f"{master} -> {candidate}; repoint {', '.join(others) or 'none'}"}


def _read_only_master(ctx: StepContext) -> dict[str, Any]:
    master = ctx.state["old_master"]
    ctx.push("mysql.read_only", {"server": master,
                                 "value": 1 if ctx.state["old_master_read_only"] else 0})
    ctx.runtime.server(master).execute(sql.set_read_only(True))
    return {"_detail": f"{master}: read_only=ON"}


def _drain_writes(ctx: StepContext) -> dict[str, Any]:
    """Wait for write transactions open on the old master to end (commit or fail).

    Accounts with SUPER or READ_ONLY ADMIN can still write: they are named, and the
    promote step refuses if the old master's position moved after it was recorded.
    """
    master = ctx.runtime.server(ctx.state["old_master"])
    bypass = {str(r["grantee"]) for r in master.query(sql.read_only_bypass_accounts())}
    bypass_users = {g.split("@", 1)[0].strip("'") for g in bypass}
    sessions = [r for r in master.query(sql.client_sessions()) if r["user"] in bypass_users]
    if sessions:
        listed = ", ".join(f"#{r['id']} {r['user']}@{r['host']}" for r in sessions)
        ctx.reporter.warning(f"these sessions' accounts bypass read_only (SUPER / READ_ONLY "
                             f"ADMIN) and could still write on {master.name}: {listed}")
    timeout = ctx.runtime.config.promotion.drain_timeout_s
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        open_trx = master.query(sql.open_write_transactions())
        if not open_trx:
            break
        if time.monotonic() >= deadline:
            listed = ", ".join(f"#{r['id']} {r['user']}@{r['host']} ({r['rows_modified']} rows)"
                               for r in open_trx)
            if not ctx.params.get("kill_writers"):
                raise HotcopyError(f"write transactions still open on {master.name} after "
                                   f"{timeout:g}s: {listed}",
                                   hint="end them, or run again with --kill-writers")
            for row in open_trx:
                ctx.reporter.warning(f"killing session #{row['id']} {row['user']}@{row['host']}")
                master.execute(sql.kill_session(int(row["id"])))
            deadline = time.monotonic() + timeout
        time.sleep(0.1)
    return {"bypass_sessions": [f"{r['user']}@{r['host']}" for r in sessions],
            "drain_s": round(time.monotonic() - started, 3),
            "_detail": f"no write transaction open on {master.name}"}


def _record_position(ctx: StepContext) -> dict[str, Any]:
    master = ctx.runtime.server(ctx.state["old_master"])
    position = str(master.scalar(sql.binlog_pos()) or "")
    gtid.Position.parse(position)  # refuse to go on with a position we cannot read
    return {"old_master_pos": position, "_detail": f"{master.name} gtid_binlog_pos {position}"}


def _wait_candidate(ctx: StepContext) -> dict[str, Any]:
    position = ctx.state["old_master_pos"]
    common.wait_position(ctx, ctx.state["new_master"], position,
                         ctx.runtime.config.promotion.gtid_wait_timeout_s)
    return {"_detail": f"{ctx.state['new_master']} reached {position}"}


def _wait_replicas(ctx: StepContext) -> dict[str, Any]:
    position = ctx.state["old_master_pos"]
    for name in ctx.state["others"]:
        common.wait_position(ctx, name, position, ctx.runtime.config.promotion.gtid_wait_timeout_s)
    return {"_detail": f"{', '.join(ctx.state['others']) or 'none'} reached {position}"}


def _promote(ctx: StepContext) -> dict[str, Any]:
    """The point of no return: once the candidate is writable, there is no way back."""
    old, new = ctx.state["old_master"], ctx.state["new_master"]
    now = str(ctx.runtime.server(old).scalar(sql.binlog_pos()) or "")
    if now != ctx.state["old_master_pos"]:
        raise HotcopyError(f"{old} wrote after read_only=ON ({ctx.state['old_master_pos']} -> "
                           f"{now}): an account with SUPER or READ_ONLY ADMIN is writing",
                           hint="stop those clients (see the warning of drain_writes) and "
                                "switch over again")
    server = ctx.runtime.server(new)
    ctx.push("mysql.read_only", {"server": new, "value": 1})
    ctx.push("mysql.replicate_from", {"server": new, "master": old})
    server.execute(server.flavor.stop_replica())
    server.execute(server.flavor.reset_replica_all())
    server.execute(sql.set_read_only(False))
    common.cross_point_of_no_return(ctx, new)
    return {"promoted_at": time.time(), "_detail": f"{new} is the master, writable"}


def _repoint(ctx: StepContext) -> dict[str, Any]:
    return common.repoint_all(ctx, ctx.state["others"], ctx.state["new_master"])


def _demote(ctx: StepContext) -> dict[str, Any]:
    """The old master becomes a replica, starting after what it wrote itself."""
    old, new = ctx.state["old_master"], ctx.state["new_master"]
    server = ctx.runtime.server(old)
    position = ctx.state["old_master_pos"]
    now = str(server.scalar(sql.binlog_pos()) or "")
    if now != position:
        raise HotcopyError(f"{old} wrote after the switchover ({position} -> {now}): those "
                           "GTIDs are errant; it is left read-only and not replicating",
                           hint=f"`hotcopy rejoin {old}` re-seeds it from a replica")
    server.execute(sql.set_read_only(True))
    demote = sql.can_demote_to_slave(server.flavor)
    if not demote:
        server.execute(server.flavor.stop_replica())
        server.execute(sql.set_slave_pos(position))
    repoint.point_at(ctx.runtime, old, new, demote=demote)
    how = "MASTER_DEMOTE_TO_SLAVE=1" if demote else f"gtid_slave_pos={position}"
    return {"_detail": f"{old} replicates from {new} ({how})"}


def _verify(ctx: StepContext) -> dict[str, Any]:
    names = [*ctx.state["others"], ctx.state["old_master"]]
    return common.verify_replicating(ctx, names, ctx.state["new_master"])


STEPS: list[Step] = [
    Step("lock_shard", "take the shard lock", common.lock_shard),
    Step("preflight", "check candidate, replicas and GTIDs, read-only", _preflight),
    Step("pre_hook", "run the pre_switchover hook", lambda c: common.hook(c, "pre_switchover")),
    Step("read_only_master", "set read_only=ON on the old master", _read_only_master),
    Step("drain_writes", "wait for in-flight write transactions on the old master",
         _drain_writes),
    Step("record_position", "record the old master's gtid_binlog_pos", _record_position),
    Step("wait_candidate", "MASTER_GTID_WAIT on the candidate", _wait_candidate),
    Step("wait_replicas", "MASTER_GTID_WAIT on the other replicas", _wait_replicas),
    Step("promote", "POINT OF NO RETURN: stop + reset the candidate's replication, "
                    "read_only=OFF", _promote),
    Step("repoint_replicas", "repoint the other replicas (MASTER_USE_GTID=slave_pos)", _repoint),
    Step("demote_old_master", "make the old master a replica of the new one", _demote),
    Step("post_hook", "run the post_switchover hook", lambda c: common.hook(c, "post_switchover")),
    Step("verify", "verify every server replicates from the new master", _verify),
]


def start(runtime: Runtime, journal: Journal, candidate: str, reporter: Reporter, *,
          kill_writers: bool = False) -> clone.Outcome:
    runtime.config.server(candidate)
    Faults.from_environment()  # a bad HOTCOPY_FAULT is refused before any job exists
    job = journal.create_job("switchover", {
        "kind": "switchover", "to": candidate, "target": candidate, "source": "(current master)",
        "kill_writers": kill_writers, "steps": [s.name for s in STEPS],
        "config": runtime.config.source_path})
    return common.execute(common.context(runtime, journal, job.id, reporter), STEPS)


def resume(runtime: Runtime, journal: Journal, job_id: str, reporter: Reporter) -> clone.Outcome:
    return common.resume(runtime, journal, job_id, reporter, STEPS)


def rollback(runtime: Runtime, journal: Journal, job_id: str,
             reporter: Reporter) -> clone.Outcome:
    return common.rollback(runtime, journal, job_id, reporter)
