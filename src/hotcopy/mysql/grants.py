"""The privileges hotcopy's accounts need, per flavor, and the GRANT that gives them.

An admin account with ALL PRIVILEGES works but is more than hotcopy needs; a DBA
creating a dedicated account wants the minimal set, and ``hotcopy check`` compares the
account's grants with it so that a missing privilege is found before a clone, not by
the statement that needs it halfway through.

Why each is needed (MariaDB 10.5+, where SUPER was split):
  RELOAD                  FLUSH TABLES / ENGINE LOGS, BACKUP STAGE
  PROCESS                 SHOW PROCESSLIST: replicas of the target, long queries
  SUPER                   SET GLOBAL (pre-flush, fast shutdown, crash-safety fixes)
  READ_ONLY ADMIN         the same on a read_only replica (10.11: SUPER no longer covers it;
                          found by a clone with exactly this set, see tests/integration)
  BINLOG MONITOR          SHOW MASTER STATUS, binlog positions
  REPLICATION SLAVE ADMIN STOP/START SLAVE, CHANGE MASTER, gtid_slave_pos
  SLAVE MONITOR           SHOW SLAVE STATUS
  SELECT                  checksums of every table, reading mysql.* settings
  ALTER ON mysql.*        the audit's fix: position tables to InnoDB
MySQL 8.0+ (from its documentation; no MySQL server runs in this project's tests):
RELOAD, PROCESS, REPLICATION CLIENT, REPLICATION_SLAVE_ADMIN, SYSTEM_VARIABLES_ADMIN,
BACKUP_ADMIN, SELECT, ALTER ON mysql.*.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)

_GLOBAL = {
    "mariadb": ("RELOAD", "PROCESS", "SUPER", "READ_ONLY ADMIN", "BINLOG MONITOR",
                "REPLICATION SLAVE ADMIN", "SLAVE MONITOR", "SELECT"),
    "mysql": ("RELOAD", "PROCESS", "REPLICATION CLIENT", "REPLICATION_SLAVE_ADMIN",
              "SYSTEM_VARIABLES_ADMIN", "BACKUP_ADMIN", "SELECT"),
}
_ON_MYSQL_SCHEMA = ("ALTER",)
#: Names MariaDB accepts for the same privilege (SHOW GRANTS prints the first).
_ALIASES = {"REPLICATION CLIENT": "BINLOG MONITOR", "REPLICA MONITOR": "SLAVE MONITOR",
            "REPLICATION REPLICA ADMIN": "REPLICATION SLAVE ADMIN"}
_REPLICATION = ("REPLICATION SLAVE",)

_GRANT = re.compile(r"^GRANT (?P<privs>.+?) ON (?P<on>\S+) TO ", re.IGNORECASE)


@dataclass(frozen=True)
class GrantCheck:
    account: str
    missing: tuple[str, ...]
    grant_sql: str | None  # what to run to add them; None when nothing is missing


def privileges(grant_lines: list[str]) -> dict[str, set[str]]:
    """``{"*.*": {...}, "`mysql`.*": {...}}`` from SHOW GRANTS (the hashes are ignored)."""
    found: dict[str, set[str]] = {}
    for line in grant_lines:
        match = _GRANT.match(line.strip())
        if not match or match.group("privs").upper().startswith("PROXY"):
            continue
        on = match.group("on").replace("`", "")
        names = {p.strip().upper() for p in match.group("privs").split(",")}
        found.setdefault(on, set()).update(_ALIASES.get(n, n) for n in names)
    return found


def _has(held: dict[str, set[str]], scope: str, privilege: str) -> bool:
    for on in ("*.*", scope):
        names = held.get(on, set())
        if privilege in names or "ALL PRIVILEGES" in names or "ALL" in names:
            return True
    return False


def _current_account(server: Server) -> tuple[str, list[str]]:
    account = str(server.scalar(("SELECT CURRENT_USER()", ())))
    rows = server.query(("SHOW GRANTS FOR CURRENT_USER()", ()))
    return account, [str(next(iter(row.values()))) for row in rows]


def _quoted(account: str) -> str:
    user, _, host = account.rpartition("@")
    return f"'{user}'@'{host}'"


def check_admin(server: Server) -> GrantCheck:
    """The admin account hotcopy connects with, against the minimal set of its flavor."""
    account, lines = _current_account(server)
    held = privileges(lines)
    flavor = "mysql" if server.flavor.name.startswith("mysql") else "mariadb"
    missing_global = [p for p in _GLOBAL[flavor] if not _has(held, "*.*", p)]
    missing_mysql = [p for p in _ON_MYSQL_SCHEMA if not _has(held, "mysql.*", p)]
    statements = []
    if missing_global:
        statements.append(f"GRANT {', '.join(missing_global)} ON *.* TO {_quoted(account)};")
    if missing_mysql:
        statements.append(f"GRANT {', '.join(missing_mysql)} ON mysql.* TO {_quoted(account)};")
    missing = tuple(missing_global + [f"{p} ON mysql.*" for p in missing_mysql])
    return GrantCheck(account, missing, " ".join(statements) or None)


def check_replication(server: Server) -> GrantCheck:
    """The replication account (connected to the master with it): REPLICATION SLAVE."""
    account, lines = _current_account(server)
    held = privileges(lines)
    missing = tuple(p for p in _REPLICATION if not _has(held, "*.*", p))
    grant = (f"GRANT {', '.join(missing)} ON *.* TO {_quoted(account)};" if missing else None)
    return GrantCheck(account, missing, grant)
