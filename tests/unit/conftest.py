"""Fixtures shared by the unit tests: the journal backends (SQLite, a real etcd)."""

from tests.etcd_cluster import etcd_cluster3, etcd_single  # noqa: F401
from tests.journals import journal, journal_store  # noqa: F401
