"""The staging write-back, on this host's real page cache: ``start_writeback.sh`` passes
while a "copy" runs, then a real ``sync -f``."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path

import pytest

from hotcopy.errors import HotcopyError
from hotcopy.hosts import LocalExecutor
from hotcopy.workflows.writeback import StagingWriteback

MIB = 1 << 20


def cached_pages(path: Path) -> int:
    """Pages of path in the page cache (mincore(2) on a mapping of the file)."""
    size = path.stat().st_size
    page = os.sysconf("SC_PAGE_SIZE")
    libc = ctypes.CDLL(None, use_errno=True)
    with path.open("rb") as handle, \
            mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY) as mapping:
        start = ctypes.c_char.from_buffer(mapping)
        try:
            vector = (ctypes.c_ubyte * ((size + page - 1) // page))()
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size),
                            vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(byte & 1 for byte in vector)
        finally:
            del start  # the mapping closes only once nothing points into it


def written_and_cached(path: Path) -> int:
    """Write 4 MiB to path, on disk (fsync) and still cached (read back): its page count."""
    with path.open("wb") as handle:
        handle.write(os.urandom(4 * MIB))
        handle.flush()
        os.fsync(handle.fileno())
    path.read_bytes()
    cached = cached_pages(path)
    assert cached > 0
    return cached


def test_the_first_pass_hands_every_file_to_the_kernel(tmp_path: Path) -> None:
    # Clean cached pages show it: the hint that starts a file's writeback also drops
    # what of it is on disk already.
    files = [tmp_path / "a.ibd", tmp_path / "sub" / "b.ibd"]
    files[1].parent.mkdir()
    for path in files:
        written_and_cached(path)
    writeback = StagingWriteback(LocalExecutor(), str(tmp_path), interval_s=0)
    writeback.start_pass()
    assert [cached_pages(path) for path in files] == [0, 0]
    assert writeback.passes == 1


def test_a_later_pass_looks_only_at_files_changed_since(tmp_path: Path) -> None:
    old, new = tmp_path / "old.ibd", tmp_path / "new.ibd"
    written_and_cached(old)
    time.sleep(0.05)  # well past the kernel's coarse clock tick (at most 10 ms)
    writeback = StagingWriteback(LocalExecutor(), str(tmp_path), interval_s=0)
    writeback._since = f"{time.time():.3f}"  # as if a pass had begun now
    time.sleep(0.05)
    written_and_cached(new)
    os.utime(new, (1e9, 1e9))  # as rsync -a leaves a file it wrote: the source's mtime
    writeback.start_pass()
    assert cached_pages(new) == 0  # its inode changed (ctime), whatever its mtime says
    assert cached_pages(old) > 0  # unchanged since: not looked at
    # The pass said when it began: the next one starts a second before that.
    assert float(writeback._since) == pytest.approx(time.time() - 1, abs=5)


def test_it_starts_writebacks_during_the_copy_and_syncs_at_its_end(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    with StagingWriteback(LocalExecutor(), str(staging), interval_s=0.05) as writeback:
        deadline = time.monotonic() + 30
        while writeback.passes < 2 and time.monotonic() < deadline:  # the "copy"
            (staging / f"f{writeback.passes}").write_bytes(b"x" * 65536)
            time.sleep(0.01)
    assert writeback.passes >= 2
    passes = writeback.passes
    assert writeback.final() >= 0
    assert writeback.passes == passes  # the thread is over: the final sync is the caller's


def test_interval_zero_writes_back_only_at_the_end(tmp_path: Path) -> None:
    with StagingWriteback(LocalExecutor(), str(tmp_path), interval_s=0) as writeback:
        time.sleep(0.1)
    assert writeback.passes == 0
    assert writeback.final() >= 0


def test_a_failing_final_write_back_fails_the_copy(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    with StagingWriteback(LocalExecutor(), str(gone), interval_s=0.05) as writeback:
        time.sleep(0.2)  # the background passes fail too: logged, retried, not raised
    assert writeback.passes == 0
    with pytest.raises(HotcopyError):
        writeback.final()
