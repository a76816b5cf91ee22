"""Is a replica crash-safe? Per-flavor checks, findings with the exact fix, online fixes.

A replica is crash-safe when its replication position commits in the same transaction
as the data it applied, so a crash can neither skip a transaction nor apply one twice.
``audit_server`` reads one server (read-only), runs the checks of its dialect
(mariadb.py, mysql.py, common.py), optionally applies the online fixes (fixes.py) and
re-checks, and diagnoses a replica stopped on a duplicate key or a missing row
(diagnose.py) without ever skipping an event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hotcopy.errors import MySQLError
from hotcopy.mysql.audit import data, mariadb, mysql
from hotcopy.mysql.audit.diagnose import DIAGNOSED_ERRORS, RunOnHost, diagnose
from hotcopy.mysql.audit.facts import Facts, gather
from hotcopy.mysql.audit.fixes import MasterFor, apply_all
from hotcopy.mysql.audit.model import (
    CRITICAL,
    INFO,
    OK,
    WARNING,
    Finding,
    Fix,
    ServerAudit,
    show_sql,
)
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)

__all__ = ["CRITICAL", "INFO", "OK", "WARNING", "Facts", "Finding", "Fix", "ServerAudit",
           "audit_server", "run_checks", "show_sql"]

#: The checks about where the position lives and how a restart finds it; the ones a
#: clone fixes on its new replica (durability knobs stay the operator's choice).
POSITION_CHECKS = frozenset({
    "gtid_slave_pos_engine", "using_gtid", "relay_log_recovery",
    "relay_log_info_repository", "master_info_repository", "slave_relay_log_info_engine",
    "slave_worker_info_engine", "slave_master_info_engine", "auto_position", "commit_order",
    "parallel_type"})

OptionsReader = Callable[[], tuple[dict[str, str], str]]


def run_checks(facts: Facts) -> list[Finding]:
    findings = mariadb.checks(facts) if facts.flavor.name == "mariadb" else mysql.checks(facts)
    findings += data.checks(facts)
    findings += replication_state(facts)
    if facts.configured is None and facts.configured_source:
        findings.append(Finding("config_file", INFO,
                                f"settings after a restart not checked: defaults file "
                                f"{facts.configured_source}"))
    return findings


def replication_state(facts: Facts) -> list[Finding]:
    findings = []
    for channel in facts.channels:
        label = f" ({channel.channel})" if channel.channel else ""
        if channel.last_sql_errno:
            findings.append(Finding(
                "replication_error", CRITICAL,
                f"replication{label} stopped on error {channel.last_sql_errno}: "
                f"{channel.last_sql_error[:300]}",
                "the replica no longer applies its master's transactions",
                Fix(online=False, note="see the diagnosis below; the audit never skips "
                                       "an event")))
        elif channel.sql_running != "Yes" or channel.io_running != "Yes":
            io_error = f": {channel.last_io_error}" if channel.last_io_error else ""
            findings.append(Finding(
                "replication_running", INFO,
                f"replication{label} not running (IO {channel.io_running}, SQL "
                f"{channel.sql_running}){io_error}"))
    return findings


def _summary(facts: Facts) -> dict[str, object]:
    return {
        "log_bin": facts.var("log_bin"),
        "gtid_position": facts.var(facts.flavor.gtid_variable()),
        "channels": [{"name": c.channel, "master": f"{c.master_host}:{c.master_port}",
                      "io": c.io_running, "sql": c.sql_running, "using_gtid": c.using_gtid,
                      "last_sql_errno": c.last_sql_errno} for c in facts.channels],
        "downstream_replicas": sorted(set(facts.downstream)),
        "config": facts.configured_source,
    }


def audit_server(
    server: Server,
    *,
    fix: bool = False,
    only: frozenset[str] | None = None,
    options: OptionsReader | None = None,
    run_on_host: RunOnHost | None = None,
    master_for: MasterFor | None = None,
) -> ServerAudit:
    """Audit one server; with ``fix``, apply the online fixes (of ``only`` checks) first."""
    result = ServerAudit(server.name)
    try:
        facts = gather(server, options=options)
    except MySQLError as exc:
        # Nothing is known about it: no findings and no verdict, only why (see status).
        result.role = "unreachable"
        result.error = {"message": exc.message,
                        "hint": exc.hint or "an audit needs an admin session on the server"}
        return result
    findings = run_checks(facts)
    # Before any fix: the evidence is what the replica looked like when it stopped.
    for channel in facts.channels:
        if channel.last_sql_errno in DIAGNOSED_ERRORS:
            result.diagnoses.append(diagnose(server, facts, channel, run_on_host))
    if fix:
        wanted = [f for f in findings if only is None or f.check in only or f.key in only]
        result.applied = apply_all(server, wanted, master_for or (lambda _channel: None))
        if result.applied:
            facts = gather(server, options=options)
            findings = run_checks(facts)
    result.flavor, result.version = facts.flavor.name, facts.version
    result.role = ("replica" if facts.is_replica else
                   "master" if facts.downstream else "standalone")
    result.findings = findings
    result.facts = _summary(facts)
    result.data = data.lists(facts, findings)
    return result
