"""Review finding 6: restoring the target's datadir checks that nothing uses it first.

After a failed ``mysqld.stop`` undo the copied server still runs on the datadir; the
``host.restore_datadir`` undo that follows must then fail (recorded by the saga) instead
of renaming and removing directories under a live mysqld. Run against a real server.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.hosts import LocalExecutor, files
from hotcopy.runtime import Runtime
from hotcopy.saga.actions import lookup
from hotcopy.sandbox import SandboxInfo

from .conftest import own_sandbox
from .helpers import runtime

NAME = "replica1"


@pytest.fixture(scope="module")
def shard() -> Iterator[SandboxInfo]:
    with own_sandbox(seed_rows=0, filesystem="plain", replicas=1) as info:
        yield info


@pytest.fixture
def rt(shard: SandboxInfo) -> Iterator[Runtime]:
    runtime_ = runtime(shard)
    yield runtime_
    if not runtime_.mysqld(NAME).is_running():
        runtime_.mysqld(NAME).start(timeout=120)
    runtime_.close()


def restore(rt: Runtime, params: dict[str, Any]) -> None:
    lookup("host.restore_datadir").fn(rt, params)


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_a_live_mysqld_on_the_datadir_makes_the_undo_fail_untouched(
        shard: SandboxInfo, rt: Runtime) -> None:
    datadir = shard.datadir(NAME)
    moved_to = datadir.parent / "review-original"
    moved_to.mkdir()
    (moved_to / "ibdata1").write_bytes(b"original")
    before = listing(datadir)
    try:
        assert rt.mysqld(NAME).is_running()
        with pytest.raises(files.PreconditionFailed, match="mysqld still runs"):
            restore(rt, {"server": NAME, "datadir": str(datadir), "moved_to": str(moved_to)})
        # Before the fix: the live datadir was removed and replaced under the server.
        assert listing(datadir) == before
        assert (moved_to / "ibdata1").read_bytes() == b"original"
        assert rt.server(NAME).scalar(("SELECT 1", ())) == 1
    finally:
        subprocess.run(["rm", "-rf", "--", str(moved_to)], check=True)


def test_a_process_holding_files_makes_the_undo_fail(shard: SandboxInfo, rt: Runtime) -> None:
    """No mysqld, but another process (a backup tool, a shell) works in the datadir."""
    datadir = shard.datadir(NAME)
    moved_to = datadir.parent / "review-original"
    moved_to.mkdir()
    rt.server(NAME).close()
    rt.mysqld(NAME).stop(timeout=120)
    holder = subprocess.Popen(["sleep", "600"], cwd=datadir)
    try:
        with pytest.raises(files.PreconditionFailed, match=f"{holder.pid} sleep"):
            restore(rt, {"server": NAME, "datadir": str(datadir), "moved_to": str(moved_to)})
        assert moved_to.exists() and (datadir / "ibdata1").exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)
        moved_to.rmdir()


def test_restore_twice_finds_the_original_back_and_removes_nothing(
        shard: SandboxInfo, rt: Runtime) -> None:
    """The swap as swap_datadir does it, its undo run twice (the second finds it done)."""
    executor = LocalExecutor()
    datadir = shard.datadir(NAME)
    moved_to = datadir.parent / "review-original"
    rt.server(NAME).close()
    rt.mysqld(NAME).stop(timeout=120)
    original = files.identity(executor, str(datadir))
    before = listing(datadir)
    files.rename(executor, str(datadir), str(moved_to))
    datadir.mkdir()
    (datadir / "copied-from-source").write_text("the copy")
    params = {"server": NAME, "datadir": str(datadir), "moved_to": str(moved_to),
              "original_identity": original}
    restore(rt, params)
    assert files.identity(executor, str(datadir)) == original
    assert listing(datadir) == before and not moved_to.exists()
    assert not [p for p in datadir.parent.iterdir() if ".hotcopy-discard-" in p.name]
    restore(rt, params)  # a second run: done already, nothing removed
    assert files.identity(executor, str(datadir)) == original and listing(datadir) == before
