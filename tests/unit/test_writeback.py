"""The staging write-back runs real ``sync -f`` on this host while a "copy" runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hotcopy.errors import HotcopyError
from hotcopy.hosts import LocalExecutor
from hotcopy.workflows.writeback import StagingWriteback


def test_it_writes_back_during_the_copy_and_once_more_at_its_end(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    with StagingWriteback(LocalExecutor(), str(staging), interval_s=0.05) as writeback:
        deadline = time.monotonic() + 30
        while writeback.syncs < 2 and time.monotonic() < deadline:  # the "copy"
            (staging / f"f{writeback.syncs}").write_bytes(b"x" * 65536)
            time.sleep(0.01)
    assert writeback.syncs >= 2
    syncs = writeback.syncs
    assert writeback.final() >= 0
    assert writeback.syncs == syncs  # the thread is over: the final one is the caller's


def test_interval_zero_writes_back_only_at_the_end(tmp_path: Path) -> None:
    with StagingWriteback(LocalExecutor(), str(tmp_path), interval_s=0) as writeback:
        time.sleep(0.1)
    assert writeback.syncs == 0
    assert writeback.final() >= 0


def test_a_failing_final_write_back_fails_the_copy(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    with StagingWriteback(LocalExecutor(), str(gone), interval_s=0.05) as writeback:
        time.sleep(0.2)  # the background ones fail too: logged, retried, not raised
    assert writeback.syncs == 0
    with pytest.raises(HotcopyError):
        writeback.final()
