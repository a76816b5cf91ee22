"""``hotcopy failover``: the master is dead; promote the most advanced replica.

Detection is holistic: the master must be unreachable from here over SQL, its mysqld
not seen running over ssh, *and* every replica's IO thread must fail to reach it. A
master that looks alive from anywhere is not failed over (exit 2, naming from where):
promoting beside a live master splits the shard's history in two.

Then the replicas' IO threads are stopped (undo: started again), each applies what its
relay log holds, and the candidate must have everything every other replica has, per
GTID domain (``--to`` is refused when it is behind). Incomparable replicas (each with
GTIDs the other lacks) are refused, naming the GTIDs, unless ``--force``. Promotion is
the point of no return; the others then catch up from the new master's binlog, and the
old master is fenced (read_only now if it answers, and in its config file if its host
is reachable) so that a restart does not bring back a writable master.
"""

from __future__ import annotations

import logging
import time
from typing import Any

# Importing these registers the undo actions a rollback in a fresh process may need.
import hotcopy.mysql.repoint
import hotcopy.mysql.undo  # noqa: F401
from hotcopy.errors import HotcopyError, RefusedError
from hotcopy.mysql import fence, gtid, replication
from hotcopy.mysql.flavor import promotion as sql
from hotcopy.progress import Reporter
from hotcopy.runtime import Runtime
from hotcopy.saga import Journal
from hotcopy.workflows import clone, topology
from hotcopy.workflows import promotion_steps as common
from hotcopy.workflows.faults import Faults
from hotcopy.workflows.runner import Step, StepContext

log = logging.getLogger(__name__)


#: What the ssh probe of the master's host may take beyond the configured ConnectTimeout
#: (a fresh connection may use all of it): the command itself, on a busy host.
PROBE_MARGIN_S = 5


def _mysqld_seen_running(runtime: Runtime, master: str) -> bool:
    """Whether the master's host says its mysqld runs; False when the host does not
    answer within ConnectTimeout + PROBE_MARGIN_S.

    The bound is here because a long-lived controller (the agent) holds a multiplexed
    ssh connection (ControlPersist) to the host: when the host's network dies, a new
    command waits on that dead TCP session until ServerAlive gives up (3 x 10 s) or the
    command's own timeout, and detection took 36 s in the netns test instead of ~15 s.
    A host that cannot answer a trivial command within a fresh connect's time is
    unreachable over ssh for the purpose of detection; the other signs (SQL, every
    replica's IO thread) must agree before anything is failed over.
    """
    bound = runtime.config.ssh.connect_timeout_s + PROBE_MARGIN_S
    try:
        executor = runtime.executor(master)
        if not executor.is_local:
            executor.run(["true"], timeout=bound)
        return runtime.mysqld(master).is_running()
    except HotcopyError as exc:
        log.info("%s's host is unreachable too (probe bound %ss): %s", master, bound,
                 exc.message)
        return False


def _dead_master(runtime: Runtime, view: topology.ShardView) -> tuple[str | None, list[str]]:
    """The master every replica points at, and every sign that it is still alive."""
    replicas = [s for s in view.servers.values() if s.reachable and s.channels]
    masters = {s.replicates_from for s in replicas}
    if not replicas:
        return None, ["no reachable replica: nothing to fail over to"]
    if len(masters) != 1:
        return None, ["the replicas do not agree on their master: " + ", ".join(
            f"{s.name} -> {s.replicates_from}" for s in replicas)]
    multi = [s.name for s in replicas if s.channels > 1]
    if multi:
        return None, [f"multi-source replicas are not failed over: {', '.join(multi)}"]
    master = str(masters.pop())
    if master not in runtime.config.servers:
        return None, [f"the replicas' master {master} is not a server of the config"]
    alive = []
    if view.servers[master].reachable:
        alive.append(f"the master {master} looks alive from this controller: it answers SQL")
    for server in replicas:
        if server.io_running == "Yes":
            alive.append(f"the master {master} looks alive from {server.name}: its IO "
                         "thread is connected")
    if _mysqld_seen_running(runtime, master):
        alive.append(f"the master {master} looks alive from its host: mysqld runs there "
                     f"(seen over {runtime.executor(master).name})")
    unreachable = [s.name for s in view.servers.values() if not s.reachable and s.name != master]
    if unreachable:
        alive.append(f"replica(s) {', '.join(unreachable)} unreachable: cannot ask them")
    return master, alive


def _detect(ctx: StepContext) -> dict[str, Any]:
    view = topology.read_shard(ctx.runtime, crash_safety=False)
    master, alive = _dead_master(ctx.runtime, view)
    if master is None or alive:
        raise RefusedError("failover refused; nothing was changed:\n  - " + "\n  - ".join(alive),
                           hint="a live master is switched over (`hotcopy switchover`), not "
                                "failed over")
    replicas = sorted(s.name for s in view.servers.values() if s.name != master)
    for name in replicas:
        server = ctx.runtime.server(name)
        if server.flavor.name != "mariadb":
            raise RefusedError(f"{name} runs {server.flavor.name}: only MariaDB is supported")
    return {"old_master": master, "replicas": replicas,
            "_detail": f"{master} is dead: no SQL, no mysqld on its host, every replica's "
                       "IO thread failing"}


def _stop_io_threads(ctx: StepContext) -> dict[str, Any]:
    """Nothing new may arrive while positions are compared; the undo restores each thread
    as it was (the SQL thread too: the next step starts a stopped one)."""
    for name in ctx.state["replicas"]:
        server = ctx.runtime.server(name)
        status = replication.single_channel(server)
        if status is None:
            continue
        ctx.push("mysql.replication_threads", {
            "server": name, "io": status.io_running in ("Yes", "Connecting"),
            "sql": status.sql_running == "Yes"})
        server.execute(sql.stop_io_thread())
    return {"_detail": ", ".join(ctx.state["replicas"])}


def _relay_applied(row: dict[str, Any]) -> bool:
    return (row.get("Master_Log_File") == row.get("Relay_Master_Log_File")
            and int(row.get("Read_Master_Log_Pos") or 0) == int(row.get("Exec_Master_Log_Pos")
                                                                or 0))


def _apply_relay_logs(ctx: StepContext) -> dict[str, Any]:
    """Each replica applies what it already fetched: nothing the dead master sent is lost."""
    deadline = time.monotonic() + ctx.runtime.config.promotion.relay_apply_timeout_s
    positions: dict[str, str] = {}
    for name in ctx.state["replicas"]:
        server = ctx.runtime.server(name)
        status = replication.single_channel(server)
        if status is not None and status.sql_running != "Yes" and not status.last_sql_errno:
            server.execute(server.flavor.start_sql_thread())
        while True:
            row = server.one(server.flavor.replica_status()) or {}
            if _relay_applied(row):
                break
            if row.get("Last_SQL_Errno") not in (None, 0, "0"):
                raise HotcopyError(f"{name} stopped applying its relay log: "
                                   f"{row.get('Last_SQL_Error')}")
            if time.monotonic() > deadline:
                raise HotcopyError(f"{name} did not apply its relay log within "
                                   f"{ctx.runtime.config.promotion.relay_apply_timeout_s:g}s")
            time.sleep(0.1)
        positions[name] = str(server.scalar(server.flavor.replica_gtid_position()) or "")
    return {"positions": positions,
            "_detail": "; ".join(f"{n} at {p}" for n, p in positions.items())}


def choose(views: dict[str, topology.ServerView], wanted: str | None) -> tuple[str | None,
                                                                              dict[str, str]]:
    """The replica that has everything the others have, and what each one lacks."""
    lacks: dict[str, str] = {}
    for name, view in views.items():
        history = gtid.History.parse(view.gtid_binlog_state, view.gtid_slave_pos)
        missing = [g for other, o in views.items() if other != name
                   for g in gtid.errant(o.gtids(), history)]
        if missing:
            # The last one per (domain, server_id) names them all under strict mode.
            lacks[name] = gtid.describe(gtid.History.parse(gtid.describe(missing)).gtids())
    good = [n for n in views if n not in lacks]
    if wanted is not None:
        return (wanted if wanted in good else None), lacks
    return (good[0] if good else None), lacks


def _choose(ctx: StepContext) -> dict[str, Any]:
    views = {n: topology.read_server(ctx.runtime, n) for n in ctx.state["replicas"]}
    wanted = ctx.params.get("to")
    if wanted is not None and wanted not in views:
        raise RefusedError(f"--to {wanted} is not a replica of the dead master",
                           hint=f"choose one of {', '.join(views)}")
    chosen, lacks = choose(views, wanted)
    if chosen is None:
        named = "; ".join(f"{n} lacks {m}" for n, m in lacks.items())
        if wanted is not None and wanted in lacks and len(lacks) < len(views):
            raise RefusedError(f"--to {wanted} is behind: it lacks {lacks[wanted]}",
                               hint="leave out --to to promote the most advanced replica")
        if not ctx.params.get("force"):
            raise RefusedError(f"the replicas are incomparable, each has GTIDs another lacks: "
                               f"{named}",
                               hint="promoting any of them loses the others' GTIDs; --force "
                                    "(with --to) accepts that")
        chosen = wanted or min(lacks, key=lambda n: len(lacks[n].split(",")))
        ctx.reporter.warning(f"--force: promoting {chosen}, which lacks {lacks[chosen]}")
    for name, view in views.items():
        if name == chosen:
            continue
        if view.major != views[chosen].major:
            raise RefusedError(f"{name} runs {view.version}, {chosen} {views[chosen].version}")
    if not views[chosen].log_bin or not views[chosen].log_slave_updates:
        raise RefusedError(f"{chosen} needs log_bin and log_slave_updates on: the others "
                           "catch up from its binlog")
    others = [n for n in views if n != chosen]
    return {"new_master": chosen, "others": others, "lacking": lacks,
            "_detail": f"{chosen}: has every GTID the others have" if not lacks.get(chosen)
            else f"{chosen} (forced)"}


def _promote(ctx: StepContext) -> dict[str, Any]:
    new, old = ctx.state["new_master"], ctx.state["old_master"]
    server = ctx.runtime.server(new)
    ctx.push("mysql.read_only", {"server": new, "value": 1})
    server.execute(server.flavor.stop_replica())
    server.execute(server.flavor.reset_replica_all())
    server.execute(sql.set_read_only(False))
    common.cross_point_of_no_return(ctx, new)
    return {"_detail": f"{new} is the master, writable ({old} deposed)"}


def _repoint(ctx: StepContext) -> dict[str, Any]:
    return common.repoint_all(ctx, ctx.state["others"], ctx.state["new_master"])


def _fence(ctx: StepContext) -> dict[str, Any]:
    """Best effort by design: the old master is dead; what could not be done is reported."""
    old = ctx.state["old_master"]
    done, left = [], []
    server = ctx.runtime.server(old)
    try:
        server.execute(sql.set_read_only(True))
        server.execute(server.flavor.stop_replica())
        done.append("read_only=ON, replication stopped")
    except HotcopyError:
        sql_down = True
    else:
        sql_down = False
    finally:
        server.close()
    conf = ctx.runtime.config.server(old)
    try:
        executor = ctx.runtime.executor(old)
    except HotcopyError:
        executor = None
    if executor is not None and fence.fence_config(executor, conf.defaults_file):
        done.append(f"read_only = 1 added to {conf.defaults_file}")
    else:
        left.append(f"host unreachable: add read_only = 1 under [mysqld] in "
                    f"{conf.defaults_file} before it restarts")
        if sql_down:
            left.append("mysqld unreachable: if it is running, SET GLOBAL read_only = 1")
    for item in left:
        ctx.reporter.warning(f"{old} fenced only in part: {item}")
    return {"fenced": done, "fence_left": left,
            "_detail": f"{old}: {'; '.join(done) or 'nothing could be done'}"
                       + (f"; TODO: {'; '.join(left)}" if left else "")}


def _verify(ctx: StepContext) -> dict[str, Any]:
    return common.verify_replicating(ctx, ctx.state["others"], ctx.state["new_master"])


STEPS: list[Step] = [
    Step("lock_shard", "take the shard lock", common.lock_shard),
    Step("detect", "make sure the master is dead (SQL, ssh, every replica), read-only",
         _detect),
    Step("stop_io_threads", "stop the replicas' IO threads", _stop_io_threads),
    Step("apply_relay_logs", "let each replica apply its relay log", _apply_relay_logs),
    Step("choose", "choose the replica that has every GTID the others have", _choose),
    Step("pre_hook", "run the pre_failover hook", lambda c: common.hook(c, "pre_failover")),
    Step("promote", "POINT OF NO RETURN: stop + reset the candidate's replication, "
                    "read_only=OFF", _promote),
    Step("repoint_replicas", "repoint the other replicas (they catch up from its binlog)",
         _repoint),
    Step("fence_old_master", "fence the old master (read_only now and in its config)", _fence),
    Step("post_hook", "run the post_failover hook", lambda c: common.hook(c, "post_failover")),
    Step("verify", "verify every replica replicates from the new master", _verify),
]


def check(runtime: Runtime) -> tuple[topology.ShardView, list[str]]:
    """What --dry-run shows: the detection, read-only."""
    view = topology.read_shard(runtime, crash_safety=False)
    master, alive = _dead_master(runtime, view)
    return view, alive if master is not None or alive else ["no master found"]


def start(runtime: Runtime, journal: Journal, reporter: Reporter, *, to: str | None = None,
          force: bool = False) -> clone.Outcome:
    if to is not None:
        runtime.config.server(to)
    Faults.from_environment()
    job = journal.create_job("failover", {
        "kind": "failover", "to": to, "force": force, "source": "dead master",
        "target": to or "most advanced", "steps": [s.name for s in STEPS],
        "config": runtime.config.source_path})
    return common.execute(common.context(runtime, journal, job.id, reporter), STEPS)


def resume(runtime: Runtime, journal: Journal, job_id: str, reporter: Reporter) -> clone.Outcome:
    return common.resume(runtime, journal, job_id, reporter, STEPS)


def rollback(runtime: Runtime, journal: Journal, job_id: str,
             reporter: Reporter) -> clone.Outcome:
    return common.rollback(runtime, journal, job_id, reporter)
