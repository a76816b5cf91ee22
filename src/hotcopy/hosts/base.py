"""The Executor protocol: what every step needs from a host, and nothing more.

Steps speak argv lists, never shell strings: the executor decides how they travel
(directly for the local host, shell-quoted through OpenSSH for a remote one), so a
path with a space or a quote can never turn into a second command. Secrets travel on
stdin (``write_file``), never in argv, where ``ps`` on either host would show them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from hotcopy.errors import CommandError

LineCallback = Callable[[str], None]

_LINE_SPLIT = re.compile(r"[\r\n]+")


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self, host: str) -> CommandResult:
        if self.returncode != 0:
            raise command_failed(host, self.argv, self.returncode, self.stderr)
        return self


def command_failed(host: str, argv: Sequence[str], returncode: int, stderr: str) -> CommandError:
    tail = "\n".join(stderr.strip().splitlines()[-5:])
    shown = shlex.join(argv)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    message = f"on {host}: `{shown}` exited with {returncode}"
    if tail:
        message += f": {tail}"
    return CommandError(message, returncode=returncode, stderr=stderr)


def split_progress_lines(buffer: str) -> tuple[list[str], str]:
    """Split output on CR or LF (rsync redraws its progress line with CR).

    Returns the complete lines and the unfinished remainder.
    """
    parts = _LINE_SPLIT.split(buffer)
    return [p for p in parts[:-1] if p], parts[-1]


class Executor(Protocol):
    """Runs commands and moves small files on one host."""

    @property
    def name(self) -> str:
        """How the host is named in messages: ``local`` or the ssh destination."""
        ...

    @property
    def is_local(self) -> bool: ...

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = 300,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run argv to completion; raise CommandError on a non-zero exit when check."""
        ...

    def stream(
        self,
        argv: Sequence[str],
        on_line: LineCallback,
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run argv, calling on_line for every stdout line (CR or LF ended) as it comes."""
        ...

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Create or replace path with data, with mode set before any byte is written."""
        ...

    def read_file(self, path: str) -> bytes: ...

    def exists(self, path: str) -> bool: ...

    def check_sudo(self) -> None:
        """Raise SudoRefused unless the commands this executor runs with sudo will be
        allowed; a no-op for an executor that uses no sudo."""
        ...
