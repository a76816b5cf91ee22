"""Reading and steering replication: status, coordinates, catch-up.

The recorded coordinates are the promise hotcopy makes to the new replica: they must be
read while the source's data is frozen (SQL thread stopped, commit lock held), so the
snapshot and the position describe the same instant.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from hotcopy.errors import HotcopyError, MySQLError
from hotcopy.mysql.connection import Connection
from hotcopy.mysql.flavor import Coordinates, Flavor, ReplicaStatus
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)


def replica_channels(server: Server) -> list[ReplicaStatus]:
    flavor = server.flavor
    return [flavor.parse_replica_status(row) for row in server.query(flavor.replica_status())]


def single_channel(server: Server) -> ReplicaStatus | None:
    channels = replica_channels(server)
    if len(channels) > 1:
        names = ", ".join(c.channel or "(default)" for c in channels)
        raise HotcopyError(f"{server.name} replicates from several masters ({names}); "
                           "hotcopy handles one replication channel per server")
    return channels[0] if channels else None


def record_coordinates(conn: Connection, flavor: Flavor) -> Coordinates:
    """Read the position on the locked session itself, so nothing moves in between."""
    sql, args = flavor.replica_status()
    rows = conn.query(sql, args)
    if not rows:
        raise HotcopyError(f"{conn.address.name} stopped being a replica during the clone")
    status = flavor.parse_replica_status(rows[0])
    gtid_sql, gtid_args = flavor.gtid_position()
    gtid = str(conn.scalar(gtid_sql, gtid_args) or "")
    return Coordinates(
        master_host=status.master_host,
        master_port=status.master_port,
        master_user=status.master_user,
        master_log_file=status.relay_master_log_file,
        master_log_pos=status.exec_master_log_pos,
        gtid=gtid if status.using_gtid != "No" or gtid else "",
        gtid_variable=flavor.gtid_variable(),
        flavor=flavor.name,
        extra={"using_gtid": status.using_gtid,
               "replication_options": flavor.replication_options(rows[0])},
    )


def _gtid_set(position: str) -> set[str]:
    return {part.strip() for part in position.split(",") if part.strip()}


def verified_gtid(master: Server, coords: Coordinates) -> tuple[Coordinates, str]:
    """The coordinates to position a new replica with, and a note when they were changed.

    A source that replicates by file/position (Using_Gtid=No) still has a
    gtid_slave_pos, but nothing keeps it true: set by hand, or left from before a
    switch to file/position, it can name a point far behind the data. Positioning by
    it would replay (or skip) transactions. So the master translates the executed
    file/position (BINLOG_GTID_POS); only a match keeps GTID positioning, anything
    else falls back to the file/position the data really stands at.
    """
    if not coords.gtid or coords.extra.get("using_gtid") != "No":
        return coords, ""
    statement = master.flavor.binlog_gtid_pos(coords.master_log_file, coords.master_log_pos)
    if statement is None:
        return coords, ""  # MySQL: gtid_executed is kept exact by the server itself
    try:
        expected = str(master.scalar(statement) or "")
    except MySQLError as exc:
        expected = ""
        log.warning("BINLOG_GTID_POS on %s failed: %s", master.name, exc.message)
    if _gtid_set(expected) == _gtid_set(coords.gtid):
        return coords, ""
    note = (f"the source replicated by file/position and its {coords.gtid_variable} "
            f"{coords.gtid} is not the master's GTID at {coords.master_log_file}:"
            f"{coords.master_log_pos} ({expected or 'none'}): positioned by file/position")
    log.warning("%s", note)
    return replace(coords, gtid=""), note


def replicas_of(server: Server) -> list[str]:
    """Hosts currently pulling binlogs from this server (binlog dump threads)."""
    return [str(row["HOST"]) for row in server.query(server.flavor.binlog_dump_threads())]


def parse_master_info(text: str) -> tuple[str, str] | None:
    """User and password from a master.info file (line 5 and 6, after the line count).

    Used when the config names no replication account: the source replica's own
    settings are the ones known to work against this master.
    """
    lines = text.split("\n")
    if len(lines) < 6 or not lines[0].strip().isdigit():
        return None
    user, password = lines[4], lines[5]
    return (user, password) if user else None


@dataclass
class CatchUp:
    target_gtid: str
    seconds_behind: int | None
    elapsed_s: float


def wait_caught_up(
    replica: Server,
    master: Server,
    *,
    timeout_s: float,
    on_wait: Callable[[ReplicaStatus], None] | None = None,
    poll_s: float = 0.5,
) -> CatchUp:
    """Wait until the replica has executed everything the master had when we started.

    Fails fast when replication stops with an error: waiting the full timeout for an
    SQL thread that died on a duplicate key would only hide the problem.
    """
    started = time.monotonic()
    goal = str(master.scalar(master.flavor.master_gtid_position()) or "")
    deadline = started + timeout_s
    while True:
        status = single_channel(replica)
        if status is None:
            raise HotcopyError(f"{replica.name} has no replication configured")
        if status.last_sql_error or (status.sql_running == "No"):
            raise HotcopyError(f"{replica.name}: replication SQL thread stopped: "
                               f"{status.last_sql_error or 'not running'}")
        if status.last_io_error and status.io_running == "No":
            raise HotcopyError(f"{replica.name}: replication IO thread stopped: "
                               f"{status.last_io_error}")
        if on_wait is not None:
            on_wait(status)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HotcopyError(f"{replica.name} did not catch up with the master within "
                               f"{timeout_s:.0f}s (behind: {status.seconds_behind}s)")
        if goal:
            waited = replica.scalar(replica.flavor.wait_for_gtid(goal, min(poll_s * 4, remaining)))
            if waited is not None and int(waited) == 0:
                return CatchUp(goal, status.seconds_behind, time.monotonic() - started)
        elif status.seconds_behind == 0:
            return CatchUp("", 0, time.monotonic() - started)
        else:
            time.sleep(poll_s)
