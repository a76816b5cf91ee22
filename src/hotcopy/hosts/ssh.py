"""Run commands on a remote host through the OpenSSH client.

We drive the real ``ssh`` binary rather than a Python SSH library: it honours the
operator's ssh_config, agents, jump hosts and known_hosts exactly as their own shell
does. Connections are multiplexed (ControlMaster) so the hundreds of small commands of
a clone cost one TCP and key exchange; BatchMode makes a missing key an error instead
of a password prompt that would hang an unattended run.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hotcopy import remote
from hotcopy.errors import CommandError, RefusedError
from hotcopy.hosts.base import CommandResult, LineCallback, command_failed
from hotcopy.hosts.local import stream_process

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SshOptions:
    known_hosts: str | None = None
    identity_file: str | None = None
    connect_timeout: int = 10
    extra_options: tuple[str, ...] = field(default_factory=tuple)
    #: Where the multiplexing sockets live. None: a directory of this process's own
    #: (mkdtemp, 0700). A given one must be a real directory owned by us, mode 0700.
    control_dir: str | None = None


_process_dir: dict[str, str] = {}  # "path": this process's own, made on first use
_process_dir_lock = threading.Lock()


def _remove_process_dir() -> None:
    if "path" in _process_dir:
        shutil.rmtree(_process_dir["path"], ignore_errors=True)


def control_dir(configured: str | None) -> str:
    """A directory for ControlPath sockets that no other local user can have planted.

    Whoever owns the directory can put a fake mux master in it, and every command
    (the rsync secret, tokens, the admin option file) would flow through it. A fixed
    name under /tmp can be created first by anyone, so the default is a fresh mkdtemp
    per process (unguessable, created 0700 atomically); a configured one is checked.
    """
    if configured is not None:
        return ensure_private_dir(configured)
    with _process_dir_lock:
        if "path" not in _process_dir:
            _process_dir["path"] = tempfile.mkdtemp(prefix="hotcopy-ssh-")
            atexit.register(_remove_process_dir)
        return _process_dir["path"]


def ensure_private_dir(path: str) -> str:
    """path as a directory of ours with mode 0700, created if missing; refused otherwise."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory (a symlink or file is never followed)"
    elif info.st_uid != os.geteuid():
        problem = f"is owned by uid {info.st_uid}, not by us (uid {os.geteuid()})"
    elif info.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(info.st_mode):o}; it must be 0700"
    if problem:
        raise RefusedError(f"ssh control directory {path} {problem}: another user could "
                           "intercept every ssh command through it",
                           hint="remove it, or point the ssh control directory elsewhere; "
                                "hotcopy creates it 0700 itself")
    return path


#: What sudo prints when it would have to ask for a password (no NOPASSWD rule, or no
#: rule at all) or refuses the command; with -n it says so at once and exits 1.
SUDO_REFUSALS = ("sudo: a password is required", "sudo: a terminal is required",
                 "is not allowed to execute", "is not in the sudoers file",
                 "you must have a tty to run sudo")


def sudoers_line(user: str) -> str:
    """The rule a sudo host needs: hotcopy runs ``sh -c SCRIPT`` and ``env K=V CMD``,
    so any narrower command list would still grant root through those two."""
    return f"{user} ALL=(root) NOPASSWD: ALL"


class SudoRefused(RefusedError):
    """sudo on a host would need a password or refuses the command; nothing ran."""


def _sudo_refused(stderr: str) -> bool:
    return any(text in stderr for text in SUDO_REFUSALS)


class SshExecutor:
    is_local = False

    def __init__(self, destination: str, options: SshOptions, *, sudo: bool = False) -> None:
        self.destination = destination
        self.options = options
        #: Every command goes through ``sudo -n --`` (servers.NAME.sudo): a non-root login.
        self.sudo = sudo
        self._sudo_works = False
        self._sudo_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.destination

    def _base_argv(self) -> list[str]:
        directory = control_dir(self.options.control_dir)
        # One master per destination *and* way of reaching it: two servers on one address
        # (other ports) or with other keys must never share a multiplexed connection.
        identity = "\0".join([self.destination, self.options.known_hosts or "",
                              self.options.identity_file or "", *self.options.extra_options])
        digest = hashlib.sha1(identity.encode(), usedforsecurity=False).hexdigest()[:16]
        argv = [
            "ssh", "-T",
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={self.options.connect_timeout}",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={directory}/{digest}",
            "-o", "ControlPersist=60",
            "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=3",
        ]
        if self.options.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.options.known_hosts}",
                     "-o", "StrictHostKeyChecking=yes"]
        if self.options.identity_file:
            argv += ["-i", self.options.identity_file, "-o", "IdentitiesOnly=yes"]
        for opt in self.options.extra_options:
            argv += ["-o", opt]
        return [*argv, self.destination, "--"]

    def remote_words(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
                     ) -> list[str]:
        """What the login shell on the host runs: argv, behind ``env K=V`` when env is
        given and behind ``sudo -n --`` on a sudo host. ``env`` rather than sudo's own
        variable passing, which env_reset and env_check would filter; stdin (secrets,
        file contents) passes through sudo untouched."""
        words = list(argv)
        if env:
            words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
        if self.sudo:
            words = ["sudo", "-n", "--", *words]
        return words

    def _remote(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        return [*self._base_argv(), shlex.join(self.remote_words(argv, env))]

    def _execute(self, command: str, shown: Sequence[str], *, input: bytes | None,
                 timeout: float | None) -> CommandResult:
        """One remote command line as given; ssh's own failures (255) raised here."""
        try:
            proc = subprocess.run([*self._base_argv(), command], input=input,
                                  capture_output=True, timeout=timeout, check=False,
                                  start_new_session=True,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                f"on {self.destination}: `{shlex.join(shown)[:200]}` did not finish within "
                f"{timeout:.0f}s") from exc
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode == 255:
            raise CommandError(
                f"cannot reach {self.destination} over ssh: {stderr.strip()[-300:]}",
                returncode=255, stderr=stderr,
                hint="check that `ssh " + self.destination + " true` works non-interactively "
                     "(key loaded, host key in known_hosts)")
        return CommandResult(tuple(shown), proc.returncode, proc.stdout.decode(errors="replace"),
                             stderr)

    def check_sudo(self) -> None:
        """Raise SudoRefused unless ``sudo -n true`` works on the host (once per executor).

        Asked before the first command, so a missing sudoers rule stops a job before
        anything ran, with the line to add, instead of a command failing halfway (or a
        ``test -e`` reading sudo's refusal as "no such file").
        """
        if not self.sudo:
            return
        with self._sudo_lock:
            if self._sudo_works:
                return
            timeout = self.options.connect_timeout + 30
            probe = self._execute(shlex.join(["sudo", "-n", "true"]), ["sudo", "-n", "true"],
                                  input=None, timeout=timeout)
            if not probe.ok:
                raise self._refusal(probe.returncode, probe.stderr, timeout)
            self._sudo_works = True

    def _refusal(self, returncode: int, stderr: str, timeout: float | None) -> SudoRefused:
        user = self._execute("id -un", ["id", "-un"], input=None,
                             timeout=timeout).stdout.strip() or "THE_SSH_USER"
        why = (stderr.strip().splitlines() or [f"exit {returncode}"])[-1]
        if returncode == 127:
            return SudoRefused(f"on {self.destination}: sudo is not installed ({why})",
                               hint=f"install sudo there and add the sudoers line "
                                    f"`{sudoers_line(user)}`, or log in as root and set "
                                    "sudo = false")
        return SudoRefused(
            f"on {self.destination}: sudo -n does not let {user} run commands as root "
            f"without a password ({why})",
            hint=f"add `{sudoers_line(user)}` with `visudo -f /etc/sudoers.d/hotcopy` on "
                 f"{self.destination} (see the README, \"sudo\")")

    def _checked(self, argv: Sequence[str], result: CommandResult, check: bool,
                 timeout: float | None) -> CommandResult:
        """A refusal by sudo is never a command's own failure, even with check=False."""
        if self.sudo and result.returncode == 1 and _sudo_refused(result.stderr):
            raise self._refusal(result.returncode, result.stderr, timeout)
        if check and not result.ok:
            raise command_failed(self.destination, argv, result.returncode, result.stderr)
        return result

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = 300,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        log.debug("%s: %s", self.destination, shlex.join(argv))
        self.check_sudo()
        result = self._execute(shlex.join(self.remote_words(argv, env)), argv, input=input,
                               timeout=timeout)
        return self._checked(argv, result, check, timeout)

    def stream(
        self,
        argv: Sequence[str],
        on_line: LineCallback,
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        self.check_sudo()
        result = stream_process(self.destination, self._remote(argv), argv, on_line,
                                timeout=timeout, check=False)
        return self._checked(argv, result, check, 60)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        self.run(remote.argv("write_file.sh", path, f"{mode:o}"), input=data)

    def read_file(self, path: str) -> bytes:
        self.check_sudo()
        proc = subprocess.run(self._remote(["cat", path]), capture_output=True, timeout=60,
                              check=False, start_new_session=True)
        result = CommandResult(("cat", path), proc.returncode, "",
                               proc.stderr.decode(errors="replace"))
        self._checked(["cat", path], result, True, 60)
        return bytes(proc.stdout)

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0
