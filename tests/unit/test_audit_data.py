"""The data checks as pure functions of catalog facts: the dialects that cannot run here
(MySQL 8.0.x) and the edges of severity, engines and keys.

The same checks run against live MariaDB servers in tests/integration/test_audit_data.py;
here the facts are what information_schema returns, written down.
"""

from __future__ import annotations

from hotcopy.mysql.audit import run_checks
from hotcopy.mysql.audit.data import (
    KEYLESS,
    LARGE_BYTES,
    LARGE_ROWS,
    NON_TRANSACTIONAL,
    checks,
    engine_kind,
    lists,
    summary,
)
from hotcopy.mysql.audit.facts import Facts, TableFacts, UniqueKey
from hotcopy.mysql.audit.model import CRITICAL, INFO, OK, WARNING, Finding, ServerAudit
from hotcopy.mysql.flavor.base import Flavor, ReplicaStatus
from hotcopy.mysql.flavor.mariadb import MariaDB
from hotcopy.mysql.flavor.mysql import MySQL
from hotcopy.workflows.audit import SHOWN_TABLES, build_report, render

CHANNEL = ReplicaStatus("10.0.0.1", 3306, "repl", "Yes", "Yes", 0, "bin.000001", 4, "", "",
                        0, "Slave_Pos")
PK = UniqueKey("PRIMARY", ("id",), ())


def table(name: str, engine: str = "InnoDB", rows: int = 10, data_bytes: int = 16384,
          keys: tuple[UniqueKey, ...] = (), row_format: str = "Dynamic",
          options: str = "") -> TableFacts:
    return TableFacts("app", name, engine, rows, data_bytes, row_format, options, keys)


def facts(flavor: Flavor, *tables: TableFacts, replica: bool = True,
          variables: dict[str, str] | None = None) -> Facts:
    return Facts(flavor=flavor, version="x", variables=dict(variables or {}),
                 channels=[CHANNEL] if replica else [], tables=list(tables))


def found(findings: list[Finding], check: str) -> dict[str, Finding]:
    return {f.subject: f for f in findings if f.check == check}


def test_severity_of_a_keyless_table_grows_with_its_size() -> None:
    result = found(checks(facts(MariaDB((10, 11, 6)),
                                table("below", rows=LARGE_ROWS - 1),
                                table("at", rows=LARGE_ROWS),
                                table("wide", rows=5, data_bytes=LARGE_BYTES),
                                table("empty", rows=0))), KEYLESS)
    assert {name.split(".")[1]: f.severity for name, f in result.items()} == {
        "below": WARNING, "at": CRITICAL, "wide": CRITICAL, "empty": WARNING}


def test_a_row_key_is_a_primary_key_or_a_unique_key_without_nullable_columns() -> None:
    nullable = UniqueKey("u", ("a", "b"), ("b",))
    strict = UniqueKey("u2", ("c",), ())
    result = found(checks(facts(MariaDB((10, 11, 6)),
                                table("pk", keys=(PK,)), table("unique_not_null", keys=(strict,)),
                                table("unique_nullable", keys=(nullable,)))), KEYLESS)
    assert set(result) == {"app.unique_nullable"}
    finding = result["app.unique_nullable"]
    assert "unique key u admits NULL in b" in finding.message
    assert finding.fix is not None and finding.fix.statements == [
        ("ALTER TABLE `app`.`unique_nullable` ADD PRIMARY KEY (`a`, `b`)", ())]
    assert not finding.applies_online  # needs the master, never --fix


def test_mysql_8030_names_the_generated_invisible_primary_key_setting() -> None:
    new = found(checks(facts(MySQL((8, 0, 32)), table("t"))), KEYLESS)["app.t"]
    assert new.fix is not None
    assert new.fix.statements == [("ALTER TABLE `app`.`t` ADD COLUMN `my_row_id` BIGINT "
                                   "UNSIGNED NOT NULL AUTO_INCREMENT INVISIBLE PRIMARY KEY "
                                   "FIRST", ())]
    assert "SET PERSIST sql_generate_invisible_primary_key = ON" in new.fix.note
    already = found(checks(facts(MySQL((8, 0, 32)), table("t"),
                                 variables={"sql_generate_invisible_primary_key": "ON"})),
                    KEYLESS)["app.t"]
    assert already.fix is not None
    assert "sql_generate_invisible_primary_key" not in already.fix.note
    old = found(checks(facts(MySQL((8, 0, 22)), table("t"))), KEYLESS)["app.t"]
    assert old.fix is not None and "INVISIBLE" not in old.fix.statements[0][0]
    assert "sql_generate_invisible_primary_key" not in old.fix.note


def test_engines_aria_transactional_option_memory_and_ones_without_rows() -> None:
    assert engine_kind(table("a", "Aria", row_format="Page", options="transactional=1")) == "aria"
    assert engine_kind(table("a", "Aria", row_format="Page", options="transactional=0")) == "aria0"
    assert engine_kind(table("a", "Aria", row_format="Dynamic",
                             options="row_format=DYNAMIC transactional=0")) == "aria0"
    assert engine_kind(table("m", "MEMORY")) == "memory"
    assert engine_kind(table("i", "InnoDB")) is None
    result = checks(facts(MariaDB((10, 11, 6)),
                          table("aria0", "Aria", keys=(PK,), row_format="Page",
                                options="transactional=0"),
                          table("heap", "MEMORY", keys=(PK,)),
                          table("log", "CSV", keys=(PK,)),
                          table("hole", "BLACKHOLE")))
    loose = found(result, NON_TRANSACTIONAL)
    assert set(loose) == {"app.aria0", "app.heap", "app.log"}
    assert "Aria (TRANSACTIONAL=0)" in loose["app.aria0"].message
    assert "emptied by every restart" in loose["app.heap"].why
    assert loose["app.aria0"].applies_online and loose["app.heap"].applies_online
    assert not loose["app.log"].applies_online  # CSV: a human decides
    assert not found(result, KEYLESS)  # a BLACKHOLE keeps no rows to identify


def test_on_a_replica_the_rebuild_is_online_and_unbinlogged_on_a_master_listed() -> None:
    legacy = table("legacy", "MyISAM", keys=(PK,))
    on_replica = found(checks(facts(MariaDB((10, 11, 6)), legacy)),
                       NON_TRANSACTIONAL)["app.legacy"]
    assert on_replica.severity == CRITICAL and on_replica.applies_online
    assert on_replica.fix is not None and on_replica.fix.no_binlog
    assert on_replica.fix.stop_replication == ""  # replication keeps running
    assert on_replica.fix.statements == [("ALTER TABLE `app`.`legacy` ENGINE=InnoDB", ())]
    on_master = found(checks(facts(MariaDB((10, 11, 6)), legacy, replica=False)),
                      NON_TRANSACTIONAL)["app.legacy"]
    assert on_master.severity == INFO and not on_master.applies_online


def test_clean_data_is_one_ok_finding_and_the_lists_are_per_schema() -> None:
    assert [(f.check, f.severity) for f in checks(facts(MariaDB((10, 11, 6)),
                                                        table("t", keys=(PK,))))] == [
        ("data_tables", OK)]
    data_facts = facts(MariaDB((10, 11, 6)), table("big", rows=LARGE_ROWS * 3),
                       table("small", rows=3),
                       TableFacts("other", "m", "MyISAM", 7, 100, "Fixed", "", (PK,)))
    findings = run_checks(data_facts)
    data = lists(data_facts, findings)
    assert sorted(data["keyless_tables"]) == ["app"]
    assert [t["table"] for t in data["keyless_tables"]["app"]] == ["big", "small"]
    assert data["non_transactional_tables"]["other"][0]["severity"] == CRITICAL
    brief = summary(data)
    assert brief["keyless"] == 2 and brief["keyless_critical"] == 1
    assert brief["largest_keyless"][0] == f"app.big ({LARGE_ROWS * 3:,} rows)"
    assert brief["non_transactional_tables"] == ["other.m (MyISAM)"]


def _rendered(*audits: ServerAudit, dry_run: bool = False) -> str:
    plan = [step for a in audits for step in a.fix_plan()]
    return "\n".join(render(build_report(list(audits), fix=False, dry_run=dry_run, plan=plan)))


def test_terminal_shows_ten_tables_per_check_and_says_how_many_more() -> None:
    many = facts(MariaDB((10, 11, 6)), *(table(f"t{i:02d}") for i in range(25)),
                 table("legacy", "MyISAM", keys=(PK,)))
    audit = ServerAudit("replica1", "mariadb", "10.11.6", "replica",
                        findings=run_checks(many))
    text = _rendered(audit)
    assert text.count(" keyless_table: ") == SHOWN_TABLES
    assert "... and 15 more keyless_table finding(s): all are in --json" in text
    assert text.count("why: a replayed or skipped transaction") == 1  # said once
    assert "NOT crash-safe" in text and "--fix --dry-run" in text
    planned = _rendered(audit, dry_run=True)
    assert "--fix would apply 1 fix(es):" in planned
    assert "ALTER TABLE `app`.`legacy` ENGINE=InnoDB;" in planned
    assert "replication keeps running; not binlogged (sql_log_bin=0)" in planned


def test_an_unreachable_server_is_unreachable_with_exit_3_not_unsafe() -> None:
    ghost = ServerAudit("ghost", role="unreachable",
                        error={"message": "cannot connect to ghost", "hint": "is it up?"})
    fine = ServerAudit("replica1", "mariadb", "10.11.6", "replica",
                       findings=[Finding("using_gtid", OK, "Slave_Pos")])
    report = build_report([ghost, fine], fix=False, dry_run=False, plan=[])
    assert report["exit_code"] == 3 and report["unreachable"] == ["ghost"]
    assert report["crash_safe"] == {"ghost": None, "replica1": True}
    assert report["problems"] == 0
    text = "\n".join(render(report))
    assert "ghost[/]: [bold yellow]UNREACHABLE[/], not audited" in text
    assert "NOT crash-safe" not in text and "cannot connect to ghost" in text
    assert build_report([fine], fix=False, dry_run=False, plan=[])["exit_code"] == 0
