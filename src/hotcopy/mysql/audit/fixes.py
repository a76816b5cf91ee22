"""Applying the online fixes of an audit, one at a time, each on its own session.

Rules that keep a fix from doing harm:

- only threads that were running are stopped, and exactly those are started again,
  also when the fix fails: a replica stopped on an error stays stopped (it is never
  restarted past its error, which could look like a skip);
- a fix that needs replication stopped is refused while replication is stopped on an
  error: the error comes first (see the diagnosis);
- repairs of the server's own tables run with sql_log_bin=0, so they never become a
  local GTID of a replica (strict mode would stop replication on it) or travel down a
  chain;
- switching MariaDB to GTID positioning first asks the master which GTID position its
  binlog had at the replica's executed file/position (BINLOG_GTID_POS), and aligns
  gtid_slave_pos to it: the switch then resumes at exactly the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hotcopy.errors import HotcopyError
from hotcopy.mysql.audit.model import Finding, Fix
from hotcopy.mysql.connection import Connection
from hotcopy.mysql.flavor import Flavor, ReplicaStatus, Statement
from hotcopy.mysql.flavor.base import sql_log_bin
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)

MasterFor = Callable[[ReplicaStatus], Server | None]


def applicable(finding: Finding) -> bool:
    return finding.applies_online


def apply_all(server: Server, findings: list[Finding], master_for: MasterFor) -> list[Finding]:
    """Apply every applicable fix in order; returns the findings it touched."""
    touched = []
    for finding in findings:
        if not applicable(finding):
            continue
        assert finding.fix is not None
        try:
            apply_one(server, finding.fix, master_for)
            finding.state = "fixed"
        except HotcopyError as exc:
            log.warning("%s: fix of %s failed: %s", server.name, finding.check, exc.message)
            finding.state = "fix-failed"
            finding.fix_error = exc.message
        touched.append(finding)
    return touched


def _run(conn: Connection, statement: Statement) -> None:
    sql, args = statement
    conn.execute(sql, args)


def _channels(conn: Connection, flavor: Flavor) -> list[ReplicaStatus]:
    sql, args = flavor.replica_status()
    return [flavor.parse_replica_status(r) for r in conn.query(sql, args)]


def _pause(conn: Connection, flavor: Flavor, fix: Fix) -> list[Statement]:
    """Stop what the fix needs stopped; returns the statements that undo exactly that."""
    restart: list[Statement] = []
    for channel in _channels(conn, flavor):
        if fix.channel and channel.channel != fix.channel:
            continue
        name = channel.channel
        if channel.sql_running != "Yes" and channel.last_sql_errno:
            if fix.stop_replication == "all" or fix.action:
                raise HotcopyError(
                    f"replication{f' ({name})' if name else ''} is stopped on error "
                    f"{channel.last_sql_errno}: not changing it before that is resolved")
            continue
        if fix.stop_replication == "sql" and channel.sql_running == "Yes":
            _run(conn, flavor.stop_sql_thread(name))
            restart.append(flavor.start_sql_thread(name))
        elif fix.stop_replication == "all" and "Yes" in (channel.io_running,
                                                         channel.sql_running):
            _run(conn, flavor.stop_replica(name))
            restart.append(flavor.start_replica(name))
    return restart


def _align_gtid_position(conn: Connection, flavor: Flavor, fix: Fix,
                         master_for: MasterFor) -> None:
    """Before MASTER_USE_GTID: gtid_slave_pos must name the executed file/position."""
    channel = next((c for c in _channels(conn, flavor) if c.channel == fix.channel), None)
    if channel is None:
        raise HotcopyError("the replication channel disappeared")
    statement = flavor.binlog_gtid_pos(channel.relay_master_log_file,
                                       channel.exec_master_log_pos)
    master = master_for(channel)
    if statement is None or master is None:
        raise HotcopyError("cannot reach the master to translate the position into a GTID")
    expected = str(master.scalar(statement) or "")
    if not expected:
        raise HotcopyError(
            f"the master has no GTID for {channel.relay_master_log_file}:"
            f"{channel.exec_master_log_pos} (binlog purged, or not an event boundary)")
    sql, args = flavor.replica_gtid_position()
    current = str(conn.scalar(sql, args) or "")
    if current != expected:
        log.warning("%s: gtid_slave_pos %r does not match the executed position %s:%s "
                    "(%r); setting it", conn.address.name, current,
                    channel.relay_master_log_file, channel.exec_master_log_pos, expected)
        for statement in flavor.prepare_gtid_position(expected):
            _run(conn, statement)
        fix.note += f"; gtid_slave_pos set from {current!r} to {expected!r}"


def apply_one(server: Server, fix: Fix, master_for: MasterFor) -> None:
    conn = server.new_session()
    flavor = server.flavor
    restart: list[Statement] = []
    try:
        if fix.no_binlog:
            _run(conn, sql_log_bin(False))
        if fix.stop_replication or fix.action:
            restart = _pause(conn, flavor, fix)
        if fix.action == "gtid_positioning" and flavor.name == "mariadb":
            _align_gtid_position(conn, flavor, fix, master_for)
        for statement in fix.statements:
            _run(conn, statement)
    finally:
        try:
            for statement in restart:
                _run(conn, statement)
        finally:
            conn.close()
