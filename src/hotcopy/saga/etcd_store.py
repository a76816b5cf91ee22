"""The etcd journal's foundation: key layout, JSON codecs, and the fenced write.

Ownership is a key on the owner's lease (``owners/JOB``); its create revision is the
owner's epoch. Every write of a controller compares that create revision in the same
transaction (``_fenced``), so once the lease expired (the key vanished) or another
controller took the job over (a new key, a new revision), the old controller's writes
fail: a lease alone is not mutual exclusion, the revision compare is. Everything the
journal records goes through ``_put_cas``/``_fenced``; the modules above this one only
decide *what* to write.

Keys, under ``PREFIX/SHARD/``: ``jobs/ID``, ``owners/ID`` (leased), ``undo/ID/SEQ``,
``steps/ID/N``, ``locks/RESOURCE``; all values are JSON.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from hotcopy.saga.etcd_client import (
    EtcdAuthError,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    cmp_create,
    cmp_mod,
    first_kv,
    op_get,
    op_put,
)
from hotcopy.saga.etcd_lease import LeaseKeeper
from hotcopy.saga.journal import (
    EntryState,
    FencedOut,
    Job,
    JobNotFound,
    JobState,
    JournalUnavailable,
    Ownership,
    UndoEntry,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_ATTEMPTS = 8
"""Compare failures caused by our own earlier (ambiguous) write are re-read and retried."""


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class EtcdStore:
    """Connection, lease, caches and fenced writes shared by the journal's parts."""


    def __init__(
        self, client: EtcdClient, shard: str, *, prefix: str = "/hotcopy", lease_ttl_s: int = 10,
        margin_s: float | None = None,
    ) -> None:
        self.client = client
        self.shard = shard
        self.root = f"{prefix.rstrip('/')}/{shard}/"
        self.lease_ttl_s = lease_ttl_s
        self.margin_s = margin_s if margin_s is not None else max(1.0, lease_ttl_s / 3)
        self._owned: dict[str, Ownership] = {}
        # What this owner last wrote, so a write costs one round trip (the txn), not a
        # read first. Only the owner writes a job's keys (every write is fenced), so the
        # cache can only be stale after our own ambiguous write: its compare then fails,
        # the entry is dropped and the write retried on a fresh read.
        self._kv: dict[str, KeyValue] = {}
        self._next_seq: dict[str, int] = {}
        self._steps_kv: dict[str, list[KeyValue]] = {}
        self._lock = threading.RLock()
        self.lease = LeaseKeeper(client, lease_ttl_s)
        self.where = f"the etcd journal {self.root} at {', '.join(client.endpoints)}"

    # plumbing -----------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self.root + "/".join(parts)

    @contextmanager
    def _etcd(self, job_id: str | None = None) -> Iterator[None]:
        """etcd's failures as the journal's: unreachable -> JournalUnavailable."""
        try:
            yield
        except EtcdAuthError as exc:
            raise JournalUnavailable(
                f"{exc}", hint="check [journal] auth_file and the tls_* files") from exc
        except EtcdUnavailable as exc:
            what = f"job {job_id}: " if job_id else ""
            raise JournalUnavailable(
                f"{what}the etcd journal is unreachable, so no change can be recorded "
                f"first and none is made: {exc}",
                hint=f"once etcd is back, `hotcopy show {job_id}` and `hotcopy rollback "
                f"{job_id}`" if job_id else "check the [journal] endpoints and the network",
            ) from exc
        except EtcdError as exc:
            raise JournalUnavailable(f"{exc}") from exc

    def _ensure_lease(self) -> int:
        with self._etcd():
            return self.lease.ensure()

    def lease_valid_for(self) -> float:
        """Seconds this process may still trust its lease, by its own clock."""
        return self.lease.valid_for()

    def _owner_key(self, job_id: str) -> str:
        return self._key("owners", job_id)

    def _fenced(
        self, job_id: str, compares: Sequence[Mapping[str, Any]],
        success: Sequence[Mapping[str, Any]], failure: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[bool, list[dict[str, Any]]]:
        """One txn that also compares our ownership; FencedOut if that part failed."""
        mine = self._owned.get(job_id)
        if mine is None:
            self._require_job(job_id)
            raise FencedOut(job_id, "this process never claimed it")
        owner = self._owner_key(job_id)
        with self._etcd(job_id):
            ok, responses = self.client.txn(
                [cmp_create(owner, mine.epoch), *compares], success,
                [op_get(owner), *failure])
        if ok:
            return True, responses
        current = first_kv(responses[0])
        if current is None or current.create_revision != mine.epoch:
            self._owned.pop(job_id, None)
            why = ("its lease expired" if current is None else
                   f"epoch {mine.epoch} was superseded by {current.create_revision}")
            raise FencedOut(job_id, why)
        return False, responses[1:]

    def _get_kv(self, key: str, job_id: str | None = None) -> KeyValue | None:
        with self._etcd(job_id):
            return self.client.get(key)

    def _prefix(self, prefix: str, job_id: str | None = None) -> list[KeyValue]:
        with self._etcd(job_id):
            return self.client.get_prefix(prefix)

    def _job_kv(self, job_id: str) -> KeyValue:
        kv = self._get_kv(self._key("jobs", job_id), job_id)
        if kv is None:
            raise JobNotFound(job_id, self.where)
        return kv

    def _require_job(self, job_id: str) -> None:
        self._job_kv(job_id)

    def _retry(self, job_id: str, attempt: Callable[[], T | None]) -> T:
        for _ in range(_ATTEMPTS):
            result = attempt()
            if result is not None:
                return result
        raise JournalUnavailable(f"job {job_id}: etcd kept changing under this write "
                                 f"({_ATTEMPTS} attempts)")


    # codecs and fenced read-modify-write ---------------------------------------

    @staticmethod
    def _job(raw: str) -> Job:
        fields = json.loads(raw)
        return Job(**{**fields, "state": JobState(fields["state"])})

    def _put_epoch(self, job_id: str, epoch: int, **extra: Any) -> None:
        self._modify_job(job_id, lambda job: job.update(owner_epoch=epoch, **extra))

    def _put_cas(
        self, job_id: str, key: str, value: str, revision: int,
        compares: Sequence[Mapping[str, Any]] = (),
    ) -> KeyValue | None:
        """Put ``key`` if it is still at ``revision`` (0: absent) and we still own the
        job; the new version is read back in the same txn and cached. None: retry."""
        ok, responses = self._fenced(job_id, [cmp_mod(key, revision), *compares],
                                     [op_put(key, value), op_get(key)])
        if not ok:
            self._kv.pop(key, None)
            return None
        kv = first_kv(responses[1])
        assert kv is not None
        self._kv[key] = kv
        return kv

    def _modify_job(self, job_id: str, change: Callable[[dict[str, Any]], None]) -> None:
        key = self._key("jobs", job_id)

        def attempt() -> bool | None:
            kv = self._kv.get(key) or self._job_kv(job_id)
            job = json.loads(kv.value)
            change(job)
            job["updated"] = time.time()
            return True if self._put_cas(job_id, key, _dump(job), kv.mod_revision) else None

        self._retry(job_id, attempt)

    @staticmethod
    def _entry(raw: str) -> UndoEntry:
        fields = json.loads(raw)
        fields.pop("claimed_epoch", None)
        return UndoEntry(**{**fields, "state": EntryState(fields["state"])})

    def _entry_key(self, job_id: str, seq: int) -> str:
        return self._key("undo", job_id, f"{seq:08d}")

    def _refuse_if_lease_lapsing(self, job_id: str, what: str) -> None:
        """Recorded, but our lease may lapse before we act: a new owner could then act
        on the same entry at the same time. By our own clock, with a margin: stop."""
        left = self.lease_valid_for()
        if left < self.margin_s:
            raise JournalUnavailable(
                f"job {job_id}: this controller's etcd lease is valid for only {left:.1f} s "
                f"more; it stops before {what}",
                hint=f"after the lease expired, `hotcopy rollback {job_id}` from any host")
