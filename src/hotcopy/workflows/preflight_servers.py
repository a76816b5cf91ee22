"""Preflight: the configured master, source and target are three distinct servers.

A config's host and port say where we *meant* to connect; only the servers themselves
say who answered. Two names reaching one mysqld (a copied config, a port forward, a
proxy, a stray ``socket=``) would make hotcopy lock, snapshot and overwrite the same
server it copies from. So each one's @@server_id, @@hostname and @@datadir are compared,
and the source's IO thread must have last reached the configured master's server_id.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hotcopy.errors import MySQLError
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.mysql.server import ServerIdentity
from hotcopy.runtime import Runtime

if TYPE_CHECKING:
    from hotcopy.workflows.preflight import Preflight

log = logging.getLogger(__name__)


def check_distinct(report: Preflight, runtime: Runtime, source: str, target: str,
                   master: str | None, status: ReplicaStatus) -> None:
    """Errors when two roles are one server, or the source follows another master."""
    roles = [("source", source), ("target", target)]
    if master is not None:
        roles.insert(0, ("master", master))
    seen: list[tuple[str, str, ServerIdentity]] = []
    for role, name in roles:
        if role == "target" and not report.facts.get("target_running", True):
            continue  # a stopped target answers nothing; its datadir check is on the host
        try:
            identity = runtime.server(name).identity()
        except MySQLError as exc:
            if role == "master":
                report.warn("master.connect", f"master {exc.message}; that the source "
                            "replicates from it cannot be proven", exc.hint)
                continue
            report.error(f"{role}.connect", f"{role} {exc.message}", exc.hint)
            return
        report.facts[f"{role}_identity"] = {"server_id": identity.server_id,
                                            "hostname": identity.hostname,
                                            "datadir": identity.datadir}
        for other_role, other, known in seen:
            same = (identity.server_id == known.server_id
                    or (identity.hostname, identity.datadir) == (known.hostname, known.datadir))
            if same:
                report.error("servers.distinct", f"{other_role} {other} and {role} {name} are "
                             f"one server: {other} answers as {known}, {name} as {identity}",
                             hint=f"check host and port of servers.{other} and servers.{name} "
                                  f"in {runtime.config.source_path} (and that no proxy or "
                                  "port forward joins them); each server needs its own "
                                  "server_id")
        seen.append((role, name, identity))
        if role == "master" and status.master_server_id \
                and status.master_server_id != identity.server_id:
            report.error("source.master", f"the source {source} replicates from server_id "
                         f"{status.master_server_id} ({status.master_host}:"
                         f"{status.master_port}), but servers.{name} answers as {identity}",
                         hint=f"servers.{name} must be the shard's master the source "
                              "replicates from; fix its host/port in the config")
