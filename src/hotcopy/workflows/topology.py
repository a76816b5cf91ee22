"""``hotcopy topology``: the shard as it is, read-only, and the facts promotions decide on.

Who replicates from whom is read from the servers themselves (their replication
channels), never assumed from the config: a config names servers, not roles, and roles
change with every switchover. The master is the server without a channel that the
others replicate from; errant transactions are judged against its binlog state.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.markup import escape

from hotcopy.errors import HotcopyError
from hotcopy.mysql import gtid, replication
from hotcopy.mysql.flavor import promotion as sql
from hotcopy.mysql.flavor.base import parse_version
from hotcopy.runtime import Runtime

log = logging.getLogger(__name__)

_ON = {"1", "ON", "TRUE", "YES"}


def _on(value: Any) -> bool:
    return str(value).strip().upper() in _ON


@dataclass
class ServerView:
    name: str
    address: str
    reachable: bool = False
    error: str = ""
    version: str = ""
    flavor: str = ""
    server_id: int = 0
    read_only: bool = False
    log_bin: bool = False
    log_slave_updates: bool = False
    gtid_strict_mode: bool = False
    gtid_binlog_pos: str = ""
    gtid_binlog_state: str = ""
    gtid_slave_pos: str = ""
    gtid_current_pos: str = ""
    #: a configured server's name, or host:port when the master is not in the config
    replicates_from: str | None = None
    channels: int = 0
    io_running: str = ""
    sql_running: str = ""
    seconds_behind: int | None = None
    using_gtid: str = ""
    last_io_error: str = ""
    last_sql_error: str = ""
    errant: list[str] = field(default_factory=list)
    crash_safe: bool | None = None
    crash_safety_problems: list[str] = field(default_factory=list)

    @property
    def major(self) -> tuple[int, int]:
        version = parse_version(self.version)
        return version[0], version[1]

    def gtids(self) -> list[gtid.Gtid]:
        """Everything this server has: what it wrote or logged, and what it applied."""
        return gtid.parse_list(self.gtid_binlog_state) + gtid.parse_list(self.gtid_slave_pos)

    def position(self) -> gtid.Position:
        """What it has applied or written, per domain (gtid_current_pos when it has one)."""
        return gtid.Position.of(gtid.parse_list(self.gtid_binlog_pos)
                                + gtid.parse_list(self.gtid_slave_pos))


@dataclass
class ShardView:
    servers: dict[str, ServerView]
    master: str | None
    problems: list[str] = field(default_factory=list)

    def replicas(self) -> list[ServerView]:
        return [s for s in self.servers.values() if s.name != self.master]

    def as_dict(self) -> dict[str, Any]:
        return {"master": self.master, "problems": list(self.problems),
                "servers": [{**asdict(s), "position_by_domain": {
                    str(d): str(g) for d, g in s.position().by_domain.items()}}
                    for s in self.servers.values()]}


def _name_of(runtime: Runtime, host: str, port: int) -> str:
    for name, conf in runtime.config.servers.items():
        if conf.host == host and conf.port == port:
            return name
    return f"{host}:{port}"


def read_server(runtime: Runtime, name: str) -> ServerView:
    """One server's replication facts; an unreachable one is reported, not raised."""
    address = runtime.address(name)
    view = ServerView(name, f"{address.host}:{address.port}")
    server = runtime.server(name)
    try:
        row = server.one(sql.gtid_state()) or {}
        channels = replication.replica_channels(server)
    except HotcopyError as exc:
        view.error = exc.message
        server.close()
        return view
    view.reachable = True
    view.version = str(row.get("version") or "")
    view.flavor = server.flavor.name
    view.server_id = int(row.get("server_id") or 0)
    view.read_only = _on(row.get("read_only"))
    view.log_bin = _on(row.get("log_bin"))
    view.log_slave_updates = _on(row.get("log_slave_updates"))
    view.gtid_strict_mode = _on(row.get("gtid_strict_mode"))
    for key in ("gtid_binlog_pos", "gtid_binlog_state", "gtid_slave_pos", "gtid_current_pos"):
        setattr(view, key, str(row.get(key) or "").replace("\n", ""))
    view.channels = len(channels)
    if channels:
        channel = channels[0]
        view.replicates_from = _name_of(runtime, channel.master_host, channel.master_port)
        view.io_running, view.sql_running = channel.io_running, channel.sql_running
        view.seconds_behind = channel.seconds_behind
        view.using_gtid = channel.using_gtid
        view.last_io_error, view.last_sql_error = channel.last_io_error, channel.last_sql_error
    return view


def _crash_safety(runtime: Runtime, view: ServerView) -> None:
    from hotcopy.workflows.audit import audit_one

    try:
        audit = audit_one(runtime, view.name, fix=False)
    except HotcopyError as exc:
        view.crash_safety_problems = [f"audit failed: {exc.message}"]
        return
    view.crash_safe = audit.crash_safe
    view.crash_safety_problems = [f"{f.check}: {f.message}" for f in audit.problems
                                  if f.severity == "critical"]


def find_master(servers: dict[str, ServerView]) -> str | None:
    """A server without a channel: the writable one first (a fenced or half-demoted old
    master has no channel either, but is read-only), then the one most others follow."""
    heads = [s for s in servers.values() if s.reachable and s.channels == 0]
    followers = {s.name: sum(1 for r in servers.values() if r.replicates_from == s.name)
                 for s in heads}
    ranked = sorted(heads, key=lambda s: (not s.read_only, followers[s.name]), reverse=True)
    if ranked and (followers[ranked[0].name] or len(ranked) == 1 or not ranked[0].read_only):
        return ranked[0].name
    return None


def mark_errant(view: ShardView, against: str | None = None) -> None:
    """Fill each server's errant GTIDs: what it has that ``against`` (the master) lacks."""
    head = against or view.master
    if head is None or not view.servers[head].reachable:
        return
    history = gtid.History.parse(view.servers[head].gtid_binlog_state)
    for server in view.servers.values():
        if server.name == head or not server.reachable:
            server.errant = []
            continue
        server.errant = [str(g) for g in gtid.errant(server.gtids(), history)]


def read_shard(runtime: Runtime, *, crash_safety: bool = True) -> ShardView:
    servers = {name: read_server(runtime, name) for name in runtime.config.servers}
    if crash_safety:
        for server in servers.values():
            if server.reachable:
                _crash_safety(runtime, server)
    view = ShardView(servers, find_master(servers))
    if view.master is not None:
        # Under load the master moves on while the replicas are read: its history is read
        # last, so everything a replica got from it is in what it is judged against.
        again = read_server(runtime, view.master)
        if again.reachable:
            again.crash_safe = servers[view.master].crash_safe
            again.crash_safety_problems = servers[view.master].crash_safety_problems
            servers[view.master] = again
    if view.master is None:
        view.problems.append("no master found: no reachable server without replication "
                             "that the others replicate from")
    for server in servers.values():
        if not server.reachable:
            view.problems.append(f"{server.name} is unreachable: {server.error}")
            continue
        if view.master not in (server.name, server.replicates_from):
            source = server.replicates_from or "nobody"
            view.problems.append(f"{server.name} replicates from {source}, not from the "
                                 f"master {view.master}")
    mark_errant(view)
    for server in servers.values():
        if server.errant:
            view.problems.append(f"{server.name} has errant transactions (GTIDs the master "
                                 f"{view.master} never had): {', '.join(server.errant)}")
    return view


def render(view: ShardView) -> list[str]:
    lines = [f"[bold]master:[/] {view.master or '(none found)'}"]
    for s in view.servers.values():
        if not s.reachable:
            lines.append(f"[bold red]{s.name}[/] {s.address}: unreachable ({escape(s.error)})")
            continue
        role = "master" if s.name == view.master else f"replica of {s.replicates_from or '-'}"
        repl = ""
        if s.channels:
            lag = "?" if s.seconds_behind is None else f"{s.seconds_behind}s"
            repl = (f", IO {s.io_running} SQL {s.sql_running}, lag {lag}, "
                    f"gtid {s.using_gtid}")
        safe = {True: "crash-safe", False: "[red]NOT crash-safe[/]", None: "crash-safety ?"}
        lines.append(f"[bold]{s.name}[/] {s.address} {s.version}: {role}{repl}, "
                     f"read_only {'ON' if s.read_only else 'OFF'}, {safe[s.crash_safe]}")
        positions = ", ".join(str(g) for g in s.position().by_domain.values()) or "(empty)"
        lines.append(f"    position per domain: {positions}")
        if s.errant:
            lines.append(f"    [bold red]errant:[/] {', '.join(s.errant)}")
        for problem in s.crash_safety_problems:
            lines.append(f"    [red]{escape(problem)}[/]")
        for error in (s.last_io_error, s.last_sql_error):
            if error:
                lines.append(f"    [yellow]{escape(error[:200])}[/]")
    for problem in view.problems:
        lines.append(f"[yellow]problem:[/] {escape(problem)}")
    return lines
