"""Integration tests run against a real local shard (hotcopy.sandbox): root only.

One sandbox serves the whole session; it is always taken down at the end, also when
tests fail or the run is interrupted with SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from hotcopy.config import load as load_config
from hotcopy.errors import MySQLError
from hotcopy.hosts import LocalExecutor
from hotcopy.loadgen import seed
from hotcopy.mysql import replication
from hotcopy.mysql.connection import connect
from hotcopy.mysql.mysqld import MysqldControl
from hotcopy.runtime import Runtime
from hotcopy.saga import TERMINAL_STATES, SqliteJournal
from hotcopy.sandbox import SandboxInfo, down, up

from ..real_parts import needs

HERE = Path(__file__).parent.resolve()
TOOLS = ("mariadbd", "mariadb-install-db", "my_print_defaults", "mkfs.btrfs", "btrfs",
         "losetup", "fuser")


def _btrfs_available() -> bool:
    if Path("/sys/module/btrfs").exists():
        return True
    try:
        return "btrfs" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


def missing_requirements() -> str | None:
    """Why the integration tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "integration tests need root (loop mounts, btrfs, mariadbd as mysql)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"integration tests need {', '.join(missing)}: run scripts/bootstrap.sh"
    if not _btrfs_available():
        return "integration tests need btrfs support in the kernel"
    if not Path("/dev/loop-control").exists():
        return "integration tests need loop devices (/dev/loop-control)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_requirements()
    for item in items:
        if HERE not in item.path.resolve().parents:
            continue
        item.add_marker(pytest.mark.integration)
        if reason:
            item.add_marker(needs(reason))  # a skip, or a failure under CI


def new_sandbox_parent() -> Path:
    """A fresh directory the mysql user can traverse (pytest's own tmp dirs are 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="hotcopy-it-"))
    parent.chmod(0o755)
    return parent


@contextmanager
def own_sandbox(*, seed_rows: int = 20_000, before_down: Callable[[Path], None] | None = None,
                **up_options: Any) -> Iterator[SandboxInfo]:
    """A sandbox of a test module's own (e.g. zfs or netns), seeded, always taken down."""
    parent = new_sandbox_parent()
    directory = parent / "sandbox"
    try:
        info = up(directory, **up_options)
        if seed_rows:
            rt = Runtime(load_config(info.config_path))
            seed(info.address(info.master), rt.config.mysql.option_file, seed_rows)
            for name in info.replicas:
                replication.wait_caught_up(rt.server(name), rt.server(info.master),
                                           timeout_s=120)
            rt.close()
        yield info
    finally:
        try:
            if before_down is not None:
                before_down(directory)
            down(directory)
        finally:
            shutil.rmtree(parent, ignore_errors=True)


class _Terminated(BaseException):
    """SIGTERM turned into an exception, so fixture teardown still runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(f"signal {signum}")


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxInfo]:
    """A master and two replicas, up for the whole session, down at its end."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    parent = new_sandbox_parent()
    directory = parent / "sandbox"
    try:
        info = up(directory)
        yield info
    finally:
        try:
            down(directory)
        finally:
            shutil.rmtree(parent, ignore_errors=True)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@pytest.fixture(autouse=True)
def no_job_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on the shared sandbox, roll back any job it left unfinished.

    A test that fails half-way (an assertion, a timeout that killed the controller) can
    leave a job holding the replicas; every later test on the sandbox would then be
    refused by preflight, and one real failure would show up as dozens.
    """
    yield
    if "sandbox" not in request.fixturenames:
        return
    info: SandboxInfo = request.getfixturevalue("sandbox")
    journal_path = Path(load_config(info.config_path).journal_path())
    if not journal_path.exists():
        return
    with SqliteJournal(journal_path) as journal:
        unfinished = [job.id for job in journal.list_jobs(limit=20)
                      if job.state not in TERMINAL_STATES]
    for job_id in unfinished:
        undone = subprocess.run(
            [sys.executable, "-m", "hotcopy", "rollback", "--config", str(info.config_path),
             job_id], capture_output=True, text=True, timeout=600, check=False,
            env={k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"})
        if undone.returncode != 0:
            pytest.fail(f"job {job_id} was left unfinished and its rollback failed:\n"
                        f"{undone.stderr[-3000:]}", pytrace=False)


def control(info: SandboxInfo, name: str) -> MysqldControl:
    """MysqldControl as hotcopy builds it for a server of the sandbox."""
    return MysqldControl(name, LocalExecutor(), str(info.defaults_file(name)), None,
                         info.address(name), str(info.admin_option_file))


@pytest.fixture
def mysqld_control() -> Callable[[SandboxInfo, str], MysqldControl]:
    """``mysqld_control(info, name)``: a MysqldControl as hotcopy builds it."""
    return control


@pytest.fixture
def sandbox_parent() -> Iterator[Path]:
    """A directory for a test's own sandboxes; whatever they leave is taken down."""
    path = new_sandbox_parent()
    yield path
    for child in path.iterdir():
        if (child / "sandbox.json").exists():
            down(child)
    shutil.rmtree(path, ignore_errors=True)


def _replication_running(info: SandboxInfo, name: str) -> bool:
    try:
        conn = connect(info.address(name), str(info.admin_option_file), connect_timeout=3)
    except MySQLError:
        return False
    try:
        row = conn.one("SHOW SLAVE STATUS") or {}
        if row.get("Slave_IO_Running") == "Yes" and row.get("Slave_SQL_Running") == "Yes":
            return True
        if row:
            conn.execute("START SLAVE")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            row = conn.one("SHOW SLAVE STATUS") or {}
            if row.get("Slave_IO_Running") == "Yes" and row.get("Slave_SQL_Running") == "Yes":
                return True
            time.sleep(0.2)
        return False
    finally:
        conn.close()


@pytest.fixture
def healthy_sandbox(sandbox: SandboxInfo) -> Iterator[SandboxInfo]:
    """The session sandbox, restarted servers and replication included, after the test.

    For tests that stop servers or replication on purpose; it cannot repair a datadir
    a test destroyed (that test should take its own sandbox).
    """
    yield sandbox
    for name in sandbox.servers:
        ctl = control(sandbox, name)
        if not ctl.is_running():
            ctl.start(timeout=120)
    for name in sandbox.replicas:
        assert _replication_running(sandbox, name), f"{name} does not replicate any more"
