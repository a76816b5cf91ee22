"""A real OpenSSH server for tests and sandboxes: own host key, own config, keys only.

hotcopy reaches production hosts through the operator's OpenSSH client, so the only
honest test of that path is a real ``sshd``. Each one started here is self-contained
in one directory (host key, sshd_config, authorized_keys, pid file, log) and touches
nothing of the machine's own sshd; it may run inside a network namespace, which is
how the sandbox gives every "host" its own sshd on port 22.

Typical use::

    key = sshd.client_key(workdir / "id_ed25519")
    server = sshd.start(workdir / "sshd-db1", "127.0.0.1", port=2222, authorized_key=key)
    sshd.write_known_hosts(workdir / "known_hosts", [server])
    options = server.ssh_options(workdir / "known_hosts", key)   # for SshExecutor
    SshExecutor(server.destination(), options).run(["true"])
    sshd.stop(server.directory)

``stop`` needs only the directory, so it also works after the process that started
the server died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hotcopy.errors import HotcopyError
from hotcopy.hosts import LocalExecutor
from hotcopy.hosts.ssh import SshOptions

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
#: sshd refuses to start without its compiled-in privilege separation directory.
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def netns_argv(netns: str | None) -> list[str]:
    """The prefix that runs a command in a network namespace made by ``ip netns add``.

    ``nsenter --net`` rather than ``ip netns exec``: the latter also gives the command
    a mount namespace of its own, and whatever hotcopy then mounts through this sshd
    (a snapshot, a pool) would be invisible to, and not unmountable from, everyone
    else. The sandbox shares one filesystem view across its hosts on purpose.
    """
    if netns is None:
        return []
    return ["nsenter", f"--net=/run/netns/{netns}", "--"]


@dataclass(frozen=True)
class Sshd:
    """One server's files; everything is derived from its directory."""

    directory: Path
    address: str
    port: int = 22
    netns: str | None = None

    @property
    def config(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def authorized_keys(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def pid_file(self) -> Path:
        return self.directory / "sshd.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "sshd.log"

    def destination(self, user: str = "root") -> str:
        return f"{user}@{self.address}"

    @property
    def known_hosts_name(self) -> str:
        """How ssh looks this server up in known_hosts (the port only when not 22)."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def known_hosts_line(self) -> str:
        key_type, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{self.known_hosts_name} {key_type} {key}"

    def client_options(self) -> tuple[str, ...]:
        """Extra ``ssh -o`` options this server needs (its port, when not 22)."""
        return () if self.port == 22 else (f"Port={self.port}",)

    def ssh_options(self, known_hosts: Path, identity_file: Path) -> SshOptions:
        return SshOptions(known_hosts=str(known_hosts), identity_file=str(identity_file),
                          extra_options=self.client_options())

    def pid(self) -> int | None:
        """The listener's pid while it is alive (a stale pid file does not count)."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit() or not _alive(int(text)):
            return None
        return int(text)


def client_key(path: Path) -> Path:
    """An ed25519 client key pair at path (and path.pub), made once; returns path."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _keygen(path, "hotcopy-test-client")
    return path


def render_config(server: Sshd) -> str:
    """Key-only root login on one address; nothing forwarded, nothing from the system.

    StrictModes is off because test directories live below world-writable /tmp, which
    sshd's ancestor check rejects; the files themselves are root-owned and 0600.
    PAM is off so a root account without a password (``*``) can still use its key.
    Only root is limited to the sandbox's authorized_keys; another user (the sudo test's
    non-root login) uses its own ``~/.ssh/authorized_keys``.
    """
    listen = f"[{server.address}]" if ":" in server.address else server.address
    return "\n".join([
        "# written by hotcopy (test sshd)",
        f"ListenAddress {listen}:{server.port}",
        f"HostKey {server.host_key}",
        f"PidFile {server.pid_file}",
        # Root: the sandbox's key only. Other users (a sudo login under test) bring their
        # own in ~/.ssh, read by sshd as that user; see the Match block at the end.
        f"AuthorizedKeysFile {server.authorized_keys} .ssh/authorized_keys",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "PermitTunnel no",
        # Multiplexed clients run many sessions over one connection at once.
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "LogLevel INFO",
        "Match User root",
        f"    AuthorizedKeysFile {server.authorized_keys}",
        "",
    ])


def prepare(directory: Path, address: str, *, authorized_key: Path, port: int = 22,
            netns: str | None = None) -> Sshd:
    """Host key, authorized_keys and config in directory; starts nothing."""
    server = Sshd(directory, address, port, netns)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not server.host_key.exists():
        _keygen(server.host_key, f"hotcopy-test-host-{address}")
    public = authorized_key.with_name(authorized_key.name + ".pub").read_text().strip()
    _write_private(server.authorized_keys, public + "\n")
    _write_private(server.config, render_config(server))
    return server


def start(directory: Path, address: str, *, authorized_key: Path, port: int = 22,
          netns: str | None = None, timeout: float = START_TIMEOUT_S) -> Sshd:
    """Start ``sshd -f CONFIG`` (in netns if given) and return once it listens.

    sshd writes its pid file only after binding, so a live pid in it means connections
    are accepted. authorized_key is the client's private key path; its ``.pub`` is
    what gets authorized.
    """
    server = prepare(directory, address, authorized_key=authorized_key, port=port, netns=netns)
    if server.pid() is not None:
        log.info("sshd on %s:%d is already running", address, port)
        return server
    if not PRIVSEP_DIR.exists():
        PRIVSEP_DIR.mkdir(mode=0o755)
    run = LocalExecutor().run
    check = run([SSHD, "-t", "-f", str(server.config)], check=False, timeout=30)
    if not check.ok:
        raise HotcopyError(f"sshd rejects {server.config}: {check.stderr.strip()[-500:]}")
    server.pid_file.unlink(missing_ok=True)
    run([*netns_argv(netns), SSHD, "-f", str(server.config), "-E", str(server.log_file)],
        timeout=30)
    deadline = time.monotonic() + timeout
    while server.pid() is None:
        if time.monotonic() >= deadline:
            raise HotcopyError(f"sshd on {address}:{port} did not start within {timeout:.0f}s: "
                               f"{_log_tail(server)}")
        time.sleep(0.02)
    log.info("sshd listening on %s:%d%s (pid %s)", address, port,
             f" in netns {netns}" if netns else "", server.pid())
    return server


def stop(directory: Path, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop the sshd whose files are in directory, with its open sessions; idempotent.

    Sessions are children of the listener and would otherwise outlive it; commands a
    session started detached (a daemon) are not its children any more and stay.
    """
    pid_file = directory / "sshd.pid"
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return
    if not text.isdigit() or not _alive(int(text)) or not _is_sshd(int(text)):
        return
    pid = int(text)
    victims = [pid, *_descendants(pid)]
    _signal(victims, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in victims) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in victims if _alive(p)]
    if left:
        _signal(left, signal.SIGKILL)
    log.info("sshd (pid %d) stopped", pid)


def write_known_hosts(path: Path, servers: Iterable[Sshd]) -> Path:
    """A known_hosts file naming exactly these servers, for StrictHostKeyChecking=yes."""
    lines = [server.known_hosts_line() for server in servers]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _write_private(tmp, "\n".join(lines) + "\n", mode=0o644)
    tmp.replace(path)
    return path


# -- internals -----------------------------------------------------------------------


def _keygen(path: Path, comment: str) -> None:
    LocalExecutor().run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                         "-f", str(path)], timeout=30)


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) S ppid ..." and comm may contain spaces or parentheses.
            return stat.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _is_sshd(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "sshd"
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _log_tail(server: Sshd) -> str:
    try:
        lines = server.log_file.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(lines[-5:]) or "(log is empty)"
