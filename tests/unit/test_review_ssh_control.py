"""ssh multiplexing sockets never live where another local user could plant them (finding 2)."""

from __future__ import annotations

import os
import pwd
import stat
import tempfile
from pathlib import Path

import pytest

from hotcopy.errors import RefusedError
from hotcopy.hosts.ssh import SshExecutor, SshOptions


def control_path(executor: SshExecutor) -> str:
    argv = executor._base_argv()
    return next(a.split("=", 1)[1] for a in argv if a.startswith("ControlPath="))


def nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def test_a_planted_tmp_hotcopy_ssh_is_not_used() -> None:
    planted = Path(tempfile.gettempdir()) / "hotcopy-ssh"
    created = not planted.exists()
    if created:
        planted.mkdir(mode=0o777)
        planted.chmod(0o777)
        if os.geteuid() == 0:
            os.chown(planted, nobody(), -1)  # as another local user would have made it
    try:
        path = control_path(SshExecutor("root@db1", SshOptions()))
        directory = os.path.dirname(path)
        assert os.path.realpath(directory) != os.path.realpath(planted)
        info = os.lstat(directory)
        assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
        assert stat.S_IMODE(info.st_mode) == 0o700
        # one private directory per process, shared by all executors
        assert os.path.dirname(control_path(SshExecutor("root@db2", SshOptions()))) == directory
    finally:
        if created:
            planted.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_configured_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, nobody(), -1)
    with pytest.raises(RefusedError, match="owned by uid"):
        control_path(SshExecutor("root@db1", SshOptions(control_dir=str(theirs))))


def test_a_configured_directory_that_is_wide_open_or_a_symlink_is_refused(tmp_path: Path) -> None:
    wide = tmp_path / "wide"
    wide.mkdir()
    wide.chmod(0o755)
    with pytest.raises(RefusedError, match="mode 755"):
        control_path(SshExecutor("root@db1", SshOptions(control_dir=str(wide))))
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(RefusedError, match="not a directory"):
        control_path(SshExecutor("root@db1", SshOptions(control_dir=str(link))))


def test_a_missing_configured_directory_is_created_private(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    assert os.path.dirname(control_path(
        SshExecutor("root@db1", SshOptions(control_dir=str(fresh))))) == str(fresh)
    assert stat.S_IMODE(os.lstat(fresh).st_mode) == 0o700
