"""Undo actions owned by the SQL side: how to give a server back what a step took.

Each is idempotent and safe when the forward change never happened, because a rollback
after a crash cannot know how far the step got.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hotcopy.errors import HotcopyError
from hotcopy.mysql.flavor.base import connection_owner, kill_connection, set_global
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action

log = logging.getLogger(__name__)


@undo_action("mysql.start_sql_thread", describe="start the replication SQL thread on {server}")
def start_sql_thread(runtime: Runtime, params: Mapping[str, Any]) -> None:
    server = runtime.server(params["server"])
    server.execute(server.flavor.start_sql_thread())


@undo_action("mysql.start_replica", describe="start replication (IO and SQL threads) on {server}")
def start_replica(runtime: Runtime, params: Mapping[str, Any]) -> None:
    server = runtime.server(params["server"])
    server.execute(server.flavor.start_replica())


@undo_action("mysql.release_lock_session",
             describe="end the backup-lock session {thread_id} on {server}")
def release_lock_session(runtime: Runtime, params: Mapping[str, Any]) -> None:
    """Kill the session that holds the lock, if it is still ours and still there.

    When the controller dies its TCP connection usually dies with it and the server
    drops the lock, but a controller machine that vanished from the network leaves the
    session open until TCP gives up; this undo does not wait for that.
    """
    server = runtime.server(params["server"])
    row = server.one(connection_owner(int(params["thread_id"])))
    if row is None:
        return
    if params.get("user") and row["USER"] != params["user"]:
        log.warning("session %s on %s now belongs to %s; not killing it", params["thread_id"],
                    server.name, row["USER"])
        return
    server.execute(kill_connection(int(params["thread_id"])))


@undo_action("mysql.set_global", describe="set {variable} back to {value} on {server}")
def restore_global(runtime: Runtime, params: Mapping[str, Any]) -> None:
    runtime.server(params["server"]).execute(set_global(params["variable"], params["value"]))


@undo_action("mysql.set_global_if_running",
             describe="set {variable} back to {value} on {server} (if its mysqld still runs)")
def restore_global_if_running(runtime: Runtime, params: Mapping[str, Any]) -> None:
    """For a server a rollback stops anyway: a mysqld that is gone took the value with it,
    and the next start reads the server's own configuration."""
    try:
        runtime.server(params["server"]).execute(set_global(params["variable"],
                                                            params["value"]))
    except HotcopyError:
        if runtime.mysqld(params["server"]).is_running():
            raise
        log.info("%s: mysqld is not running; %s comes from its configuration at the next "
                 "start", params["server"], params["variable"])


@undo_action("mysqld.start", describe="start mysqld on {server}")
def start_mysqld(runtime: Runtime, params: Mapping[str, Any]) -> None:
    control = runtime.mysqld(params["server"])
    if not control.is_running():
        control.start(timeout=runtime.config.clone.start_timeout_s)
    runtime.server(params["server"]).close()


@undo_action("mysqld.stop", describe="stop mysqld on {server}")
def stop_mysqld(runtime: Runtime, params: Mapping[str, Any]) -> None:
    runtime.server(params["server"]).close()
    runtime.mysqld(params["server"]).stop()
