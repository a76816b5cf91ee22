"""Secrets stay secret and the transfer daemon admits the target alone, on real hosts.

A clone handles three secrets: the admin password, the replication password (both
only in 0600 option files) and the rsync daemon's one-time secret. None may show up
where other users or later readers can see it: process lists on any host, hotcopy's
own output even at -vv, the journal, the servers' error logs. The rsync daemon must
listen on the source's address only and refuse every host but the target, even one
that presents the right secret.
"""

from __future__ import annotations

import configparser
import json
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hotcopy.sandbox import SandboxInfo, layout

from ..real_parts import missing_tools, needs
from .conftest import own_sandbox
from .helpers import hotcopy, leftovers, runtime, sql_thread_running, wait_replicating

NETNS_TOOLS = ("ip", "nsenter", "ssh", "ssh-keygen", "/usr/sbin/sshd", "ss", "rsync")
pytestmark = needs(missing_tools(NETNS_TOOLS, "these tests"))

SOURCE, TARGET = "replica1", "replica2"


@pytest.fixture(scope="module")
def hosts() -> Iterator[SandboxInfo]:
    """A master and two replicas, each on a host (network namespace) of its own."""
    with own_sandbox(topology="netns", seed_rows=0) as info:
        yield info


def password_in(option_file: Path) -> str:
    parser = configparser.ConfigParser()
    parser.read(option_file)
    return parser["client"]["password"].strip()


def private_config(info: SandboxInfo, name: str, bwlimit_kbps: int | None = None,
                   transfer: str = "") -> tuple[Path, Path, Path]:
    """The sandbox config with its own (not yet existing) journal dir and secrets dir.

    Returns (config, journal file, transfer state dir): a fresh journal directory shows
    the modes hotcopy gives it, and a private state dir holds only this job's secrets.
    A bandwidth limit keeps the transfer running long enough to be watched.
    """
    base = info.directory / name
    base.mkdir(mode=0o700)
    journal, state_dir = base / "journal" / "journal.sqlite", base / "state"
    text = info.config_path.read_text()
    text = text.replace(f'path = "{info.directory}/journal.sqlite"', f'path = "{journal}"')
    assert str(journal) in text
    text += f'\n[transfer]\nstate_dir = "{state_dir}"\n'
    if bwlimit_kbps:
        text += f"bwlimit_kbps = {bwlimit_kbps}\n"
    text += transfer
    config = base / "hotcopy.toml"
    config.write_text(text)
    config.chmod(0o600)
    return config, journal, state_dir


def processes() -> str:
    # -ww: without a terminal (as under pytest) ps cuts every line at 80 columns.
    return subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True,
                          check=True).stdout


def environments() -> dict[int, str]:
    """Every process's environment (/proc/PID/environ), as readable text."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = (entry / "environ").read_bytes().decode("latin-1")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile
    return found


#: The one-time secrets every method writes under transfer.state_dir: the rsync daemon's
#: secrets and password files, the stream/zfs_send/backup listeners' tokens.
SECRET_GLOBS = ("*/secrets", "*/*.pass", "*/token")


@dataclass
class Sampler:
    """Samples every process's argv and environment, and picks up the one-time secrets
    (rsync secret, stream/zfs_send/backup token) while they exist."""

    state_dir: Path
    samples: list[str] = field(default_factory=list)
    environments: set[str] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)
    secret_file_modes: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            # One PID namespace serves every host's network namespace, so this sees
            # the processes of all hosts (sshd sessions, rsync, mariadbd) at once.
            self.samples.append(processes())
            self.environments.update(environments().values())
            for path in [p for pattern in SECRET_GLOBS for p in self.state_dir.glob(pattern)]:
                try:
                    text, mode = path.read_text(), path.stat().st_mode
                except FileNotFoundError:
                    continue
                self.secret_file_modes.add(stat.S_IMODE(mode))
                secret = text.strip().rpartition(":")[2]
                if secret:
                    self.secrets.add(secret)
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def assert_kept(self, info: SandboxInfo, proc: subprocess.CompletedProcess[str],
                    journal: Path, passwords: set[str]) -> None:
        """No secret in any argv or environment sampled, output at -vv, journal or log."""
        secrets = passwords | self.secrets
        assert self.samples and self.environments, "nothing was sampled"
        assert_nowhere(secrets, {f"ps sample {i}": s for i, s in enumerate(self.samples)})
        assert_nowhere(secrets, {f"/proc/*/environ ({i})": e
                                 for i, e in enumerate(sorted(self.environments))})
        assert_nowhere(secrets, {"stderr at -vv": proc.stderr, "stdout": proc.stdout,
                                 "journal": journal_bytes(journal), **server_logs(info)})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return hotcopy("-vv", *args, env=env)


def assert_nowhere(secrets: set[str], texts: dict[str, str]) -> None:
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in {where}"


def server_logs(info: SandboxInfo) -> dict[str, str]:
    logs = {f"{n} error log": (info.directory / n / "mysqld.err").read_text(errors="replace")
            for n in info.servers}
    for sshd_log in (info.directory / "ssh").glob("*/sshd.log"):
        logs[str(sshd_log)] = sshd_log.read_text(errors="replace")
    return logs


def journal_bytes(journal: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in journal.parent.iterdir())


def test_no_secret_in_process_lists_output_journal_or_logs(hosts: SandboxInfo) -> None:
    config, journal, state_dir = private_config(hosts, "secrecy", bwlimit_kbps=30_000)
    passwords = {password_in(hosts.admin_option_file), password_in(hosts.repl_option_file)}
    with Sampler(state_dir) as sampler:
        proc = run_cli("clone", "--config", str(config), "--source", SOURCE, "--target", TARGET,
                       "--yes", "--json", "--create-journal")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["state"] == "committed"
    # The sampling covered the transfer: both ends and their secret were seen.
    assert any("rsync --daemon" in s for s in sampler.samples)
    assert any("--password-file=" in s for s in sampler.samples)
    assert sampler.secrets, "the rsync secret files were never seen"
    assert sampler.secret_file_modes == {0o600}
    assert "SELECT" in proc.stderr, "-vv logs every query"
    sampler.assert_kept(hosts, proc, journal, passwords)
    # The journal is private, and the secrets went with the transfer.
    assert stat.S_IMODE(journal.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert list(state_dir.iterdir()) == []
    rt = runtime(hosts)
    wait_replicating(rt.server(TARGET), rt.server(hosts.master))
    rt.close()


def sampled_clone(info: SandboxInfo, name: str, method: str,
                  bwlimit_kbps: int = 20_000) -> tuple[subprocess.CompletedProcess[str], Sampler,
                                                       Path, Path]:
    """A clone with ``--transfer method`` (or the backup pipeline), watched by a Sampler."""
    transfer = ""
    if method == "rsync_ssh":  # host to host, with the sandbox's key and known_hosts
        ssh = info.directory / layout.SSH_DIR
        transfer = (f'ssh_known_hosts = "{ssh / layout.KNOWN_HOSTS}"\n'
                    f'ssh_identity_file = "{ssh / layout.CLIENT_KEY}"\n')
    config, journal, state_dir = private_config(info, name, bwlimit_kbps=bwlimit_kbps,
                                                transfer=transfer)
    extra = [] if method == "backup" else ["--transfer", method]
    with Sampler(state_dir) as sampler:
        proc = run_cli("clone", "--config", str(config), "--source", SOURCE, "--target", TARGET,
                       "--yes", "--json", "--create-journal", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["state"] == "committed"
    return proc, sampler, journal, state_dir


def assert_method_kept_its_secrets(info: SandboxInfo, method: str) -> None:
    """Body of the per-method secrecy tests (here and in the zfs/backup modules)."""
    passwords = {password_in(info.admin_option_file), password_in(info.repl_option_file)}
    proc, sampler, journal, state_dir = sampled_clone(info, f"secrecy-{method}", method)
    report = json.loads(proc.stdout)
    assert method == "backup" or method in json.dumps(report["steps"]), report["steps"]
    if method == "rsync_ssh":
        # No daemon and no one-time secret: ssh carries rsync, with the hosts' keys.
        assert any("rsync" in line and "ssh" in line
                   for s in sampler.samples for line in s.splitlines())
    else:
        assert sampler.secrets, f"{method}: its one-time token was never seen"
        assert sampler.secret_file_modes == {0o600}
    sampler.assert_kept(info, proc, journal, passwords)
    assert list(state_dir.iterdir()) == []


@pytest.mark.parametrize("method", ["rsync_ssh", "stream"])
def test_no_secret_anywhere_with_each_transfer(hosts: SandboxInfo, method: str) -> None:
    assert_method_kept_its_secrets(hosts, method)
    rt = runtime(hosts)
    wait_replicating(rt.server(TARGET), rt.server(hosts.master))
    rt.close()


def in_host(info: SandboxInfo, name: str, argv: list[str],
            check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net=/run/netns/{info.namespaces[name]}", "--", *argv],
                          capture_output=True, text=True, check=check, timeout=60)


def rsync_list(info: SandboxInfo, host: str, url: str,
               password_file: Path) -> subprocess.CompletedProcess[str]:
    """A real rsync client asking the daemon for its module listing, from host's netns."""
    return in_host(info, host, ["rsync", "--contimeout=10", "--timeout=20",
                                f"--password-file={password_file}", url], check=False)


def test_rsync_daemon_listens_on_source_only_and_admits_only_the_target(
        hosts: SandboxInfo, tmp_path: Path) -> None:
    config, _, state_dir = private_config(hosts, "daemon")
    proc = run_cli("clone", "--config", str(config), "--source", SOURCE, "--target", TARGET,
                   "--yes", "--create-journal", env={"HOTCOPY_FAULT": "kill-after:serve"})
    assert proc.returncode == -9, proc.stderr[-3000:]
    job = json.loads(hotcopy("jobs", "--config", str(config), "--json").stdout)[0]["job"]
    try:
        workdir = state_dir / f"{job}-rsyncd"
        daemon_conf = (workdir / "rsyncd.conf").read_text()
        port = next(line.split("=")[1].strip() for line in daemon_conf.splitlines()
                    if line.startswith("port ="))
        secret_line = (workdir / "secrets").read_text().strip()
        assert stat.S_IMODE((workdir / "secrets").stat().st_mode) == 0o600
        user, _, secret = secret_line.partition(":")
        source_ip = hosts.hosts[SOURCE]

        listeners = in_host(hosts, SOURCE, ["ss", "-Htlnp", "sport", "=", f":{port}"]).stdout
        assert f"{source_ip}:{port}" in listeners and '"rsync"' in listeners
        assert len(listeners.strip().splitlines()) == 1, "one socket, on the source address"

        password_file = tmp_path / "stolen.pass"
        password_file.write_text(secret + "\n")
        password_file.chmod(0o600)
        url = f"rsync://{user}@{source_ip}:{port}/hotcopy/"
        # The right secret from the wrong host (the master's) is refused; with `list = no`
        # the daemon does not even admit that the module exists...
        intruder = rsync_list(hosts, hosts.master, url, password_file)
        assert intruder.returncode == 5, intruder.stderr
        assert "Unknown module" in intruder.stderr or "access denied" in intruder.stderr
        assert "ibdata1" not in intruder.stdout
        daemon_log = (workdir / "rsyncd.log").read_text()
        assert any("denied on module hotcopy" in line and f"({hosts.hosts[hosts.master]})"
                   in line for line in daemon_log.splitlines()), daemon_log
        # ...while the same request from the target is served: it is the host that counts.
        allowed = rsync_list(hosts, TARGET, url, password_file)
        assert allowed.returncode == 0, allowed.stderr
        assert "ibdata1" in allowed.stdout
    finally:
        back = run_cli("rollback", "--config", str(config), job, "--json")
    assert back.returncode == 0, back.stderr[-3000:]
    assert json.loads(back.stdout)["state"] == "rolled-back"
    assert list(state_dir.iterdir()) == []
    assert_nowhere({secret, password_in(hosts.admin_option_file)},
                   {"rollback stderr at -vv": back.stderr, "rollback stdout": back.stdout})
    rt = runtime(hosts)
    assert sql_thread_running(rt.server(SOURCE))
    rt.close()
    assert job not in processes()


def test_failed_clone_reports_no_secret(hosts: SandboxInfo) -> None:
    """The error path (a failure with the daemon up, then a rollback) at -vv leaks nothing."""
    config, journal, state_dir = private_config(hosts, "failure")
    with Sampler(state_dir) as sampler:
        proc = run_cli("clone", "--config", str(config), "--source", SOURCE, "--target",
                       TARGET, "--yes", "--json", "--create-journal",
                       env={"HOTCOPY_FAULT": "fail-after:serve"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["state"] == "rolled-back" and report["error"]
    assert sampler.secrets, "the rsync secret files were never seen"
    secrets = sampler.secrets | {password_in(hosts.admin_option_file),
                                 password_in(hosts.repl_option_file)}
    assert_nowhere(secrets, {"stderr at -vv": proc.stderr, "report": proc.stdout,
                             "journal": journal_bytes(journal), **server_logs(hosts)})
    rt = runtime(hosts)
    wait_replicating(rt.server(TARGET), rt.server(hosts.master))
    rt.close()
    assert leftovers(hosts) == [] and list(state_dir.iterdir()) == []


def test_world_readable_option_file_is_warned_about(hosts: SandboxInfo) -> None:
    loose = hosts.directory / "loose-admin.cnf"
    loose.write_text(hosts.admin_option_file.read_text())
    loose.chmod(0o644)
    config = hosts.directory / "loose.toml"
    config.write_text(hosts.config_path.read_text().replace(
        f'option_file = "{hosts.admin_option_file}"', f'option_file = "{loose}"'))
    try:
        proc = hotcopy("jobs", "--config", str(config))
        assert proc.returncode == 0, proc.stderr
        assert "readable by group/others" in proc.stderr and str(loose) in proc.stderr
        assert password_in(loose) not in proc.stderr
        loose.chmod(0o600)
        quiet = hotcopy("jobs", "--config", str(config))
        assert quiet.returncode == 0 and "readable" not in quiet.stderr
    finally:
        loose.unlink()
        config.unlink()
