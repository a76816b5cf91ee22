"""Crash-safety checks of a MySQL 5.6-8.4 server.

MySQL keeps the applier position in ``mysql.slave_relay_log_info`` (and one row per
parallel worker in ``slave_worker_info``) when relay_log_info_repository = TABLE, the
only choice from 8.0.23 on (8.3 removed the variable). In InnoDB, that row commits with
the transaction. relay_log_recovery then rebuilds the relay log from that position
after a crash, and with parallel workers only preserved commit order leaves no gaps.
"""

from __future__ import annotations

from hotcopy.mysql.audit.common import Setting, binlog_checks, check_setting
from hotcopy.mysql.audit.facts import Facts
from hotcopy.mysql.audit.model import CRITICAL, OK, WARNING, Finding, Fix
from hotcopy.mysql.flavor import catalog as sql


def defaults(facts: Facts) -> dict[str, str]:
    """What this release runs with when its config says nothing."""
    version = facts.flavor.version
    values = {"innodb_flush_log_at_trx_commit": "1", "relay_log_recovery": "OFF"}
    if version >= (5, 7, 7):
        values.update(sync_binlog="1", binlog_format="ROW")
    if version >= (8, 0, 0):
        values.update(relay_log_info_repository="TABLE", master_info_repository="TABLE")
    if version >= (8, 0, 27):
        values[facts.name("slave_preserve_commit_order")] = "ON"
    return values


_TABLE_WHY = {
    "slave_relay_log_info": "the applier position; outside InnoDB it is updated apart from "
    "the transaction, so a crash re-applies or skips it",
    "slave_worker_info": "each parallel worker's position; outside InnoDB a crash leaves "
    "workers' progress inconsistent with their data",
    "slave_master_info": "the receiver position; outside InnoDB a crash can refetch or miss "
    "events unless relay_log_recovery rebuilds it",
}


def checks(facts: Facts) -> list[Finding]:
    running = any(c.io_running == "Yes" or c.sql_running == "Yes" for c in facts.channels)
    findings: list[Finding] = []
    if facts.is_replica:
        findings += repositories(facts, running)
    findings += position_tables(facts, running)
    if facts.is_replica:
        findings += check_setting(facts, Setting(
            "relay_log_recovery", "ON", "relay_log_recovery",
            WARNING if _auto_position_everywhere(facts) and _workers(facts) <= 1 else CRITICAL,
            "after a crash the relay log and the receiver position can be ahead of, or "
            "inconsistent with, what was applied; recovery discards the relay log and "
            "refetches from the applier position", default="OFF"))
        findings += auto_position(facts)
        findings += commit_order(facts, running)
    findings += binlog_checks(facts, defaults(facts))
    return findings


def _workers(facts: Facts) -> int:
    return facts.number("slave_parallel_workers")


def _auto_position_everywhere(facts: Facts) -> bool:
    return all(c.using_gtid == "Yes" for c in facts.channels)


def repositories(facts: Facts, running: bool) -> list[Finding]:
    findings = []
    for variable, severity in (("relay_log_info_repository", CRITICAL),
                               ("master_info_repository", WARNING)):
        findings += check_setting(facts, Setting(
            variable, "TABLE", variable, severity,
            "a FILE repository is written after the transaction commits: a crash in "
            "between re-applies it (duplicate-key stops) or loses track of the position",
            default=defaults(facts).get(variable), stop_replication="all"),
            replication_running=running)
    return findings


def position_tables(facts: Facts, running: bool) -> list[Finding]:
    findings = []
    for table in facts.flavor.position_tables():
        engine = facts.position_engines.get(table)
        if engine is None:
            continue
        if engine.lower() == "innodb":
            findings.append(Finding(f"{table}_engine", OK, f"mysql.{table} is {engine}"))
            continue
        severity = WARNING if table == "slave_master_info" or not facts.is_replica else CRITICAL
        findings.append(Finding(
            f"{table}_engine", severity, f"mysql.{table} uses {engine}, not InnoDB",
            _TABLE_WHY[table],
            Fix(statements=[sql.alter_engine("mysql", table, "InnoDB")], no_binlog=True,
                stop_replication="all" if running else "")))
    return findings


def auto_position(facts: Facts) -> list[Finding]:
    findings = []
    gtid_on = facts.var("gtid_mode") == "ON"
    for channel in facts.channels:
        label = f"channel '{channel.channel}'" if channel.channel else "replication"
        if channel.using_gtid == "Yes":
            findings.append(Finding("auto_position", OK, f"{label}: GTID auto-positioning"))
            continue
        why = ("without auto-positioning a restart depends on relay-log and file "
               "coordinates; with it, the replica asks for exactly the GTIDs it lacks")
        if gtid_on:
            fix = Fix(statements=[facts.flavor.use_gtid_positioning(channel.channel)],
                      stop_replication="all", channel=channel.channel)
        else:
            fix = Fix(config_lines=["gtid_mode = ON", "enforce_gtid_consistency = ON"],
                      restart=True, online=False,
                      note="gtid_mode can also be raised online one step at a time "
                           "(OFF_PERMISSIVE, ON_PERMISSIVE, ON) on every server")
        findings.append(Finding("auto_position", WARNING,
                                f"{label}: Auto_Position = 0 (gtid_mode = "
                                f"{facts.var('gtid_mode') or 'n/a'})", why, fix))
    return findings


def commit_order(facts: Facts, running: bool) -> list[Finding]:
    workers = _workers(facts)
    if workers <= 1:
        return [Finding("commit_order", OK, f"{facts.name('slave_parallel_workers')} = "
                                            f"{workers}: single-threaded apply")]
    findings: list[Finding] = []
    parallel_type = facts.var("slave_parallel_type")
    if parallel_type is not None and parallel_type.upper() == "DATABASE":
        # First: preserving commit order is refused while the type is DATABASE.
        findings.append(Finding(
            "parallel_type", WARNING,
            f"{facts.name('slave_parallel_type')} = DATABASE: commit order cannot be kept",
            "preserving commit order needs LOGICAL_CLOCK",
            Fix(statements=[facts.flavor.set_variable(facts.name("slave_parallel_type"),
                                                      "LOGICAL_CLOCK")],
                stop_replication="sql" if running else "")))
    findings += check_setting(facts, Setting(
        "slave_preserve_commit_order", "ON", "commit_order", CRITICAL,
        f"with {workers} workers committing out of order, a crash leaves gaps: later "
        "transactions applied, earlier ones not, and the restart must fill them exactly",
        default=defaults(facts).get(facts.name("slave_preserve_commit_order")),
        stop_replication="sql"), replication_running=running)
    return findings
