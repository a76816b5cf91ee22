"""Run commands on the machine hotcopy runs on."""

from __future__ import annotations

import io
import logging
import os
import shlex
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

from hotcopy.errors import CommandError
from hotcopy.hosts.base import CommandResult, LineCallback, command_failed, split_progress_lines

log = logging.getLogger(__name__)


class LocalExecutor:
    name = "local"
    is_local = True

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = 300,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        log.debug("local: %s", shlex.join(argv))
        full_env = {**os.environ, **env} if env else None
        try:
            proc = subprocess.run(
                list(argv), input=input, capture_output=True, timeout=timeout, env=full_env,
                check=False, start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise CommandError(f"on local: `{argv[0]}` is not installed", returncode=127) from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                f"on local: `{shlex.join(argv)[:200]}` did not finish within {timeout:.0f}s"
            ) from exc
        result = CommandResult(
            tuple(argv), proc.returncode,
            proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
        )
        if check and not result.ok:
            raise command_failed(self.name, argv, result.returncode, result.stderr)
        return result

    def stream(
        self,
        argv: Sequence[str],
        on_line: LineCallback,
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        return stream_process(self.name, list(argv), list(argv), on_line, timeout=timeout,
                              check=check)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_file(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def check_sudo(self) -> None:
        """Local commands run as hotcopy's own user, without sudo: nothing to check."""


def stream_process(
    host: str,
    argv: list[str],
    shown_argv: Sequence[str],
    on_line: LineCallback,
    *,
    timeout: float | None,
    check: bool,
) -> CommandResult:
    """Run argv, feeding stdout lines to on_line while stderr is collected aside.

    stderr is drained by a thread so a chatty command can never block on a full pipe.
    """
    log.debug("%s: %s", host, shlex.join(shown_argv))
    try:
        # A session of its own: ^C on the terminal reaches hotcopy only, which then stops
        # the child itself (or lets an undo finish) instead of losing it mid-command.
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError as exc:
        raise CommandError(f"on {host}: `{argv[0]}` is not installed", returncode=127) from exc
    assert proc.stdout is not None and proc.stderr is not None
    stdout = cast(io.BufferedReader, proc.stdout)
    err_chunks: list[bytes] = []
    stderr_pipe = proc.stderr

    def drain_stderr() -> None:
        err_chunks.extend(iter(lambda: stderr_pipe.read(4096), b""))

    drain = threading.Thread(target=drain_stderr, daemon=True)
    drain.start()
    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
    out_chunks: list[str] = []
    pending = ""
    try:
        while True:
            chunk = stdout.read1(65536)
            if not chunk:
                break
            text = chunk.decode(errors="replace")
            out_chunks.append(text)
            lines, pending = split_progress_lines(pending + text)
            for line in lines:
                on_line(line)
        if pending:
            on_line(pending)
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        drain.join(timeout=5)
    result = CommandResult(tuple(shown_argv), proc.returncode, "".join(out_chunks),
                           b"".join(err_chunks).decode(errors="replace"))
    if check and not result.ok:
        raise command_failed(host, shown_argv, result.returncode, result.stderr)
    return result
