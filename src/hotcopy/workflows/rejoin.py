"""``hotcopy rejoin NAME``: a deposed master (or any stray server) becomes a replica again.

If NAME has no errant transactions (nothing the current master's history lacks) it is
demoted in place: it resumes replication right after what it wrote itself. If it has
some, typically the last commits of a master that died before its replicas got them,
demoting it would keep those rows on it alone; it is re-seeded instead, by a clone
from a healthy replica (hotcopy.workflows.clone), which replaces its data.
"""

from __future__ import annotations

import logging
from typing import Any

import hotcopy.mysql.repoint
import hotcopy.mysql.undo  # noqa: F401
from hotcopy.errors import HotcopyError, RefusedError
from hotcopy.mysql import gtid, replication, repoint
from hotcopy.mysql.flavor import promotion as sql
from hotcopy.progress import Reporter
from hotcopy.runtime import Runtime
from hotcopy.saga import Journal
from hotcopy.workflows import clone, topology
from hotcopy.workflows import promotion_steps as common
from hotcopy.workflows.faults import Faults
from hotcopy.workflows.runner import Step, StepContext

log = logging.getLogger(__name__)


def assess(runtime: Runtime, name: str) -> tuple[str, list[str], str | None]:
    """(master, NAME's errant GTIDs, a healthy replica to clone from); refuses what cannot
    be rejoined."""
    runtime.config.server(name)
    view = topology.read_shard(runtime, crash_safety=False)
    if view.master is None:
        raise RefusedError("no master found to rejoin to", hint="`hotcopy topology`")
    if view.master == name:
        raise RefusedError(f"{name} is the master of the shard; there is nothing to rejoin")
    server = view.servers[name]
    if not server.reachable:
        raise RefusedError(f"{name} does not answer SQL ({server.error})",
                           hint=f"start mysqld on {name} first; after a failover its config "
                                "is fenced, so it comes up read-only")
    errant = gtid.errant(server.gtids(), gtid.History.parse(
        view.servers[view.master].gtid_binlog_state))
    source = next((s.name for s in view.replicas() if s.name != name
                   and s.replicates_from == view.master and s.io_running == "Yes"
                   and s.sql_running == "Yes"), None)
    return view.master, [str(g) for g in errant], source


def _check(ctx: StepContext) -> dict[str, Any]:
    master, errant, _ = assess(ctx.runtime, ctx.params["target"])
    if errant:
        raise RefusedError(f"{ctx.params['target']} now has errant GTIDs "
                           f"{', '.join(errant)}: it must be re-seeded",
                           hint=f"run `hotcopy rejoin {ctx.params['target']}` again")
    return {"new_master": master, "old_master": ctx.params["target"],
            "_detail": f"no errant GTID: {ctx.params['target']} is demoted to a replica of "
                       f"{master}"}


def _demote(ctx: StepContext) -> dict[str, Any]:
    name, master = ctx.params["target"], ctx.state["new_master"]
    server = ctx.runtime.server(name)
    channel = replication.single_channel(server)
    if channel is None:
        ctx.push("mysql.forget_replication", {"server": name})
    else:
        ctx.push("mysql.replicate_from",
                 {"server": name, "master": _name_at(ctx, channel.master_host,
                                                     channel.master_port)})
    server.execute(sql.set_read_only(True))
    demote = sql.can_demote_to_slave(server.flavor)
    if not demote:
        position = str(server.scalar(sql.binlog_pos()) or "")
        server.execute(server.flavor.stop_replica())
        if position:
            server.execute(sql.set_slave_pos(position))
    repoint.point_at(ctx.runtime, name, master, demote=demote)
    return {"_detail": f"{name} replicates from {master}"}


def _name_at(ctx: StepContext, host: str, port: int) -> str:
    for name, conf in ctx.runtime.config.servers.items():
        if (conf.host, conf.port) == (host, port):
            return name
    raise HotcopyError(f"{ctx.params['target']} replicates from {host}:{port}, which is not in "
                       "the config: refusing to change what would not be put back")


def _verify(ctx: StepContext) -> dict[str, Any]:
    return common.verify_replicating(ctx, [ctx.params["target"]], ctx.state["new_master"])


STEPS: list[Step] = [
    Step("lock_shard", "take the shard lock", common.lock_shard),
    Step("check", "no errant GTIDs on the server, read-only", _check),
    Step("demote", "make it a replica of the master (MASTER_USE_GTID=slave_pos)", _demote),
    Step("verify", "verify it replicates and caught up", _verify),
]


def start(runtime: Runtime, journal: Journal, name: str, reporter: Reporter) -> clone.Outcome:
    Faults.from_environment()
    master, errant, source = assess(runtime, name)
    if errant:
        if source is None:
            raise RefusedError(f"{name} has errant GTIDs ({', '.join(errant)}) and must be "
                               "re-seeded, but no healthy replica of the master can be cloned")
        reporter.note(f"{name} has errant GTIDs {', '.join(errant)} (never on {master}): "
                      f"re-seeding it with a clone from {source}")
        return clone.start(runtime, journal, source, name, reporter)
    job = journal.create_job("rejoin", {"kind": "rejoin", "source": master, "target": name,
                                        "config": runtime.config.source_path})
    ctx = common.context(runtime, journal, job.id, reporter)
    return common.execute(ctx, STEPS)


def rollback(runtime: Runtime, journal: Journal, job_id: str,
             reporter: Reporter) -> clone.Outcome:
    return common.rollback(runtime, journal, job_id, reporter)


def resume(runtime: Runtime, journal: Journal, job_id: str, reporter: Reporter) -> clone.Outcome:
    raise RefusedError(f"a rejoin is not resumed: `hotcopy rollback {job_id}`, then rejoin "
                       "again")
