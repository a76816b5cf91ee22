"""Where a sandbox keeps things, and the record of what it made (DIR/sandbox.json).

The record is written before each resource is created and never holds a secret:
passwords live only in the 0600 option files next to it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hotcopy.errors import HotcopyError

STATE_FILE = "sandbox.json"
ADMIN_CNF = "admin.cnf"
REPL_CNF = "repl.cnf"
CONFIG_FILE = "hotcopy.toml"
JOURNAL_FILE = "journal.sqlite"
MASTER = "master"
ADMIN_USER = "hotcopy"
REPL_USER = "repl"
HOST = "127.0.0.1"
#: topology "netns": the client key, known_hosts and every host's sshd live below DIR/ssh.
SSH_DIR = "ssh"
CLIENT_KEY = "id_ed25519"
KNOWN_HOSTS = "known_hosts"
TOPOLOGIES = ("local", "netns")
STATE_VERSION = 1

#: Paths end up unquoted in my.cnf and in TOML; keep them boring.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+@:-]+$")


@dataclass
class ServerSpec:
    name: str
    role: str  # "master" | "replica"
    server_id: int
    port: int
    filesystem: str = "btrfs"  # btrfs | plain (| zfs): what the datadir lives on
    # Topology "netns": the host's address, network namespace and bridge-side veth.
    address: str = HOST
    netns: str | None = None
    veth: str | None = None


@dataclass
class SandboxState:
    directory: str
    dir_created: bool
    image_size: int
    servers: list[ServerSpec]
    state: str = "creating"  # creating -> up
    version: int = STATE_VERSION
    created_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    topology: str = "local"  # local | netns (every server a host of its own)
    bridge: str | None = None
    subnet: int | None = None

    @property
    def master(self) -> ServerSpec:
        return next(s for s in self.servers if s.role == "master")

    @property
    def replicas(self) -> list[ServerSpec]:
        return [s for s in self.servers if s.role == "replica"]


@dataclass(frozen=True)
class ServerPaths:
    """The files of one server; all of them live under DIR/<name>."""

    root: Path

    @property
    def image(self) -> Path:
        return self.root / "disk.img"

    @property
    def mnt(self) -> Path:
        return self.root / "mnt"

    @property
    def datadir(self) -> Path:
        return self.mnt / "data"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.run / "mysqld.sock"

    @property
    def pid_file(self) -> Path:
        return self.run / "mysqld.pid"

    @property
    def error_log(self) -> Path:
        return self.root / "mysqld.err"

    @property
    def cnf(self) -> Path:
        return self.root / "my.cnf"


def server_paths(directory: Path, name: str) -> ServerPaths:
    return ServerPaths(directory / name)


def check_path(directory: Path) -> None:
    if not _SAFE_PATH.match(str(directory)):
        raise HotcopyError(
            f"sandbox directory {directory} has characters my.cnf cannot hold unquoted",
            hint="use a path made of letters, digits and . _ - / only")


def load_state(directory: Path) -> SandboxState | None:
    path = directory / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise HotcopyError(f"{path} is unreadable ({exc})",
                           hint="remove the sandbox's files by hand") from exc
    servers = [ServerSpec(**s) for s in raw.pop("servers")]
    return SandboxState(servers=servers, **raw)


def save_state(state: SandboxState) -> None:
    """Atomically, so a crash leaves either the old or the new record."""
    path = Path(state.directory) / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(asdict(state), indent=2, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def render_my_cnf(paths: ServerPaths, spec: ServerSpec) -> str:
    lines = [
        "# written by hotcopy sandbox",
        "[mysqld]",
        "user = mysql",
        f"server_id = {spec.server_id}",
        f"port = {spec.port}",
        f"bind-address = {spec.address}",
        f"datadir = {paths.datadir}",
        f"socket = {paths.socket}",
        f"pid-file = {paths.pid_file}",
        f"log-error = {paths.error_log}",
        f"tmpdir = {paths.run}",  # never a /tmp shared with other servers and their tests
        "# binlogs inside the datadir on purpose: hotcopy must leave them behind",
        "log-bin = mysql-bin",
        "relay-log = relay-bin",
        "log-slave-updates",
        "binlog-format = ROW",
        "gtid-strict-mode = 1",
        "innodb_buffer_pool_size = 64M",
        "innodb_log_file_size = 48M",
        "innodb_flush_log_at_trx_commit = 1",
        "sync_binlog = 1",
        "skip-name-resolve",
        f"report_host = {spec.address}",
        f"report_port = {spec.port}",
    ]
    if spec.role == "replica":
        lines += ["read-only = 1", "relay_log_recovery = 1"]
    lines += [
        "",
        "[client]",
        f"socket = {paths.socket}",
        f"port = {spec.port}",
        "",
    ]
    return "\n".join(lines)


def _toml_str(value: str | Path) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(str(value))


def render_config(directory: Path, state: SandboxState) -> str:
    lines = [
        "# written by `hotcopy sandbox up`",
        "[shard]",
        'name = "sandbox"',
        "",
        "[mysql]",
        f"option_file = {_toml_str(directory / ADMIN_CNF)}",
        "",
        "[replication]",
        f"option_file = {_toml_str(directory / REPL_CNF)}",
        "",
        "[journal]",
        f"path = {_toml_str(directory / JOURNAL_FILE)}",
    ]
    if state.topology == "netns":
        # Every host is reached over the network, as in production: key-only ssh with
        # strict host key checking against the sandbox's own known_hosts.
        lines += [
            "",
            "[ssh]",
            f"known_hosts = {_toml_str(directory / SSH_DIR / KNOWN_HOSTS)}",
            f"identity_file = {_toml_str(directory / SSH_DIR / CLIENT_KEY)}",
        ]
    for spec in state.servers:
        paths = server_paths(directory, spec.name)
        lines += [
            "",
            f"[servers.{spec.name}]",
            f"host = {_toml_str(spec.address)}",
            f"port = {spec.port}",
            f"ssh = {_toml_str('local' if spec.netns is None else 'root@' + spec.address)}",
            f"datadir = {_toml_str(paths.datadir)}",
            f"defaults_file = {_toml_str(paths.cnf)}",
            'snapshot = "auto"',
        ]
    return "\n".join(lines) + "\n"


def write_secret_file(path: Path, text: str) -> None:
    """0600 from the first byte: the file is created with that mode, never widened."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def client_option_file(user: str, password: str) -> str:
    return f"[client]\nuser = {user}\npassword = {password}\n"
