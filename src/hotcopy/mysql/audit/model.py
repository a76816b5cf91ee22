"""What an audit reports: findings with a severity, why they matter, and the exact fix.

A finding is about one setting or table of one server. ``why`` says what goes wrong
after a crash, because "set X to Y" alone does not tell a DBA whether to wake up.
A fix is either applied online by ``--fix`` (statements, run in order, with the
replication threads stopped around them when ``stop_replication`` says so), or needs
the server's config file and a restart (``config_lines``, to paste under [mysqld]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hotcopy.mysql.flavor import Statement

CRITICAL = "critical"  # a crash can skip or repeat a transaction, or replication breaks
WARNING = "warning"    # weaker durability, or safe only until something else changes
INFO = "info"          # worth knowing; nothing to fix
OK = "ok"

SEVERITY_ORDER = {CRITICAL: 0, WARNING: 1, INFO: 2, OK: 3}
PROBLEM_SEVERITIES = (CRITICAL, WARNING)


def show_sql(statement: Statement) -> str:
    """A statement with its parameters inlined, for people to read or paste (no secrets)."""
    sql, args = statement
    if not args:
        return sql

    def literal(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int | float | Decimal):
            return str(value)
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{text}'"

    return sql.replace("%s", "{}").format(*(literal(a) for a in args))


@dataclass
class Fix:
    """How to fix one finding: online statements, config lines, or both."""

    statements: list[Statement] = field(default_factory=list)
    config_lines: list[str] = field(default_factory=list)
    #: The statements only take effect after a restart, or there are none to run.
    restart: bool = False
    #: "sql" / "all": stop the SQL thread / both threads while the statements run.
    stop_replication: str = ""
    #: Run with sql_log_bin=0 so a repair never becomes a local GTID of a replica.
    no_binlog: bool = False
    #: Applied online by --fix (else listed only: needs a restart or a human decision).
    online: bool = True
    note: str = ""
    channel: str = ""
    #: A fix that needs more than statements (e.g. "gtid_positioning": check the
    #: position against the master before switching).
    action: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"sql": [show_sql(s) for s in self.statements],
                "config_lines": list(self.config_lines), "restart": self.restart,
                "online": self.online and bool(self.statements) and not self.restart,
                "stop_replication": self.stop_replication, "no_binlog": self.no_binlog,
                "note": self.note}


@dataclass
class Finding:
    check: str
    severity: str
    message: str
    why: str = ""
    fix: Fix | None = None
    #: problem -> fixed (by --fix) | fix-failed; ok/info findings stay "ok".
    state: str = "ok"
    fix_error: str = ""
    #: What the finding is about when a check reports many (a table: "schema.table").
    subject: str = ""

    def __post_init__(self) -> None:
        if self.severity in PROBLEM_SEVERITIES and self.state == "ok":
            self.state = "problem"

    @property
    def is_problem(self) -> bool:
        return self.state in ("problem", "fix-failed")

    @property
    def applies_online(self) -> bool:
        """--fix would apply it: a problem with online statements, no restart needed."""
        fix = self.fix
        return bool(self.is_problem and fix is not None and fix.online and not fix.restart
                    and fix.statements)

    @property
    def key(self) -> str:
        """Names one finding among a server's (what a confirmed fix plan lists)."""
        return f"{self.check}:{self.subject}" if self.subject else self.check

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"check": self.check, "severity": self.severity,
                                "state": self.state, "message": self.message, "why": self.why,
                                "fix": self.fix.as_dict() if self.fix else None}
        if self.fix_error:
            data["fix_error"] = self.fix_error
        if self.subject:
            data["subject"] = self.subject
        return data


@dataclass
class ServerAudit:
    server: str
    flavor: str = ""
    version: str = ""
    role: str = ""  # replica | master | standalone | unreachable
    findings: list[Finding] = field(default_factory=list)
    diagnoses: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    #: Fixes --fix attempted (state fixed or fix-failed); ``findings`` is the re-check.
    applied: list[Finding] = field(default_factory=list)
    #: Why the server could not be audited (role "unreachable"): message and hint.
    error: dict[str, str] = field(default_factory=dict)
    #: The data audit's lists (tables without a key, in non-transactional engines).
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.is_problem]

    @property
    def reachable(self) -> bool:
        return self.role != "unreachable"

    @property
    def status(self) -> str:
        """crash-safe | not-crash-safe | unreachable (nothing known: no verdict)."""
        if not self.reachable:
            return "unreachable"
        return "crash-safe" if self.crash_safe else "not-crash-safe"

    def fix_plan(self) -> list[dict[str, Any]]:
        """What --fix would do on this server, in order (nothing is run to find out)."""
        return [{"server": self.server, "key": f.key, "check": f.check,
                 "message": f.message, **(f.fix.as_dict() if f.fix else {})}
                for f in self.findings if f.applies_online]

    @property
    def crash_safe(self) -> bool:
        """No critical problem left (warnings are weaker durability, not a wrong position)."""
        return self.role != "unreachable" and not any(
            f.severity == CRITICAL for f in self.problems) and not self.diagnoses

    def sorted_findings(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: (not f.is_problem,
                                                    SEVERITY_ORDER.get(f.severity, 9), f.check))

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "flavor": self.flavor, "version": self.version,
                "role": self.role, "status": self.status,
                "crash_safe": self.crash_safe if self.reachable else None,
                "error": dict(self.error), "data": dict(self.data),
                "fix_plan": self.fix_plan(),
                "problems": len(self.problems),
                "findings": [f.as_dict() for f in self.sorted_findings()],
                "fixes_applied": [f.as_dict() for f in self.applied],
                "diagnoses": list(self.diagnoses), "facts": dict(self.facts)}
