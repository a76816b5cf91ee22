"""Real etcd for tests: the cluster of hotcopy.sandbox.etcd plus pytest's fixtures.

The cluster itself lives in src/ so that the benchmark starts the same one. Without
the etcd binary, tests skip, unless CI=true (or HOTCOPY_REQUIRE_ALL=1), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.sandbox.etcd import EtcdCluster, Member, etcd_binary, free_ports

__all__ = ["EtcdCluster", "Member", "free_ports", "require_etcd",
           "unique_prefix"]

ETCD = etcd_binary()


def require_etcd() -> str:
    if ETCD is None:
        message = "etcd is not installed (Debian etcd-server): run scripts/bootstrap.sh"
        if os.environ.get("CI") == "true" or os.environ.get("HOTCOPY_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return ETCD


@pytest.fixture(scope="session")
def etcd_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One member for the whole session; tests keep apart by using their own prefix."""
    require_etcd()
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), 1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def etcd_cluster3(tmp_path: Path) -> Iterator[EtcdCluster]:
    require_etcd()
    cluster = EtcdCluster(tmp_path / "etcd3", 3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


_counter = iter(range(1, 1 << 30))


def unique_prefix() -> str:
    """A fresh tree per journal: tests share one etcd without seeing each other."""
    return f"/t{os.getpid()}-{next(_counter)}"


