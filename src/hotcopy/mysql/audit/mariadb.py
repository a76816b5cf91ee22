"""Crash-safety checks of a MariaDB 10.x/11.x server.

A MariaDB replica writes the GTID of every transaction it applies into
``mysql.gtid_slave_pos`` inside that same transaction, and reconnects from that
position when replicating by GTID. Both halves matter: a transactional table (so the
row commits or rolls back with the data) and GTID positioning (so the restart reads
that table, not the relay-log.info file updated after the commit).
"""

from __future__ import annotations

from hotcopy.mysql.audit.common import Setting, binlog_checks, check_setting
from hotcopy.mysql.audit.facts import TRANSACTIONAL_ENGINES, Facts
from hotcopy.mysql.audit.model import CRITICAL, INFO, OK, WARNING, Finding, Fix
from hotcopy.mysql.flavor import catalog as sql

#: What a MariaDB 10.x/11.x server runs with when its config says nothing.
DEFAULTS = {"sync_binlog": "0", "innodb_flush_log_at_trx_commit": "1", "binlog_format": "MIXED",
            "relay_log_recovery": "OFF", "gtid_strict_mode": "OFF"}

POSITION_WHY = (
    "MariaDB records each applied GTID in this table inside the applied transaction. In a "
    "non-transactional engine (Aria, MyISAM) the row is written before the transaction "
    "commits and is not rolled back: a crash in between leaves a position that claims a "
    "transaction the data does not have, which the replica then silently skips (later: "
    "row-not-found stops or quiet divergence); the table itself can be left crashed")


def checks(facts: Facts) -> list[Finding]:
    running = any(c.sql_running == "Yes" for c in facts.channels)
    findings = position_tables(facts, running)
    findings += engines(facts)
    if facts.is_replica:
        findings += gtid_positioning(facts)
        findings += check_setting(facts, Setting(
            "relay_log_recovery", "ON", "relay_log_recovery",
            WARNING if all(c.using_gtid != "No" for c in facts.channels) else CRITICAL,
            "after a crash the relay log can end in a half-written event; with recovery on, "
            "the replica discards its relay logs and fetches again from its applied "
            "position instead of reading them", default=DEFAULTS["relay_log_recovery"]))
        findings += parallel_apply(facts)
    findings += check_setting(facts, Setting(
        "gtid_strict_mode", "ON", "gtid_strict_mode", WARNING,
        "without strict mode a GTID applied twice or out of order after a crash goes through "
        "unnoticed; with it, a wrong position stops replication instead of corrupting data",
        default=DEFAULTS["gtid_strict_mode"]))
    findings += binlog_checks(facts, DEFAULTS)
    return findings


def position_tables(facts: Facts, replication_running: bool) -> list[Finding]:
    findings: list[Finding] = []
    severity = CRITICAL if facts.is_replica else WARNING
    if "gtid_slave_pos" not in facts.position_engines:
        return [Finding("gtid_slave_pos_engine", severity, "mysql.gtid_slave_pos is missing",
                        POSITION_WHY, Fix(online=False, note="run mariadb-upgrade"))]
    for table, engine in sorted(facts.position_engines.items()):
        expected = "innodb"
        if table != "gtid_slave_pos":
            expected = table[len("gtid_slave_pos_"):].lower()
            if expected not in TRANSACTIONAL_ENGINES:
                continue
        if engine.lower() == expected:
            findings.append(Finding("gtid_slave_pos_engine", OK, f"mysql.{table} is {engine}"))
            continue
        target = "InnoDB" if expected == "innodb" else expected.upper()
        findings.append(Finding(
            "gtid_slave_pos_engine", severity,
            f"mysql.{table} uses {engine}, not {target}"
            + ("" if facts.is_replica else " (matters once this server is a replica)"),
            POSITION_WHY,
            Fix(statements=[sql.alter_engine("mysql", table, target)], no_binlog=True,
                stop_replication="sql" if replication_running else "",
                note="the SQL thread is paused for the ALTER (a few rows); not binlogged")))
    return findings


def engines(facts: Facts) -> list[Finding]:
    """gtid_pos_auto_engines for user tables in other transactional engines.

    (Tables in non-transactional engines are the data audit's: data.py.)
    """
    findings: list[Finding] = []
    others = sorted(e for e in facts.engines_of_user_tables()
                    if e in TRANSACTIONAL_ENGINES and e != "innodb")
    if others:
        auto = {e.strip().lower() for e in (facts.var("gtid_pos_auto_engines") or "").split(",")
                if e.strip()}
        missing = [e for e in others if e not in auto]
        if missing:
            value = ",".join(sorted(auto | set(missing) | {"innodb"}))
            findings.append(Finding(
                "gtid_pos_auto_engines", WARNING,
                f"user tables in {', '.join(missing)} but gtid_pos_auto_engines does not "
                "name it",
                "transactions on those tables record their GTID in the InnoDB table: the "
                "position and the data commit in different engines (two-phase, or not at "
                "all without the binlog)",
                Fix(statements=[facts.flavor.set_variable("gtid_pos_auto_engines", value)],
                    config_lines=[f"gtid_pos_auto_engines = {value}"])))
    return findings


def gtid_positioning(facts: Facts) -> list[Finding]:
    findings = []
    for channel in facts.channels:
        label = f"connection '{channel.channel}'" if channel.channel else "replication"
        if channel.using_gtid.lower() == "slave_pos":
            findings.append(Finding("using_gtid", OK, f"{label}: Using_Gtid = Slave_Pos"))
            continue
        current = channel.using_gtid.lower() == "current_pos"
        fix = Fix(statements=[facts.flavor.use_gtid_positioning(channel.channel)],
                  stop_replication="all", channel=channel.channel,
                  action="gtid_positioning", note=(
                      "checked first: the master's BINLOG_GTID_POS at the replica's "
                      "executed file/position must give the same GTID position"))
        findings.append(Finding(
            "using_gtid", WARNING if current else CRITICAL,
            f"{label}: Using_Gtid = {channel.using_gtid}",
            ("current_pos also counts GTIDs this server wrote itself; slave_pos is exactly "
             "what it applied from its master") if current else
            ("the position is then the relay-log.info file, written after each commit: a "
             "crash in between re-applies the transaction (duplicate-key stops), and a "
             "restart cannot use the transactional gtid_slave_pos"), fix))
    return findings


def parallel_apply(facts: Facts) -> list[Finding]:
    threads = facts.number("slave_parallel_threads")
    mode = (facts.var("slave_parallel_mode") or "").lower()
    domains = [p for p in (facts.var("gtid_slave_pos") or "").split(",") if p.strip()]
    if threads == 0:
        return [Finding("parallel_apply", OK, "single-threaded apply")]
    findings = []
    if mode == "aggressive":
        findings.append(Finding(
            "parallel_apply", WARNING,
            f"slave_parallel_threads = {threads}, slave_parallel_mode = aggressive",
            "aggressive runs in parallel even transactions that conflicted on the master and "
            "relies on rollback and retry; it keeps commit order, but changes to "
            "non-transactional tables cannot be rolled back",
            Fix(statements=[facts.flavor.set_variable("slave_parallel_mode", "optimistic")],
                config_lines=["slave_parallel_mode = optimistic"], stop_replication="all")))
    else:
        findings.append(Finding(
            "parallel_apply", OK,
            f"slave_parallel_threads = {threads}, slave_parallel_mode = {mode}: commits keep "
            "the master's order within each domain"))
    if len(domains) > 1:
        findings.append(Finding(
            "per_domain_order", INFO,
            f"{len(domains)} replication domains ({', '.join(domains)}) apply independently",
            "each domain commits in its own order and gtid_slave_pos keeps one position per "
            "domain: a crash restarts each domain where it stopped, which holds only while "
            "gtid_slave_pos is transactional"))
    return findings
