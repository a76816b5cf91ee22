"""servers.NAME.sudo on real hosts: a non-root ssh login does the whole clone through sudo.

Every server is a network namespace with its own sshd (topology netns). A user made for
this module, with its own key in ~/.ssh and no password, logs in to every host, and a
drop-in under /etc/sudoers.d/ (checked by ``visudo -cf``) gives it the rule the README
prints. With ``sudo = true`` on every server a clone under write load commits, the new
replica equals the master by checksum, no secret shows in any process's argv or
environment, and every login the clone made was that user's; so with the stream method,
and over rsync_ssh, where the target's own ssh starts the far rsync through sudo. With
the drop-in gone, ``hotcopy check`` and the clone's preflight refuse (exit 2), name the
sudoers line to add, and nothing was changed. The user, the drop-in and the namespaces
are removed at the end, also after a failure.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotcopy.config import load as load_config
from hotcopy.hosts.ssh import SudoRefused, sudoers_line
from hotcopy.loadgen import WriteLoad
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.runtime import Runtime
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo, layout

from ..real_parts import missing_tools, needs
from .conftest import own_sandbox
from .helpers import (
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    no_backup_lock,
    runtime,
    sql_thread_running,
    wait_replicating,
)
from .test_security import Sampler, password_in

TOOLS = ("ip", "nsenter", "ssh", "ssh-keygen", "/usr/sbin/sshd", "ss", "rsync", "sudo",
         "visudo", "useradd", "userdel")
pytestmark = needs(missing_tools(TOOLS, "the sudo tests"))

USER = "hotcopy-sudo-test"
#: No dot in the name: sudo skips drop-ins whose name has one (or ends in ~).
SUDOERS = Path("/etc/sudoers.d/hotcopy-sudo-test")
SOURCE, TARGET = "replica1", "replica2"
WIDE = {"COLUMNS": "200"}


@dataclass
class SudoUser:
    """The non-root login: created for this module, always removed with its home."""

    name: str = USER

    def create(self) -> None:
        self.remove()  # a run killed before its teardown left it behind
        # '*' rather than useradd's locked '!': the sandbox sshd (no PAM) refuses a locked
        # account even for a key, and '*' still allows no password login at all.
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*",
                        self.name], check=True, capture_output=True, timeout=30)

    def authorize(self, public_key: Path) -> None:
        """The sandbox's client key, in the user's own ~/.ssh, owned and readable by it."""
        entry = pwd.getpwnam(self.name)
        ssh = Path(entry.pw_dir) / ".ssh"
        ssh.mkdir(mode=0o700)
        keys = ssh / "authorized_keys"
        keys.write_text(public_key.read_text())
        keys.chmod(0o600)
        for path in (ssh, keys):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def allow_sudo(self) -> None:
        """The README's line as a drop-in, validated before sudo can read it."""
        staged = Path(f"/etc/sudoers.d/.{SUDOERS.name}.tmp")  # a dot: sudo ignores it
        staged.write_text(sudoers_line(self.name) + "\n")
        staged.chmod(0o440)
        check = subprocess.run(["visudo", "-cf", str(staged)], capture_output=True, text=True,
                               timeout=30, check=False)
        if check.returncode != 0:
            staged.unlink()
            pytest.fail(f"visudo rejects the sudoers line: {check.stdout}{check.stderr}")
        staged.replace(SUDOERS)

    def revoke_sudo(self) -> None:
        SUDOERS.unlink(missing_ok=True)

    def remove(self) -> None:
        self.revoke_sudo()
        try:
            pwd.getpwnam(self.name)
        except KeyError:
            return
        result = subprocess.run(["userdel", "--remove", self.name], capture_output=True,
                                text=True, timeout=30, check=False)
        # 12: the mail spool was not there; the user and its home are gone all the same.
        assert result.returncode in (0, 12), result.stderr


@pytest.fixture(scope="module")
def user() -> Iterator[SudoUser]:
    login = SudoUser()
    login.create()
    try:
        yield login
    finally:
        login.remove()  # after the sandbox is down: its sshds took the sessions with them


@pytest.fixture(scope="module")
def hosts(user: SudoUser) -> Iterator[SandboxInfo]:
    """Master and two replicas on hosts of their own; the user may log in to each."""
    with own_sandbox(topology="netns") as info:
        user.authorize(info.directory / layout.SSH_DIR / f"{layout.CLIENT_KEY}.pub")
        user.allow_sudo()
        yield info


def sudo_config(info: SandboxInfo, name: str, transfer: str = "") -> tuple[Path, Path, Path]:
    """The sandbox config with every server reached as USER, ``sudo = true``, and a
    journal and transfer state directory of its own (returned with it)."""
    text = info.config_path.read_text()
    for server in info.servers:
        address = info.hosts[server]
        root_line = f'ssh = "root@{address}"'
        assert root_line in text
        text = text.replace(root_line, f'ssh = "{USER}@{address}"\nsudo = true')
    base = info.directory / name
    base.mkdir(mode=0o700)
    journal, state_dir = base / "journal" / "journal.sqlite", base / "state"
    journal.parent.mkdir(mode=0o700)
    old_journal = f'path = "{info.directory}/journal.sqlite"'
    assert old_journal in text
    text = text.replace(old_journal, f'path = "{journal}"')
    text += f'\n[transfer]\nstate_dir = "{state_dir}"\n{transfer}'
    config = base / "hotcopy.toml"
    config.write_text(text)
    config.chmod(0o600)
    return config, journal, state_dir


def sshd_logs(info: SandboxInfo) -> dict[Path, int]:
    """Each host's sshd log and its length now, to read only what comes after."""
    return {path: path.stat().st_size
            for path in (info.directory / layout.SSH_DIR).glob("*/sshd.log")}


def logins_since(marks: dict[Path, int]) -> list[str]:
    """The users of every ssh login accepted by any host since marks."""
    users = []
    for path, offset in marks.items():
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        users += re.findall(r"Accepted publickey for (\S+) from", text)
    return users


def check_rows(config: Path) -> tuple[int, list[dict[str, Any]]]:
    proc = hotcopy("check", "--config", str(config), "--json", env=WIDE, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    document = json.loads(proc.stdout)
    assert document["exit_code"] == proc.returncode
    return proc.returncode, document["rows"]


def test_the_login_is_not_root_and_sudo_works_only_through_the_drop_in(
        hosts: SandboxInfo) -> None:
    config, _, _ = sudo_config(hosts, "check-ok")
    code, rows = check_rows(config)
    assert code == 0, [r for r in rows if r["status"] != "ok"]
    for server in hosts.servers:
        mine = {r["check"]: r for r in rows if r["server"] == server}
        assert mine["ssh"]["status"] == "ok" and USER in mine["ssh"]["detail"]
        assert mine["sudo"]["status"] == "ok"
    # The same login is an ordinary user: only through sudo may it write the datadir.
    datadir = hosts.datadir(SOURCE)
    ssh = hosts.directory / layout.SSH_DIR
    options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"UserKnownHostsFile={ssh / layout.KNOWN_HOSTS}",
               "-i", str(ssh / layout.CLIENT_KEY), f"{USER}@{hosts.hosts[SOURCE]}"]

    def login(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", *options, command], capture_output=True, text=True,
                              timeout=60, check=False)

    plain = login(f"id -u && test -w {datadir}")
    assert plain.stdout.split() == [str(pwd.getpwnam(USER).pw_uid)], plain.stderr
    assert plain.returncode == 1, "the login itself must not be able to write the datadir"
    through_sudo = login(f"sudo -n -- sh -c 'id -u && test -w {datadir}'")
    assert (through_sudo.returncode, through_sudo.stdout.split()) == (0, ["0"]), \
        through_sudo.stderr

def test_clone_under_load_through_sudo_keeps_its_secrets(hosts: SandboxInfo) -> None:
    # The bandwidth limit keeps the daemon and its secret file up for many samples.
    config, journal, state_dir = sudo_config(hosts, "clone", transfer="bwlimit_kbps = 10000\n")
    rt = runtime(hosts)
    master, source, target = (rt.server(n) for n in (hosts.master, SOURCE, TARGET))
    mark_local(target, "only_on_old_replica2")
    passwords = {password_in(hosts.admin_option_file), password_in(hosts.repl_option_file)}
    marks = sshd_logs(hosts)
    with WriteLoad(hosts.address(hosts.master), rt.config.mysql.option_file) as load, \
            Sampler(state_dir) as sampler:
        proc = hotcopy("-vv", "clone", "--config", str(config), "--source", SOURCE,
                       "--target", TARGET, "--yes", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["state"] == "committed"
    assert load.commits > 50, "the master must have been written during the clone"

    # Every login of the clone was the non-root user, and its commands went through sudo.
    users = logins_since(marks)
    assert users and set(users) == {USER}, users
    lines = [line for sample in sampler.samples for line in sample.splitlines()]
    assert any(line.startswith("sudo -n -- ") for line in lines)
    assert any("rsync --daemon" in line for line in lines)
    # The rsync secret went on stdin through sudo into a 0600 file, and nowhere else.
    assert sampler.secrets, "the rsync secret files were never seen"
    assert sampler.secret_file_modes == {0o600}
    sampler.assert_kept(hosts, proc, journal, passwords)
    assert list(state_dir.iterdir()) == []

    target.close()
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert not has_schema(target, "only_on_old_replica2"), "target must run on the new datadir"
    assert no_backup_lock(source)
    assert leftovers(hosts) == []
    rt.close()


def test_stream_through_sudo_keeps_its_token(hosts: SandboxInfo) -> None:
    """The other listener kind: socat on the target, its one-time token on stdin."""
    config, journal, state_dir = sudo_config(hosts, "stream", transfer="bwlimit_kbps = 20000\n")
    passwords = {password_in(hosts.admin_option_file), password_in(hosts.repl_option_file)}
    marks = sshd_logs(hosts)
    with Sampler(state_dir) as sampler:
        proc = hotcopy("-vv", "clone", "--config", str(config), "--source", SOURCE,
                       "--target", TARGET, "--yes", "--json", "--transfer", "stream")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["state"] == "committed" and "stream" in json.dumps(report["steps"])
    assert set(logins_since(marks)) == {USER}
    assert sampler.secrets, "the stream's one-time token was never seen"
    assert sampler.secret_file_modes == {0o600}
    sampler.assert_kept(hosts, proc, journal, passwords)
    assert list(state_dir.iterdir()) == []
    rt = runtime(hosts)
    target, master = rt.server(TARGET), rt.server(hosts.master)
    wait_replicating(target, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert leftovers(hosts) == []
    rt.close()


def test_rsync_ssh_starts_the_far_rsync_through_sudo(hosts: SandboxInfo) -> None:
    """The target logs into the source as USER too; its rsync there runs as root."""
    ssh = hosts.directory / layout.SSH_DIR
    config, _, _ = sudo_config(hosts, "rsync-ssh", transfer=(
        f'ssh_user = "{USER}"\n'
        f'ssh_known_hosts = "{ssh / layout.KNOWN_HOSTS}"\n'
        f'ssh_identity_file = "{ssh / layout.CLIENT_KEY}"\n'))
    marks = sshd_logs(hosts)
    proc = hotcopy("clone", "--config", str(config), "--source", SOURCE, "--target", TARGET,
                   "--yes", "--json", "--transfer", "rsync_ssh")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["state"] == "committed" and "rsync_ssh" in json.dumps(report["steps"])
    source_log = ssh / SOURCE / "sshd.log"
    with source_log.open("rb") as log:
        log.seek(marks[source_log])
        from_target = re.findall(r"Accepted publickey for (\S+) from (\S+)",
                                 log.read().decode(errors="replace"))
    assert (USER, hosts.hosts[TARGET]) in from_target, from_target
    assert set(logins_since(marks)) == {USER}
    rt = runtime(hosts)
    target = rt.server(TARGET)
    wait_replicating(target, rt.server(hosts.master))
    assert differing_tables(table_checksums(rt.server(hosts.master)),
                            table_checksums(target)) == []
    assert leftovers(hosts) == []
    rt.close()


def test_without_the_sudoers_rule_check_and_clone_refuse_naming_it(
        hosts: SandboxInfo, user: SudoUser) -> None:
    config, journal, state_dir = sudo_config(hosts, "refused")
    rt = runtime(hosts)
    master, source, target = (rt.server(n) for n in (hosts.master, SOURCE, TARGET))
    wait_replicating(target, master)
    mark_local(target, "marker_sudo_refused")
    user.revoke_sudo()
    try:
        line = sudoers_line(USER)
        code, rows = check_rows(config)
        assert code == 2
        for server in hosts.servers:
            sudo = next(r for r in rows if r["server"] == server and r["check"] == "sudo")
            assert sudo["status"] == "problem" and USER in sudo["detail"]
            assert line in sudo["fix"], sudo

        proc = hotcopy("clone", "--config", str(config), "--source", SOURCE, "--target", TARGET,
                       "--yes", "--json")
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert line in " ".join((proc.stdout + proc.stderr).split())
    finally:
        user.allow_sudo()
    jobs = json.loads(hotcopy("jobs", "--config", str(config), "--json").stdout)
    assert [job["state"] for job in jobs] == ["refused"], jobs
    with SqliteJournal(str(journal)) as recorded:
        assert recorded.undo_entries(jobs[0]["job"]) == [], "no change was ever journaled"
    # Nothing was changed: the target still runs on its own datadir, the source replicates.
    assert has_schema(target, "marker_sudo_refused")
    assert sql_thread_running(source) and no_backup_lock(source)
    assert leftovers(hosts) == []
    assert not state_dir.exists() or list(state_dir.iterdir()) == []
    rt.close()



def test_a_rule_revoked_mid_job_is_never_read_as_a_command_failure(
        hosts: SandboxInfo, user: SudoUser) -> None:
    """After the once-per-host probe passed: sudo's refusal of a later command raises,
    even where the caller only looks at the exit code (``exists`` would say "missing")."""
    config, _, _ = sudo_config(hosts, "revoked")
    rt = Runtime(load_config(config))
    executor = rt.executor(SOURCE)
    datadir = hosts.datadir(SOURCE)
    assert executor.exists(str(datadir))
    user.revoke_sudo()
    try:
        rule = re.escape(sudoers_line(USER))
        with pytest.raises(SudoRefused, match=rule):
            executor.exists(str(datadir))
        with pytest.raises(SudoRefused, match=rule):
            executor.read_file(str(datadir / "ibdata1"))
        with pytest.raises(SudoRefused, match=rule):
            executor.stream(["cat", "/dev/null"], lambda line: None, timeout=60)
    finally:
        user.allow_sudo()
    assert executor.exists(str(datadir))
    rt.close()
