"""servers.NAME.sudo: what the executor sends, what the far rsync runs, what config accepts.

The end-to-end proof (a non-root login cloning through sudo) is in
tests/integration/test_sudo_netns.py; these pin the command lines it relies on.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hotcopy.config import ServerConfig
from hotcopy.hosts import SshExecutor, SshOptions, executor_for
from hotcopy.hosts.ssh import sudoers_line
from hotcopy.transfer.rsync_ssh import far_probe, far_rsync

from ..real_parts import missing_tools, needs

SERVER: dict[str, Any] = {"host": "10.0.0.2", "datadir": "/var/lib/mysql",
                          "defaults_file": "/etc/my.cnf"}


def remote_command(executor: SshExecutor, argv: list[str],
                   env: dict[str, str] | None = None) -> list[str]:
    """The words the host's login shell parses out of the one command string ssh sends."""
    full = executor._remote(argv, env)
    assert full[-2:-1] == ["--"], "the command follows ssh's own options"
    return shlex.split(full[-1])


def test_without_sudo_the_command_goes_as_before() -> None:
    executor = SshExecutor("root@db1", SshOptions())
    assert remote_command(executor, ["test", "-e", "/a b"]) == ["test", "-e", "/a b"]
    assert remote_command(executor, ["sh", "-c", "x"], {"K": "v w"}) == \
        ["env", "K=v w", "sh", "-c", "x"]


def test_with_sudo_every_command_runs_through_sudo_n_and_env_survives() -> None:
    executor = SshExecutor("hotcopy@db1", SshOptions(), sudo=True)
    assert remote_command(executor, ["rm", "-rf", "--", "/d/it's"]) == \
        ["sudo", "-n", "--", "rm", "-rf", "--", "/d/it's"]
    # env K=V after sudo: sudo's env_reset would drop variables passed any other way.
    assert remote_command(executor, ["sh", "-c", "s", "name"], {"HOTCOPY_JOB": "j1"}) == \
        ["sudo", "-n", "--", "env", "HOTCOPY_JOB=j1", "sh", "-c", "s", "name"]


def test_executor_for_passes_sudo_and_local_never_uses_it() -> None:
    remote = executor_for("hotcopy@db1", SshOptions(), sudo=True)
    assert isinstance(remote, SshExecutor) and remote.sudo
    assert executor_for("local", sudo=False).is_local


def test_config_sudo_defaults_off_and_needs_an_ssh_destination() -> None:
    assert ServerConfig(**SERVER).sudo is False
    assert ServerConfig(**SERVER, ssh="hotcopy@db1", sudo=True).sudo is True
    with pytest.raises(ValueError, match="sudo = true needs an ssh destination"):
        ServerConfig(**SERVER, sudo=True)


def test_rsync_ssh_starts_the_far_rsync_through_sudo_only_when_configured() -> None:
    assert far_rsync(False) == []
    assert far_rsync(True) == ["--rsync-path=sudo -n -- rsync"]
    assert far_probe(False) == "command -v rsync"
    assert shlex.split(far_probe(True))[:3] == ["sudo", "-n", "--"]


@needs(missing_tools(["visudo"], "checking the sudoers line"))
def test_the_sudoers_line_we_print_is_valid_sudoers(tmp_path: Path) -> None:
    drop_in = tmp_path / "hotcopy"
    drop_in.write_text(sudoers_line("hotcopy") + "\n")
    drop_in.chmod(0o440)
    result = subprocess.run(["visudo", "-cf", str(drop_in)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
