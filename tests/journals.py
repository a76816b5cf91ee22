"""The journal contract is tested against every backend: SQLite and a real etcd.

``journal_store`` is parametrized over both; ``open()`` gives a new Journal instance on
the same store (what a fresh process sees), ``crash(j)`` makes an instance's process
"die": for etcd its lease is revoked, as if its TTL had run out, so another instance
may take its jobs over; for SQLite the dead process is simply never used again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hotcopy.saga import Journal, SqliteJournal
from hotcopy.saga.etcd_client import EtcdClient
from hotcopy.saga.etcd_journal import EtcdJournal
from tests.etcd_cluster import EtcdCluster, unique_prefix

BACKENDS = ["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)]


class RecordingJournal:
    """A real journal whose every method call is also reported, by name, to ``record``
    (tests of what the runner writes when, not of what the journal does)."""

    def __init__(self, journal: Journal, record: Callable[[str], None]) -> None:
        self._journal, self._record = journal, record

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._journal, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._record(name)
            return attribute(*args, **kwargs)
        return call


@dataclass
class JournalStore:
    backend: str
    path: Path
    endpoints: list[str] = field(default_factory=list)
    prefix: str = ""
    lease_ttl_s: int = 10
    opened: list[Journal] = field(default_factory=list)

    def open(self) -> Journal:
        journal: Journal
        if self.backend == "sqlite":
            journal = SqliteJournal(self.path)
        else:
            journal = EtcdJournal(EtcdClient(self.endpoints, timeout_s=3), "s1",
                                  prefix=self.prefix, lease_ttl_s=self.lease_ttl_s)
        self.opened.append(journal)
        return journal

    def crash(self, journal: Journal) -> None:
        if isinstance(journal, EtcdJournal):
            journal.revoke_lease()

    def close_all(self) -> None:
        for journal in self.opened:
            journal.close()
        self.opened.clear()


def make_store(backend: str, path: Path, etcd: EtcdCluster | None) -> JournalStore:
    if backend == "sqlite":
        return JournalStore("sqlite", path)
    assert etcd is not None
    return JournalStore("etcd", path, etcd.endpoints, unique_prefix())


@pytest.fixture(params=BACKENDS)
def journal_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JournalStore]:
    etcd = request.getfixturevalue("etcd_single") if request.param == "etcd" else None
    store = make_store(request.param, tmp_path / "journal.sqlite", etcd)
    try:
        yield store
    finally:
        store.close_all()


@pytest.fixture
def journal(journal_store: JournalStore) -> Journal:
    return journal_store.open()
