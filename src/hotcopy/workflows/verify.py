"""Step 18: prove the new replica holds the same data as its source.

Both replicas are stopped at the same GTID of the master (START SLAVE UNTIL), every
table is checksummed on both (at the same time: they are different hosts), and
replication is restarted on both. This pauses the source's replication for the
length of the longer of the two checksums, which is why it can be turned
down to a catch-up check (clone.verify = "catchup") on very large datasets.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hotcopy.errors import HotcopyError
from hotcopy.mysql import replication
from hotcopy.mysql.checksum import differing_tables, list_tables
from hotcopy.mysql.server import Server
from hotcopy.workflows.parallel_checksum import checksum_both
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)

CHECKSUM_TIMEOUT_S = 6 * 3600  # a bound, not a goal: CHECKSUM TABLE reads every row


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
    tables = list_tables(source)
    expected, actual, sides = checksum_both(source, target, tables, CHECKSUM_TIMEOUT_S)
    for entry in reversed(ctx.outstanding(steps={"verify"}, action="mysql.start_replica")):
        ctx.tx.exec_remove(entry.seq)
    paused_ms = (time.time() - started) * 1000
    ctx.info(verify_source_paused_ms=paused_ms)
    differing = differing_tables(expected, actual)
    if differing:
        raise HotcopyError(f"verification failed at GTID {goal}: {len(differing)} table(s) "
                           f"differ between {source.name} and {target.name}: "
                           + ", ".join(differing[:10]))
    return {"verified": "checksum", "tables_checked": len(tables), "verified_at_gtid": goal,
            "verify_source_paused_ms": paused_ms,
            "checksum_spans": {name: side.span() for name, side in sides.items()},
            "_detail": f"{len(tables)} tables identical at GTID {goal}"}
