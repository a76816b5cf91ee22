"""Review finding 4: a stream whose sender could not read a file is never taken as a copy.

A real unreadable file: one data block of a file in the source's datadir is overwritten
on the btrfs image under it, so every read of it (in the clone's snapshot too, which
shares the extent) fails the checksum with EIO. GNU tar then pads the file with zeros
and exits 2 while the receiver extracts the whole archive and answers OK.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.sandbox import SandboxInfo
from hotcopy.sandbox.layout import server_paths

from .helpers import clone_json, has_schema, leftovers, mark_local, runtime

SOURCE, TARGET = "replica1", "replica2"
MARKER = "review_stream_target_marker"
BLOCK = 4096


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def corrupt_first_block(info: SandboxInfo, path: Path) -> None:
    """Overwrite the file's first data block on the image, behind btrfs's back."""
    mnt = server_paths(info.directory, SOURCE).mnt
    image = server_paths(info.directory, SOURCE).image
    extent = next(line for line in run("filefrag", "-v", str(path)).splitlines()
                  if line.strip().startswith("0:"))
    logical = int(extent.split()[3].rstrip(".")) * BLOCK
    device = run("findmnt", "-no", "SOURCE", str(mnt)).strip()
    mapped = next(line for line in run("btrfs-map-logical", "-l", str(logical), "-b",
                                       str(BLOCK), device).splitlines()
                  if line.startswith("mirror 1"))
    words = mapped.split()
    physical = int(words[words.index("physical") + 1])
    fd = os.open(image, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(BLOCK), physical)
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next read goes to disk
        with pytest.raises(OSError) as caught:
            os.pread(fd, BLOCK, 0)
        assert caught.value.errno == errno.EIO
    finally:
        os.close(fd)


@pytest.fixture
def unreadable_file(sandbox: SandboxInfo) -> Iterator[Path]:
    path = sandbox.datadir(SOURCE) / "review_unreadable.bin"
    path.write_bytes(os.urandom(1 << 20))
    os.sync()
    try:
        corrupt_first_block(sandbox, path)
        yield path
    finally:
        path.unlink()


def test_a_sender_that_padded_an_unreadable_file_fails_the_clone(
        sandbox: SandboxInfo, unreadable_file: Path) -> None:
    rt = runtime(sandbox)
    try:
        mark_local(rt.server(TARGET), MARKER)
        proc, document = clone_json(sandbox, SOURCE, TARGET, "--transfer", "stream")
        # Before the fix: exit 0, and the target's copy of the file was 1 MiB of zeros.
        assert proc.returncode == 1, proc.stderr + proc.stdout
        stderr = " ".join(proc.stderr.split())
        assert "exited 2" in stderr and "zero-filled" in stderr, proc.stderr
        assert "Input/output error" in stderr, proc.stderr
        assert document.get("state") == "rolled-back", document
        assert rt.mysqld(TARGET).is_running()
        rt.server(TARGET).close()
        assert has_schema(rt.server(TARGET), MARKER), "the target lost its own datadir"
        assert leftovers(sandbox) == []
    finally:
        session = rt.server(TARGET).new_session()
        try:
            session.execute("SET SESSION sql_log_bin = 0")
            session.execute(f"DROP DATABASE IF EXISTS {MARKER}")
        finally:
            session.close()
        rt.close()
