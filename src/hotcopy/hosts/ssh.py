"""Run commands on a remote host through the OpenSSH client.

We drive the real ``ssh`` binary rather than a Python SSH library: it honours the
operator's ssh_config, agents, jump hosts and known_hosts exactly as their own shell
does. Connections are multiplexed (ControlMaster) so the hundreds of small commands of
a clone cost one TCP and key exchange; BatchMode makes a missing key an error instead
of a password prompt that would hang an unattended run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hotcopy.errors import CommandError
from hotcopy.hosts.base import CommandResult, LineCallback, command_failed
from hotcopy.hosts.local import stream_process

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SshOptions:
    known_hosts: str | None = None
    identity_file: str | None = None
    connect_timeout: int = 10
    extra_options: tuple[str, ...] = field(default_factory=tuple)
    control_dir: str = field(default_factory=lambda: os.path.join(tempfile.gettempdir(),
                                                                  "hotcopy-ssh"))


class SshExecutor:
    is_local = False

    def __init__(self, destination: str, options: SshOptions) -> None:
        self.destination = destination
        self.options = options

    @property
    def name(self) -> str:
        return self.destination

    def _base_argv(self) -> list[str]:
        os.makedirs(self.options.control_dir, mode=0o700, exist_ok=True)
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
            "-o", f"ControlPath={self.options.control_dir}/{digest}",
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

    def _remote(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        command = shlex.join(argv)
        if env:
            assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
            command = f"env {assignments} {command}"
        return [*self._base_argv(), command]

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
        try:
            proc = subprocess.run(self._remote(argv, env), input=input, capture_output=True,
                                  timeout=timeout, check=False, start_new_session=True,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                f"on {self.destination}: `{shlex.join(argv)[:200]}` did not finish within "
                f"{timeout:.0f}s") from exc
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode == 255:
            raise CommandError(
                f"cannot reach {self.destination} over ssh: {stderr.strip()[-300:]}",
                returncode=255, stderr=stderr,
                hint="check that `ssh " + self.destination + " true` works non-interactively "
                     "(key loaded, host key in known_hosts)")
        result = CommandResult(tuple(argv), proc.returncode,
                               proc.stdout.decode(errors="replace"), stderr)
        if check and not result.ok:
            raise command_failed(self.destination, argv, result.returncode, result.stderr)
        return result

    def stream(
        self,
        argv: Sequence[str],
        on_line: LineCallback,
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        return stream_process(self.destination, self._remote(argv), argv, on_line,
                              timeout=timeout, check=check)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        script = (f"umask 077 && : > {shlex.quote(path)} && chmod {mode:o} {shlex.quote(path)} "
                  f"&& cat > {shlex.quote(path)}")
        self.run(["sh", "-c", script], input=data)

    def read_file(self, path: str) -> bytes:
        proc = subprocess.run([*self._base_argv(), shlex.join(["cat", path])],
                              capture_output=True, timeout=60, check=False,
                              start_new_session=True)
        if proc.returncode != 0:
            raise command_failed(self.destination, ["cat", path], proc.returncode,
                                 proc.stderr.decode(errors="replace"))
        return bytes(proc.stdout)

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0
