"""Checks both dialects share: one setting against its safe value, binlog durability.

A setting is checked twice: its running value, and what a restart would bring back
(the defaults file, or SET PERSIST on MySQL 8). A replica fixed with SET GLOBAL whose
my.cnf still says otherwise is a time bomb with a longer fuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hotcopy.mysql.audit.facts import Facts, normalise
from hotcopy.mysql.audit.model import CRITICAL, OK, WARNING, Finding, Fix


@dataclass(frozen=True)
class Setting:
    """One variable with its crash-safe value (generic name; the flavor spells it)."""

    variable: str
    want: str | int
    check: str
    severity: str
    why: str
    #: The value a server takes when its config says nothing (None: depends/unknown).
    default: str | None = None
    #: Replication must be stopped while it changes ("sql" or "all").
    stop_replication: str = ""


def _config_line(name: str, want: str | int) -> str:
    return f"{name} = {want}"


def setting_fix(facts: Facts, setting: Setting, channel_running: bool) -> Fix:
    flavor = facts.flavor
    name = facts.name(setting.variable)
    line = _config_line(name, setting.want)
    if facts.dynamic(name):
        configured = facts.configured_value(name)
        keep = [] if flavor.persists_settings else [line]
        note = "" if flavor.persists_settings else (
            "SET GLOBAL lasts until the next restart: also add the config line")
        if not flavor.persists_settings and configured is not None \
                and normalise(configured) == normalise(setting.want):
            keep, note = [], f"{facts.configured_source} already sets it: a restart keeps it"
        return Fix(statements=[flavor.set_variable(name, setting.want)], config_lines=keep,
                   stop_replication=setting.stop_replication if channel_running else "",
                   note=note)
    later = flavor.persist_only(name, setting.want)
    return Fix(statements=[later] if later else [], config_lines=[line], restart=True,
               online=False, note="read-only while the server runs: change the config and "
               "restart" + (" (or run the SET PERSIST_ONLY shown, then restart)" if later
                            else ""))


def check_setting(facts: Facts, setting: Setting, *, severity: str | None = None,
                  replication_running: bool = False) -> list[Finding]:
    """The running value, then (when it is right) what a restart would bring back."""
    name = facts.name(setting.variable)
    if not facts.has(setting.variable):
        return []
    value = facts.var(setting.variable)
    want = normalise(setting.want)
    if normalise(value) != want:
        return [Finding(setting.check, severity or setting.severity,
                        f"{name} = {value} (crash-safe: {setting.want})", setting.why,
                        setting_fix(facts, setting, replication_running))]
    findings = [Finding(setting.check, OK, f"{name} = {value}")]
    persisted = _restart_problem(facts, setting)
    if persisted:
        findings.append(persisted)
    return findings


def _restart_problem(facts: Facts, setting: Setting) -> Finding | None:
    name = facts.name(setting.variable)
    if facts.configured is None and name not in facts.persisted:
        return None
    configured = facts.configured_value(name)
    after_restart = configured if configured is not None else setting.default
    if after_restart is None or normalise(after_restart) == normalise(setting.want):
        return None
    source = facts.configured_source or "the config"
    said = (f"sets {name} = {configured}" if configured is not None
            else f"does not set {name} (default: {setting.default})")
    return Finding(
        f"{setting.check}.after_restart", WARNING,
        f"{name} is {setting.want} now, but {source} {said}: a restart undoes it",
        setting.why, Fix(config_lines=[_config_line(name, setting.want)], online=False,
                         note=f"add under [mysqld] in {source}"))


def binlog_checks(facts: Facts, defaults: Mapping[str, str]) -> list[Finding]:
    """Servers that write binlogs: durable binlog and redo, row format, chained replicas."""
    if not facts.binlogging:
        return [Finding("binlog", OK, "binary log off: binlog durability does not apply")]
    findings: list[Finding] = []
    findings += check_setting(facts, Setting(
        "sync_binlog", 1, "sync_binlog", WARNING,
        "with sync_binlog != 1 an OS crash or power loss can lose binlog events whose "
        "transactions InnoDB kept: this server's replicas miss them (or, on a replica, "
        "its GTID history and its data disagree after recovery)",
        default=defaults.get("sync_binlog")))
    flush = facts.var("innodb_flush_log_at_trx_commit")
    findings += check_setting(facts, Setting(
        "innodb_flush_log_at_trx_commit", 1, "innodb_flush_log_at_trx_commit", WARNING,
        "with a value other than 1 committed transactions can be lost from InnoDB while "
        "the binlog (and so the replicas) kept them; 0 loses them even when only mysqld "
        "crashes", default=defaults.get("innodb_flush_log_at_trx_commit")),
        severity=CRITICAL if flush == "0" else None)
    findings += check_setting(facts, Setting(
        "binlog_format", "ROW", "binlog_format", WARNING,
        "statement-based events are re-executed on the replica: non-deterministic "
        "statements (and re-applied ones after a crash) can produce different rows",
        default=defaults.get("binlog_format")))
    findings += _chained_replicas(facts)
    return findings


def _chained_replicas(facts: Facts) -> list[Finding]:
    name = facts.name("log_slave_updates")
    if not facts.is_replica or not facts.has("log_slave_updates"):
        return []
    if facts.is_on("log_slave_updates"):
        return [Finding("log_slave_updates", OK, f"{name} = ON")]
    if not facts.downstream:
        return [Finding("log_slave_updates", OK,
                        f"{name} = OFF (no replica pulls from this server)")]
    hosts = ", ".join(sorted(set(facts.downstream)))
    return [Finding(
        "log_slave_updates", CRITICAL,
        f"{name} = OFF but replicas pull binlogs from this server ({hosts})",
        "without it the transactions this replica applies are not written to its binlog: "
        "its own replicas never receive them and silently diverge",
        setting_fix(facts, Setting("log_slave_updates", "ON", "log_slave_updates", CRITICAL,
                                   ""), False))]
