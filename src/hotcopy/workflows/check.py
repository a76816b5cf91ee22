"""``hotcopy check``: is this shard ready for a clone, as it is now? (the doctor)

A clone's preflight looks at one source and one target; before the first clone of a
new shard the operator wants every server at once: can hotcopy log in, are the tools
there, does the admin account have the privileges (and if not, which GRANT adds them),
can each datadir be snapshotted, do the transfer ports get through between the hosts,
can the journal be written. Each answer is a row; any problem makes the exit code 2.

Everything is read-only but the port probe, which runs a listener of its own for a few
seconds (socat, on a free port of ``transfer.port_range``) and always stops it.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from hotcopy import remote
from hotcopy.errors import CommandError, HotcopyError, RefusedError
from hotcopy.hosts import Executor
from hotcopy.hosts.ssh import SudoRefused
from hotcopy.mysql import grants, replication
from hotcopy.mysql.connection import ServerAddress
from hotcopy.mysql.server import Server
from hotcopy.remote import missing_tools
from hotcopy.runtime import Runtime
from hotcopy.snapshot.base import backend_for
from hotcopy.transfer.base import candidate_ports, kill_marked, marker, used_ports

log = logging.getLogger(__name__)

OK, PROBLEM, WARNING = "ok", "problem", "warning"

#: What a clone runs on a host in either role (see the preflight), per transfer method.
BASE_TOOLS = ["rsync", "find", "stat", "findmnt", "df", "chown", "sync", "dd"]
METHOD_TOOLS = {"auto": [], "rsyncd": ["rsync"], "rsync_ssh": ["rsync", "ssh"],
                "stream": ["bash", "tar", "socat", "setsid", "ss"],
                "zfs_send": ["zfs", "socat", "dd", "setsid"]}
#: The end that listens, per method; ``auto`` picks rsyncd where no ZFS is involved.
LISTENER = {"auto": "source", "rsyncd": "source", "stream": "target", "zfs_send": "target"}
_PROBE_WAIT_S = 5.0


@dataclass
class Row:
    server: str
    check: str
    status: str
    detail: str
    fix: str | None = None


def run(runtime: Runtime, journal_path: str) -> dict[str, Any]:
    rows: list[Row] = []
    rows.append(_journal(journal_path))
    reachable: list[str] = []
    replicas: list[str] = []
    for name in runtime.config.servers:
        if not _host(runtime, name, rows):
            continue
        reachable.append(name)
        if _sql(runtime, name, rows):
            replicas.append(name)
    _replication_account(runtime, rows)
    _ports(runtime, [r for r in replicas if r in reachable], rows)
    problems = sum(1 for r in rows if r.status == PROBLEM)
    return {"rows": [asdict(r) for r in rows], "problems": problems,
            "exit_code": 2 if problems else 0}


def _journal(path: str) -> Row:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return Row("-", "journal", PROBLEM, f"{directory} does not exist",
                   f"install -d -m 0700 {directory} (or fix [journal] path)")
    target = path if os.path.exists(path) else directory
    if not os.access(target, os.W_OK):
        return Row("-", "journal", PROBLEM, f"{target} is not writable by this user",
                   "run hotcopy as the user that owns the journal")
    state = "exists" if os.path.exists(path) else "will be created by the first clone"
    return Row("-", "journal", OK, f"{path} ({state})")


def _host(runtime: Runtime, name: str, rows: list[Row]) -> bool:
    """ssh login and host key, the tools, the snapshot backend of the datadir."""
    if not _ssh(runtime, name, rows):
        return False
    _tools(runtime, name, rows)
    _snapshot(runtime, name, rows)
    return True


def _ssh(runtime: Runtime, name: str, rows: list[Row]) -> bool:
    conf = runtime.config.server(name)
    if conf.ssh == "local":
        rows.append(Row(name, "ssh", OK, "local (no ssh)"))
        return True
    try:
        runtime.executor(name).run(["true"], timeout=runtime.config.ssh.connect_timeout_s + 20)
    except SudoRefused as exc:  # the login worked; `sudo -n true` did not
        rows.append(Row(name, "ssh", OK, f"{conf.ssh}: login works, host key known"))
        rows.append(Row(name, "sudo", PROBLEM, exc.message, exc.hint))
        return False
    except CommandError as exc:  # ssh itself failed (255), or the login shell did
        stderr = exc.stderr or exc.message
        why = (stderr.strip().splitlines() or [f"exit {exc.returncode}"])[-1]
        if "host key verification failed" in stderr.lower():
            known = runtime.config.ssh.known_hosts or "~/.ssh/known_hosts"
            rows.append(Row(name, "host key", PROBLEM,
                            f"the host key of {conf.ssh} is not in {known}",
                            f"ssh-keyscan {conf.host} >> {known}, after comparing the "
                            "fingerprint with the one the host itself shows"))
        else:
            rows.append(Row(name, "ssh", PROBLEM, f"{conf.ssh}: {why}",
                            "check [ssh] identity_file and that the key is authorized"))
        return False
    rows.append(Row(name, "ssh", OK, f"{conf.ssh}: login works, host key known"))
    if conf.sudo:
        rows.append(Row(name, "sudo", OK, "sudo -n works: commands run as root"))
    return True


def _tools(runtime: Runtime, name: str, rows: list[Row]) -> None:
    method = runtime.config.transfer.method
    tools = list(dict.fromkeys(BASE_TOOLS + METHOD_TOOLS[method]))
    missing = missing_tools(runtime.executor(name), tools)
    if missing:
        rows.append(Row(name, "tools", PROBLEM, f"not installed: {', '.join(missing)}",
                        f"install {', '.join(missing)} on {name} (needed with transfer.method "
                        f"= {method})"))
    else:
        rows.append(Row(name, "tools", OK, ", ".join(tools)))


def _snapshot(runtime: Runtime, name: str, rows: list[Row]) -> None:
    conf = runtime.config.server(name)
    executor = runtime.executor(name)
    try:
        backend = backend_for(executor, conf.datadir, conf.snapshot, conf)
    except RefusedError as exc:
        rows.append(Row(name, "snapshot", WARNING, exc.message,
                        "as a source it would stream a hot backup instead (its replication "
                        "paused for the whole copy); " + (exc.hint or "")))
        return
    except HotcopyError as exc:
        rows.append(Row(name, "snapshot", PROBLEM, exc.message, exc.hint))
        return
    reason = backend.unsupported_reason(executor, conf.datadir)
    if reason:
        rows.append(Row(name, "snapshot", PROBLEM, f"servers.{name}.snapshot = "
                        f"{conf.snapshot}: {reason}", f"set servers.{name}.snapshot = auto"))
    else:
        rows.append(Row(name, "snapshot", OK, f"{backend.name} ({conf.datadir})"))


def _sql(runtime: Runtime, name: str, rows: list[Row]) -> bool:
    """The admin account's login and privileges; True when the server is a replica."""
    server = runtime.server(name)
    try:
        version = server.version_string
        check = grants.check_admin(server)
        status = replication.single_channel(server)
    except HotcopyError as exc:
        rows.append(Row(name, "mysql", PROBLEM, exc.message, exc.hint))
        return False
    role = "master (no replication configured)" if status is None else \
        f"replica of {status.master_host}:{status.master_port}"
    rows.append(Row(name, "mysql", OK, f"{version}, {role}"))
    if check.missing:
        rows.append(Row(name, "grants", PROBLEM, f"{check.account} lacks "
                        f"{', '.join(check.missing)}", check.grant_sql))
    else:
        rows.append(Row(name, "grants", OK, f"{check.account} has what hotcopy needs"))
    return status is not None


def _replication_account(runtime: Runtime, rows: list[Row]) -> None:
    option_file = runtime.config.replication.option_file
    if not option_file:
        rows.append(Row("-", "replication account", OK, "taken from the source replica's own "
                        "replication settings at clone time"))
        return
    master = _master(runtime)
    if master is None:
        rows.append(Row("-", "replication account", WARNING,
                        "no replica could tell its master, so the account was not tried"))
        return
    server = Server(master, option_file, runtime.config.mysql.connect_timeout_s)
    try:
        check = grants.check_replication(server)
    except HotcopyError as exc:
        rows.append(Row(master.name, "replication account", PROBLEM,
                        f"replication.option_file {option_file}: {exc.message}", exc.hint))
        return
    finally:
        server.close()
    if check.missing:
        rows.append(Row(master.name, "replication account", PROBLEM,
                        f"{check.account} lacks {', '.join(check.missing)}", check.grant_sql))
    else:
        rows.append(Row(master.name, "replication account", OK,
                        f"{check.account} on {master.host}:{master.port} may replicate"))


def _master(runtime: Runtime) -> ServerAddress | None:
    for name in runtime.config.servers:
        try:
            status = replication.single_channel(runtime.server(name))
        except HotcopyError:
            continue
        if status is not None:
            for other, conf in runtime.config.servers.items():
                if (conf.host, conf.port) == (status.master_host, status.master_port):
                    return ServerAddress(other, conf.host, conf.port)
            return ServerAddress("master", status.master_host, status.master_port)
    return None


def _ports(runtime: Runtime, replicas: list[str], rows: list[Row]) -> None:
    """Every replica may be source or target of a clone: probe each direction data uses."""
    method = runtime.config.transfer.method
    role = LISTENER.get(method)
    if role is None:  # rsync_ssh: the target logs into the source's sshd
        return
    for source in replicas:
        for target in replicas:
            if source == target:
                continue
            listener, client = (source, target) if role == "source" else (target, source)
            rows.append(_probe(runtime, listener, client, f"{target} → {source}"
                               if role == "source" else f"{source} → {target}"))


def _probe(runtime: Runtime, listener: str, client: str, label: str) -> Row:
    lx, cx = runtime.executor(listener), runtime.executor(client)
    address = runtime.config.server(listener).host
    low, high = runtime.config.transfer.port_range
    for name, executor in ((listener, lx), (client, cx)):
        if missing_tools(executor, ["socat", "timeout", "setsid"]):
            return Row(name, f"port {label}", WARNING, "not probed: socat, timeout or setsid "
                       f"missing on {name}", "install socat to let `hotcopy check` probe ports")
    ports = candidate_ports(lx, (low, high), count=1)
    if not ports:
        return Row(listener, f"port {label}", PROBLEM, f"every port of transfer.port_range "
                   f"[{low}, {high}] is in use on {listener}", "widen transfer.port_range")
    port = ports[0]
    tag = f"check-{secrets.token_hex(4)}"
    where = f"[{address}]" if ":" in address else address
    try:
        lx.run(["env", marker(tag), *remote.argv("probe_listen.sh", "30", str(port), where)])
        if not _listening(lx, port):
            return Row(listener, f"port {label}", WARNING,
                       f"could not listen on {address}:{port} for the probe")
        result = cx.run(["timeout", "10", "socat", "-u", "OPEN:/dev/null",
                         f"TCP:{where}:{port},connect-timeout=5"], check=False, timeout=30)
    finally:
        kill_marked(lx, tag)
    if result.ok:
        return Row(client, f"port {label}", OK,
                   f"{client} reaches {address}:{port} (transfer.port_range [{low}, {high}])")
    why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
    return Row(client, f"port {label}", PROBLEM,
               f"{client} cannot connect to {address}:{port}: {why.split(': ')[-1]}",
               f"open TCP {low}-{high} from {client} to {listener} ({address}) in the firewall")


def _listening(executor: Executor, port: int) -> bool:
    deadline = time.monotonic() + _PROBE_WAIT_S
    while time.monotonic() < deadline:
        if port in used_ports(executor):
            return True
        time.sleep(0.05)
    return False


def render(report: dict[str, Any]) -> list[str]:
    """Rich markup lines for the fixes below the table (the CLI prints the table)."""
    lines = []
    for row in report["rows"]:
        if row["status"] != OK and row["fix"]:
            lines.append(f"{row['server']} {row['check']}: {row['fix']}")
    return lines
