"""The promotion dialect (switchover, failover, rejoin): MariaDB GTID statements.

Kept apart from mariadb.py because only promotion needs them and because promotion is
MariaDB-only for now: MySQL's GTID sets (uuid:interval) need a different comparison and
its replicas a different demotion; ``require_mariadb`` refuses them by name.
"""

from __future__ import annotations

import logging

from hotcopy.errors import RefusedError
from hotcopy.mysql.flavor.base import Flavor, Statement

log = logging.getLogger(__name__)

DEMOTE_TO_SLAVE_SINCE = (10, 10, 0)


def require_mariadb(flavor: Flavor, server: str) -> None:
    if flavor.name != "mariadb":
        raise RefusedError(f"{server} runs {flavor.name}: switchover and failover support "
                           "MariaDB GTIDs only", hint="promote MySQL servers by hand")


def gtid_state() -> Statement:
    """Everything a promotion decision reads from one server, in one round trip."""
    return ("SELECT @@GLOBAL.gtid_binlog_pos AS gtid_binlog_pos, "
            "@@GLOBAL.gtid_binlog_state AS gtid_binlog_state, "
            "@@GLOBAL.gtid_slave_pos AS gtid_slave_pos, "
            "@@GLOBAL.gtid_current_pos AS gtid_current_pos, "
            "@@GLOBAL.gtid_strict_mode AS gtid_strict_mode, "
            "@@GLOBAL.read_only AS read_only, @@GLOBAL.log_bin AS log_bin, "
            "@@GLOBAL.log_slave_updates AS log_slave_updates, "
            "@@GLOBAL.server_id AS server_id, @@GLOBAL.gtid_domain_id AS gtid_domain_id, "
            "VERSION() AS version", ())


def binlog_pos() -> Statement:
    return ("SELECT @@GLOBAL.gtid_binlog_pos AS gtid", ())


def set_read_only(on: bool) -> Statement:
    return ("SET GLOBAL read_only = %s", (1 if on else 0,))


def open_write_transactions() -> Statement:
    """Transactions that changed rows and have not ended, other than our own session.

    After read_only=ON only accounts that bypass it can still commit them; the others
    fail at COMMIT. Either way the switchover waits until none is left.
    """
    return ("SELECT t.trx_mysql_thread_id AS id, p.USER AS user, p.HOST AS host, "
            "t.trx_started AS started, t.trx_rows_modified AS rows_modified "
            "FROM information_schema.INNODB_TRX t "
            "LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
            "WHERE t.trx_rows_modified > 0 AND t.trx_mysql_thread_id <> CONNECTION_ID() "
            "ORDER BY t.trx_started", ())


def read_only_bypass_accounts() -> Statement:
    """Accounts that read_only does not stop (SUPER, READ_ONLY ADMIN), as 'user'@'host'."""
    return ("SELECT DISTINCT GRANTEE AS grantee FROM information_schema.USER_PRIVILEGES "
            "WHERE PRIVILEGE_TYPE IN ('SUPER', 'READ_ONLY ADMIN')", ())


def client_sessions() -> Statement:
    """Client sessions other than ours; replication and system threads left out."""
    return ("SELECT ID AS id, USER AS user, HOST AS host, COMMAND AS command, TIME AS time "
            "FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND COMMAND NOT "
            "IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', "
            "'Slave_worker') AND USER NOT IN ('system user', 'event_scheduler') ORDER BY ID",
            ())


def kill_session(thread_id: int) -> Statement:
    return ("KILL CONNECTION %s", (int(thread_id),))


def replicate_from(host: str, port: int, user: str, password: str, *,
                   demote: bool = False) -> Statement:
    """CHANGE MASTER by GTID; ``demote`` (10.10+) first adds gtid_binlog_pos to
    gtid_slave_pos, so an old master resumes at what it wrote itself."""
    demote_clause = ", MASTER_DEMOTE_TO_SLAVE = 1" if demote else ""
    return ("CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
            "MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1"
            f"{demote_clause}", (host, int(port), user, password))


def can_demote_to_slave(flavor: Flavor) -> bool:
    return flavor.name == "mariadb" and flavor.version >= DEMOTE_TO_SLAVE_SINCE


def set_slave_pos(gtid: str) -> Statement:
    return ("SET GLOBAL gtid_slave_pos = %s", (gtid,))


def stop_io_thread() -> Statement:
    return ("STOP SLAVE IO_THREAD", ())


def start_io_thread() -> Statement:
    return ("START SLAVE IO_THREAD", ())
