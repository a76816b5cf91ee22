"""Real etcd for tests: the cluster of hotcopy.sandbox.etcd plus pytest's fixtures.

The cluster itself lives in src/ so that the benchmark starts the same one. Without
the etcd binary, tests skip, unless CI=true (or HOTCOPY_REQUIRE_ALL=1), where they fail.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.sandbox.etcd import EtcdCluster, Member, etcd_binary, free_ports

__all__ = ["EtcdCluster", "Member", "etcd_status", "free_ports", "require_etcd",
           "unique_prefix"]

ETCD = etcd_binary()


def etcd_status(url: str) -> dict[str, Any] | None:
    """A member's /v3/maintenance/status answer, or None while it does not answer."""
    request = urllib.request.Request(f"{url}/v3/maintenance/status", b"{}",
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return dict(json.loads(response.read()))
    except (OSError, ValueError):
        return None


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


