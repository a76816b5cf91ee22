"""Review finding 1: sessions reach the configured server and no other, proven by preflight.

A Debian-style ``[client]`` group (host=localhost, socket=...) used as the admin option
file must not redirect sessions to the server behind the socket; and two config names
that reach one mysqld must be refused before anything changes.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.mysql.connection import connect
from hotcopy.sandbox import SandboxInfo
from hotcopy.sandbox.layout import server_paths

from .helpers import hotcopy, wait_for
from .test_refusals import admin_password, edited_config, free_port, refuse


def debian_style_file(info: SandboxInfo, directory: Path, socket_of: str) -> Path:
    """/etc/mysql/debian.cnf's shape: host=localhost and a socket of another server."""
    user = next(line.split("=", 1)[1].strip()
                for line in info.admin_option_file.read_text().splitlines()
                if line.split("=", 1)[0].strip() == "user")
    path = directory / "debian.cnf"
    path.write_text("# Automatically generated for Debian scripts. DO NOT TOUCH!\n"
                    "[client]\n"
                    "host     = localhost\n"
                    f"user     = {user}\n"
                    f"password = \"{admin_password(info)}\"\n"
                    f"socket   = {server_paths(info.directory, socket_of).socket}\n"
                    "[mysql_upgrade]\n"
                    "host     = localhost\n"
                    f"socket   = {server_paths(info.directory, socket_of).socket}\n")
    os.chmod(path, 0o600)
    return path


def server_id(info: SandboxInfo, name: str, option_file: Path) -> int:
    conn = connect(info.address(name), str(option_file))
    try:
        return int(conn.scalar("SELECT @@server_id"))
    finally:
        conn.close()


def test_socket_line_in_the_admin_file_does_not_redirect_sessions(
        sandbox: SandboxInfo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = server_id(sandbox, sandbox.master, sandbox.admin_option_file)
    other = server_id(sandbox, "replica1", sandbox.admin_option_file)
    assert expected != other
    cnf = debian_style_file(sandbox, tmp_path, socket_of="replica1")
    with caplog.at_level(logging.WARNING, logger="hotcopy.mysql.option_file"):
        assert server_id(sandbox, sandbox.master, cnf) == expected
    ignored = [r.getMessage() for r in caplog.records]
    assert any("`socket`" in m and str(cnf) in m for m in ignored), ignored
    assert any("`host`" in m for m in ignored), ignored
    assert all(admin_password(sandbox) not in m for m in ignored)


def test_a_clone_with_a_debian_style_admin_file_reaches_the_configured_servers(
        sandbox: SandboxInfo, tmp_path: Path) -> None:
    cnf = debian_style_file(sandbox, tmp_path, socket_of="replica2")
    config = edited_config(sandbox, tmp_path, {("mysql", "option_file"): f'"{cnf}"'})
    proc = hotcopy("clone", "--config", str(config), "--source", "replica1", "--target",
                   "replica2", "--dry-run", "--json", env={"COLUMNS": "200"}, timeout=120)
    # Before the fix every session went to replica2's socket: the "source" had no
    # replica of its own to differ from and the target was the source.
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "`socket` in [client] is ignored" in " ".join(proc.stderr.split()), proc.stderr


@pytest.fixture
def forward_to_replica1(sandbox: SandboxInfo) -> Iterator[int]:
    """A TCP port forward (socat) to replica1: another address, the same mysqld."""
    port = free_port()
    target = sandbox.address("replica1")
    proc = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                             f"TCP:{target.host}:{target.port}"])
    try:
        assert wait_for(lambda: _accepts(port), timeout=10), "socat does not listen"
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_two_names_for_one_server_are_refused(sandbox: SandboxInfo, tmp_path: Path,
                                              forward_to_replica1: int) -> None:
    config = edited_config(sandbox, tmp_path,
                           {("servers.replica2", "port"): str(forward_to_replica1)})
    # Before the fix this plan was accepted: replica1 would have been stopped, its
    # datadir swapped for a copy of itself, through the name replica2.
    refuse(sandbox, "replica1", "replica2", "source replica1 and target replica2 are one server",
           "server_id", config=config, modes=("--dry-run",), marker=False)
