"""Pointing a server's replication at another server by GTID, and the undo that does it.

A switchover's rollback must put every server back on the old master from a fresh
process, so the undo names servers (config names) and reads the replication password
from ``[replication] option_file`` when it runs: no secret is ever journaled.
"""

from __future__ import annotations

import configparser
import logging
from collections.abc import Mapping
from typing import Any

from hotcopy.errors import RefusedError
from hotcopy.mysql import replication
from hotcopy.mysql.flavor import promotion as sql
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action

log = logging.getLogger(__name__)


def replication_account(runtime: Runtime) -> tuple[str, str]:
    """User and password of the replication account; never logged."""
    option_file = runtime.config.replication.option_file
    if not option_file:
        raise RefusedError("switchover and failover need the replication account: the config "
                           "has no [replication] option_file",
                           hint="point [replication] option_file at a file whose [client] "
                                "group sets user= and password= of the replication account")
    parser = configparser.ConfigParser(interpolation=None, allow_no_value=True)
    try:
        with open(option_file, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise RefusedError(f"cannot read replication.option_file {option_file}: "
                           f"{exc.strerror or exc}") from None
    user = (parser.get("client", "user", fallback="") or "").strip("'\"")
    password = (parser.get("client", "password", fallback="") or "").strip("'\"")
    if not user:
        raise RefusedError(f"replication.option_file {option_file} has no [client] user")
    return user, password


def replicates_from(server: Server, host: str, port: int) -> bool:
    status = replication.single_channel(server)
    return status is not None and (status.master_host, status.master_port) == (host, port)


def point_at(runtime: Runtime, name: str, master: str, *, demote: bool = False) -> None:
    """STOP SLAVE, CHANGE MASTER TO ``master`` with MASTER_USE_GTID=slave_pos, START SLAVE."""
    server = runtime.server(name)
    address = runtime.address(master)
    user, password = replication_account(runtime)
    server.execute(server.flavor.stop_replica())
    server.execute(sql.replicate_from(address.host, address.port, user, password,
                                      demote=demote))
    server.execute(server.flavor.start_replica())
    log.info("%s now replicates from %s by GTID", name, master)


@undo_action("mysql.replicate_from",
             describe="make {server} replicate from {master} again (MASTER_USE_GTID=slave_pos)")
def undo_replicate_from(runtime: Runtime, params: Mapping[str, Any]) -> None:
    """Idempotent: a server already on that master only gets its threads started."""
    server = runtime.server(params["server"])
    address = runtime.address(params["master"])
    if replicates_from(server, address.host, address.port):
        server.execute(server.flavor.start_replica())
        return
    point_at(runtime, params["server"], params["master"])


@undo_action("mysql.read_only", describe="set read_only={value} on {server}")
def undo_read_only(runtime: Runtime, params: Mapping[str, Any]) -> None:
    runtime.server(params["server"]).execute(sql.set_read_only(bool(params["value"])))


@undo_action("mysql.forget_replication",
             describe="stop replication on {server} and forget its master (RESET SLAVE ALL)")
def undo_forget_replication(runtime: Runtime, params: Mapping[str, Any]) -> None:
    server = runtime.server(params["server"])
    server.execute(server.flavor.stop_replica())
    server.execute(server.flavor.reset_replica_all())


@undo_action("mysql.replication_threads",
             describe="put the replication threads of {server} back as they were "
                      "(IO running: {io}, SQL running: {sql})")
def undo_replication_threads(runtime: Runtime, params: Mapping[str, Any]) -> None:
    """Start or stop each thread to match what it was: a thread an operator had stopped
    stays stopped, one that ran runs again."""
    server = runtime.server(params["server"])
    status = replication.single_channel(server)
    if status is None:
        return
    if params["sql"] and status.sql_running != "Yes":
        server.execute(server.flavor.start_sql_thread())
    elif not params["sql"] and status.sql_running == "Yes":
        server.execute(server.flavor.stop_sql_thread())
    io_on = status.io_running in ("Yes", "Connecting")
    if params["io"] and not io_on:
        server.execute(sql.start_io_thread())
    elif not params["io"] and io_on:
        server.execute(sql.stop_io_thread())
