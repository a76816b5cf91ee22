"""Review (Low): the rsync daemon refuses client options that follow symlinks.

A real ``rsync --daemon`` with the configuration hotcopy writes, on loopback: a symlink
in the module (as a datadir may hold) points at a file outside it. With
``--copy-unsafe-links`` the daemon would send that file's content; it must refuse.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.transfer.base import ServerHandle, TransferRequest
from hotcopy.transfer.rsyncd import MODULE, RsyncDaemon

SECRET = "not-a-real-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("rsync") is None:
        pytest.fail("rsync is not installed: run scripts/bootstrap.sh")
    module, workdir = tmp_path / "snapshot", tmp_path / "work"
    module.mkdir()
    workdir.mkdir(mode=0o700)
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("content outside the snapshot\n")
    (module / "ibdata1").write_text("data\n")
    (module / "link").symlink_to(outside)
    request = TransferRequest("job", "a", "b", "127.0.0.1", "127.0.0.1", str(module), "/d",
                              [], None, None, 60, 0)
    handle = ServerHandle("rsyncd", "b", {"workdir": str(workdir), "user": "hc"})
    port = free_port()
    (workdir / "rsyncd.conf").write_text(RsyncDaemon()._config(request, handle, port, 4))
    secrets = workdir / "secrets"
    secrets.write_text(f"hc:{SECRET}\n")
    secrets.chmod(0o600)
    proc = subprocess.Popen(["rsync", "--daemon", "--no-detach",
                             f"--config={workdir / 'rsyncd.conf'}"])
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "rsync daemon did not listen"
            time.sleep(0.05)
        yield port, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def pull(port: int, tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    dest = tmp_path / ("dest" + "".join(o.strip("-") for o in options))
    dest.mkdir()
    password = tmp_path / "pass"
    password.write_text(SECRET + "\n")
    password.chmod(0o600)
    return subprocess.run(["rsync", "-a", *options, f"--password-file={password}",
                           f"rsync://hc@127.0.0.1:{port}/{MODULE}/", f"{dest}/"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "LC_ALL": "C"})


def test_symlink_following_options_are_refused(daemon: tuple[int, Path]) -> None:
    port, tmp_path = daemon
    plain = pull(port, tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert (tmp_path / "dest" / "link").is_symlink()  # the link itself, as hotcopy ships it
    for option in ("--copy-unsafe-links", "--copy-links"):
        proc = pull(port, tmp_path, option)
        # Before the fix: exit 0, and dest/link held "content outside the snapshot".
        assert proc.returncode != 0, option
        assert "configured to refuse" in proc.stderr, proc.stderr
        copied = tmp_path / ("dest" + option.strip("-")) / "link"
        assert not (copied.exists() and not copied.is_symlink()), option
