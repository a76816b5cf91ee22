"""The audit of the data itself: tables whose rows a replica cannot identify, and tables
a crash leaves out of step with the replication position.

The usual defence against a transaction applied twice after a crash is that the
replica stops: a duplicate key on a repeated insert, a row not found on a repeated
delete. Both need a key. On a table without a primary key or NOT NULL unique key a
repeated insert adds a second copy and a repeated update changes "a" matching row, in
silence; row-based apply also finds each changed row by scanning the table, so one
large change can put the replica hours behind. Severity therefore grows with size.

Tables in non-transactional engines are not rolled back with the transaction whose
GTID the position records, so after a crash they can be ahead of or behind it however
safe the position itself is. On a replica that is critical, and the fix (a rebuild in
InnoDB, not binlogged, replication left running) is offered to ``--fix``.

Out of scope: transactions seen on the master's binlog that mix engines (they are
unsafe whichever server applies them; the binlog is not read here).
The system schemas are not audited here: the server requires its own engines there
(Aria, CSV), and the position tables have their own checks.
"""

from __future__ import annotations

import logging
from typing import Any

from hotcopy.mysql.audit.facts import Facts, TableFacts
from hotcopy.mysql.audit.model import CRITICAL, INFO, OK, WARNING, Finding, Fix
from hotcopy.mysql.flavor import Statement
from hotcopy.mysql.flavor import catalog as sql

log = logging.getLogger(__name__)

KEYLESS = "keyless_table"
NON_TRANSACTIONAL = "non_transactional_table"
DATA_CHECKS = frozenset({KEYLESS, NON_TRANSACTIONAL})

#: From here a table without a key is critical: row-based apply scans the table once
#: per changed row (MariaDB; MySQL's hash scan once per event), so one bulk change
#: costs rows x changes comparisons, and a replayed transaction does the most harm.
LARGE_ROWS = 100_000
LARGE_BYTES = 1 << 30

#: Engines whose changes are not undone when the transaction rolls back.
_NON_TRANSACTIONAL = frozenset({"myisam", "aria", "memory", "heap", "mrg_myisam", "csv",
                                "archive"})
#: What --fix may rebuild in InnoDB (the others have a purpose to ask about first).
_CONVERTIBLE = frozenset({"myisam", "aria", "memory", "heap"})
#: Engines that keep no rows: nothing to identify, nothing a crash can leave behind.
_NO_ROWS = frozenset({"blackhole", "federated", "federatedx", "connect", "spider", "sequence"})

KEYLESS_WHY = (
    "a replayed or skipped transaction cannot be detected on this table: a repeated insert "
    "adds a second copy instead of stopping on a duplicate key, and a repeated update or "
    "delete changes whichever row matches; row-based apply also finds every changed row by "
    "scanning the table, so one large change can put the replica hours behind")

_ENGINE_WHY = (
    "its changes are not rolled back with the transaction that made them: after a crash of "
    "this replica the table can be ahead of the replication position (the transaction is "
    "applied again: duplicates, or a stop on a duplicate key) or behind it")
_ENGINE_EXTRA = {
    "myisam": "; the table can also be left marked as crashed, needing REPAIR TABLE",
    "aria0": "; with TRANSACTIONAL=0 the table can also be left crashed, needing REPAIR",
    "aria": "; Aria's TRANSACTIONAL=1 makes each statement crash-safe, not the transaction",
    "memory": "; a MEMORY table is also emptied by every restart, and then differs from the "
              "master's until its rows are written again (updates stop on row-not-found)",
}


def keyless_severity(table: TableFacts) -> str:
    large = table.rows >= LARGE_ROWS or table.data_bytes >= LARGE_BYTES
    return CRITICAL if large else WARNING


def engine_kind(table: TableFacts) -> str | None:
    """How the table's engine is non-transactional ("aria0": TRANSACTIONAL=0), or None."""
    engine = table.engine.lower()
    if engine == "aria":
        options = table.create_options.lower().replace(" ", "")
        unsafe = "transactional=0" in options or table.row_format.lower() != "page"
        return "aria0" if unsafe else "aria"
    if engine == "heap":
        return "memory"
    return engine if engine in _NON_TRANSACTIONAL else None


def _size(table: TableFacts) -> str:
    rows = f"~{table.rows:,} rows" if table.engine.lower() == "innodb" else f"{table.rows:,} rows"
    mb = table.data_bytes / 1e6  # decimal MB, the unit of every size hotcopy prints
    return rows + (f", {mb:,.0f} MB" if mb >= 1 else "")


def checks(facts: Facts) -> list[Finding]:
    findings = keyless(facts) + engines(facts)
    if not findings:
        findings.append(Finding("data_tables", OK,
                                f"all {len(facts.tables)} user table(s) have a row key and a "
                                "transactional engine"))
    return findings


def _key_fix(facts: Facts, table: TableFacts) -> Fix:
    nullable = next((k for k in table.keys if not k.identifies_rows), None)
    statement: Statement
    if nullable is not None:
        statement = sql.add_primary_key(table.schema, table.name, list(nullable.columns))
        note = (f"promotes unique key {nullable.name} to the primary key: its columns "
                f"{', '.join(nullable.nullable)} become NOT NULL (refused while a row holds "
                "NULL there)")
    else:
        statement = facts.flavor.add_row_id_primary_key(table.schema, table.name)
        note = ("a key on columns that already identify a row is better; an added "
                "AUTO_INCREMENT column numbers the existing rows in each server's own scan "
                "order, so compare the table's checksums across servers afterwards")
    note += ("; run it on the master so every server gets it through replication (never "
             "applied by --fix)")
    variable = facts.flavor.generated_primary_key_variable()
    if variable is not None and str(facts.variables.get(variable, "")).upper() not in (
            "ON", "1"):
        note += (f"; for new tables: SET PERSIST {variable} = ON (MySQL 8.0.30+ then gives "
                 "every table created without a key an invisible primary key)")
    return Fix(statements=[statement], online=False, note=note)


def keyless(facts: Facts) -> list[Finding]:
    findings = []
    for table in facts.tables:
        if table.row_key is not None or table.engine.lower() in _NO_ROWS:
            continue
        nullable = [k for k in table.keys if not k.identifies_rows]
        detail = (f"; unique key {nullable[0].name} admits NULL in "
                  f"{', '.join(nullable[0].nullable)}" if nullable else "")
        findings.append(Finding(
            KEYLESS, keyless_severity(table),
            f"{table.full_name} ({table.engine}, {_size(table)}) has no primary key or NOT "
            f"NULL unique key{detail}", KEYLESS_WHY, _key_fix(facts, table),
            subject=table.full_name))
    return findings


def engines(facts: Facts) -> list[Finding]:
    findings = []
    for table in facts.tables:
        kind = engine_kind(table)
        if kind is None:
            continue
        label = "Aria (TRANSACTIONAL=0)" if kind == "aria0" else table.engine
        alter = sql.alter_engine(table.schema, table.name, "InnoDB")
        convertible = table.engine.lower() in _CONVERTIBLE
        if facts.is_replica and convertible:
            fix = Fix(statements=[alter], no_binlog=True, note=(
                "rebuilds the table on this replica only, with sql_log_bin=0 (the master "
                "and the other replicas keep their engine); replication keeps running, its "
                "changes to this table wait for the rebuild (time and disk on big tables)"))
        elif facts.is_replica:
            fix = Fix(statements=[alter], online=False, note=(
                f"not converted by --fix: a {table.engine} table usually has a purpose "
                "(logs, archives, a MERGE union); convert it by hand if it holds data"))
        else:
            fix = Fix(statements=[alter], online=False, note=(
                "listed only: on a master the ALTER replicates to every replica unless run "
                "with sql_log_bin=0; --fix converts tables on replicas"))
        findings.append(Finding(
            NON_TRANSACTIONAL, CRITICAL if facts.is_replica else INFO,
            f"{table.full_name} is {label} ({_size(table)})"
            + ("" if facts.is_replica else ": matters on the replicas of this server"),
            _ENGINE_WHY + _ENGINE_EXTRA.get(kind, ""), fix, subject=table.full_name))
    return findings


def lists(facts: Facts, findings: list[Finding]) -> dict[str, Any]:
    """Per schema, the tables behind the data findings (what `audit --json` carries)."""
    severity = {(f.check, f.subject): f.severity for f in findings if f.subject}
    keyless_by_schema: dict[str, list[dict[str, Any]]] = {}
    loose_by_schema: dict[str, list[dict[str, Any]]] = {}
    for table in facts.tables:
        entry: dict[str, Any] = {"table": table.name, "engine": table.engine,
                                 "rows": table.rows, "data_bytes": table.data_bytes}
        if (KEYLESS, table.full_name) in severity:
            nullable = [k.name for k in table.keys if not k.identifies_rows]
            keyless_by_schema.setdefault(table.schema, []).append(
                {**entry, "severity": severity[(KEYLESS, table.full_name)],
                 "nullable_unique_keys": nullable})
        if (NON_TRANSACTIONAL, table.full_name) in severity:
            loose_by_schema.setdefault(table.schema, []).append(
                {**entry, "severity": severity[(NON_TRANSACTIONAL, table.full_name)],
                 "transactional_option": engine_kind(table) == "aria"})
    return {"tables": len(facts.tables), "keyless_tables": keyless_by_schema,
            "non_transactional_tables": loose_by_schema,
            "out_of_scope": "transactions that mix engines, seen on the master's binlog"}


def summary(data: dict[str, Any], shown: int = 10) -> dict[str, Any]:
    """Counts and the largest tables of each list: small enough for a job report."""
    def flat(key: str) -> list[dict[str, Any]]:
        return sorted(({**t, "table": f"{schema}.{t['table']}"}
                       for schema, tables in data.get(key, {}).items() for t in tables),
                      key=lambda t: (-int(t["rows"]), t["table"]))

    keyless_tables, loose = flat("keyless_tables"), flat("non_transactional_tables")
    return {"tables": data.get("tables", 0),
            "keyless": len(keyless_tables),
            "keyless_critical": sum(1 for t in keyless_tables if t["severity"] == CRITICAL),
            "keyless_rows": sum(int(t["rows"]) for t in keyless_tables),
            "largest_keyless": [f"{t['table']} ({t['rows']:,} rows)"
                                for t in keyless_tables[:shown]],
            "non_transactional": len(loose),
            "non_transactional_tables": [f"{t['table']} ({t['engine']})" for t in loose[:shown]]}
