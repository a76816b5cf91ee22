"""Step 18: prove the new replica holds the same data as its source.

Both replicas are stopped at the same GTID of the master (START SLAVE UNTIL), every
table is checksummed on the source, whose replication restarts at once, and at the
same time on the target (another host: verification takes the longer of the two, not
their sum). The source's replication is paused for the length of its own checksums only,
and the whole checksum phase is bounded by clone.verify_timeout_s; on very large
datasets it can be turned down to a catch-up check (clone.verify = "catchup").
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hotcopy.errors import HotcopyError
from hotcopy.mysql import replication
from hotcopy.mysql.checksum import (
    ChecksumTimeout,
    differing_tables,
    list_tables,
    table_checksums,
)
from hotcopy.mysql.server import Server
from hotcopy.workflows.parallel_checksum import BackgroundChecksums
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)


def _stop_at(server: Server, goal: str, deadline: float) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HotcopyError(f"{server.name} did not reach GTID {goal} in time for verification")
        reached = server.scalar(server.flavor.wait_for_gtid(goal, min(remaining, 5)))
        status = replication.single_channel(server)
        if status is not None and status.last_sql_error:
            raise HotcopyError(f"{server.name}: replication failed: {status.last_sql_error}")
        if reached is not None and int(reached) == 0 and status is not None \
                and status.sql_running == "No":
            return
        time.sleep(0.05)


def _restart(ctx: StepContext, server: str) -> None:
    for entry in reversed(ctx.outstanding(steps={"verify"}, action="mysql.start_replica")):
        if entry.params.get("server") == server:
            ctx.tx.exec_remove(entry.seq)


def _timed_out(exc: ChecksumTimeout, limit: float) -> HotcopyError:
    return HotcopyError(f"verification stopped: {exc.message} (clone.verify_timeout_s = "
                        f"{limit:g})",
                        hint="a table locked on either server blocks CHECKSUM TABLE; raise "
                             "clone.verify_timeout_s for large data, or use clone.verify = "
                             '"catchup"')


def verify(ctx: StepContext) -> dict[str, Any]:
    config = ctx.runtime.config.clone
    coords = ctx.state["coordinates"]
    if config.verify == "catchup" or not coords.get("gtid"):
        why = "clone.verify = catchup" if config.verify == "catchup" else "no GTID"
        return {"verified": "catchup", "_detail": f"caught up; checksums skipped ({why})"}
    source = ctx.runtime.server(ctx.params["source"])
    target = ctx.runtime.server(ctx.params["target"])
    started = time.time()
    for server in (source, target):
        ctx.push("mysql.start_replica", {"server": server.name})
        server.execute(server.flavor.stop_replica())
    # Both are stopped now; the one behind runs on to exactly where the other stands.
    # (A goal read from the master before stopping could already lie behind one of
    # them, and the two would then be compared at different points.)
    flavor = source.flavor
    positions = {s.name: flavor.furthest_gtid_position(
        [str(s.scalar(s.flavor.replica_gtid_position()) or "")]) for s in (source, target)}
    goal = flavor.furthest_gtid_position(list(positions.values()))
    for server in (source, target):
        if positions[server.name] != goal:
            server.execute(server.flavor.start_replica_until(goal))
    deadline = time.monotonic() + config.catchup_timeout_s
    for server in (source, target):
        _stop_at(server, goal, deadline)
    checksums_until = time.monotonic() + config.verify_timeout_s
    tables = list_tables(source)
    with BackgroundChecksums(target, tables, checksums_until) as target_sums:
        source_span = [time.time(), 0.0]
        try:
            expected = table_checksums(source, tables, deadline=checksums_until)
        except ChecksumTimeout as exc:
            raise _timed_out(exc, config.verify_timeout_s) from exc
        source_span[1] = time.time()
        # The source's part is done: it replicates again now, not after the target's sums.
        _restart(ctx, source.name)
        paused_ms = (time.time() - started) * 1000
        ctx.info(verify_source_paused_ms=paused_ms)
        try:
            actual = target_sums.result()
        except ChecksumTimeout as exc:
            raise _timed_out(exc, config.verify_timeout_s) from exc
    _restart(ctx, target.name)
    differing = differing_tables(expected, actual)
    if differing:
        raise HotcopyError(f"verification failed at GTID {goal}: {len(differing)} table(s) "
                           f"differ between {source.name} and {target.name}: "
                           + ", ".join(differing[:10]))
    return {"verified": "checksum", "tables_checked": len(tables), "verified_at_gtid": goal,
            "verify_source_paused_ms": paused_ms,
            "checksum_spans": {"source": source_span, "target": target_sums.span()},
            "_detail": f"{len(tables)} tables identical at GTID {goal}"}
