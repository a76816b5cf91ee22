"""The distributed journal: jobs, undo entries, steps and locks in an etcd v3 cluster.

Every write is one etcd transaction, acknowledged by a quorum before it returns, so a
controller on any host can finish a job whose controller died. Ownership is a key on
the owner's lease (``owners/JOB``); its create revision is the owner's epoch. Every
write of a controller compares that create revision in the same transaction, so once
the lease expired (the key vanished) or another controller took the job over (a new
key, a new revision), the old controller's writes fail: a lease alone is not mutual
exclusion, the revision compare is. Locks are durable keys bound to the *job*, as in
SQLite: a crashed job that still owes undos keeps its servers locked.

Keys, under ``PREFIX/SHARD/``: ``jobs/ID``, ``owners/ID`` (leased), ``undo/ID/SEQ``,
``steps/ID/N``, ``locks/RESOURCE``; all values are JSON.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hotcopy.errors import RefusedError
from hotcopy.saga.etcd_client import cmp_create, cmp_mod, first_kv, op_delete, op_get, op_put
from hotcopy.saga.etcd_records import EtcdRecords
from hotcopy.saga.etcd_store import _dump
from hotcopy.saga.journal import (
    TERMINAL_STATES,
    Job,
    JobState,
    Journal,
    LockConflict,
    LockInfo,
    OwnerAlive,
    Ownership,
    dump_json,
    new_job_id,
)

log = logging.getLogger(__name__)


class EtcdJournal(EtcdRecords):
    """A Journal in etcd; one lease per instance (per controller process).

    Jobs, ownership and locks live here; undo entries and steps in EtcdRecords; the
    key layout, codecs and the fenced write in EtcdStore."""

    # jobs ---------------------------------------------------------------------------

    def create_job(
        self, kind: str, params: Mapping[str, Any], job_id: str | None = None
    ) -> Job:
        dump_json(params)
        lease = self._ensure_lease()
        for _ in range(20):
            now = time.time()
            candidate = job_id or new_job_id(now)
            host, pid = socket.gethostname(), os.getpid()
            job = {"id": candidate, "kind": kind, "state": JobState.RUNNING.value,
                   "params": dict(params), "info": {}, "created": now, "updated": now,
                   "owner_host": host, "owner_pid": pid, "error": None, "owner_epoch": 0}
            key, owner = self._key("jobs", candidate), self._owner_key(candidate)
            owner_value = _dump({"host": host, "pid": pid, "since": now, "lease": lease})
            with self._etcd():
                ok, responses = self.client.txn(
                    [cmp_create(key, 0), cmp_create(owner, 0)],
                    [op_put(key, _dump(job)), op_put(owner, owner_value, lease),
                     op_get(owner)], [op_get(owner)])
            if not ok:
                kv = first_kv(responses[0]) if responses else None
                if kv is not None and kv.value == owner_value:  # our own retried write
                    ok, responses = True, [{}, {}, responses[0]]
                elif job_id is not None:
                    raise RefusedError(f"job '{job_id}' already exists in {self.where}")
                else:
                    continue
            kv = first_kv(responses[2])
            assert kv is not None
            self._owned[candidate] = Ownership(candidate, kv.create_revision, host, pid, now,
                                               lease)
            self._put_epoch(candidate, kv.create_revision)
            log.info("job %s (%s) created in etcd", candidate, kind)
            return self.get_job(candidate)
        raise RuntimeError("could not find a free job id after 20 tries")

    def get_job(self, job_id: str) -> Job:
        return self._job(self._job_kv(job_id).value)

    def list_jobs(self, limit: int = 50) -> list[Job]:
        jobs = [self._job(kv.value) for kv in self._prefix(self._key("jobs", ""))]
        jobs.sort(key=lambda j: j.created, reverse=True)
        return jobs[:limit]

    def set_job_state(self, job_id: str, state: JobState, error: str | None = None) -> None:
        value = JobState(state).value

        def change(job: dict[str, Any]) -> None:
            job["state"] = value
            if error is not None:
                job["error"] = error

        self._modify_job(job_id, change)

    def update_job_info(self, job_id: str, /, **items: Any) -> None:
        dump_json(items, "info")
        self._modify_job(job_id, lambda job: job["info"].update(items))

    def claim_job(self, job_id: str, host: str, pid: int) -> Ownership:
        self._require_job(job_id)
        owner = self._owner_key(job_id)
        mine = self._owned.get(job_id)
        current = self._get_kv(owner, job_id)
        if mine is not None and current is not None and current.create_revision == mine.epoch:
            if (host, pid) != (mine.host, mine.pid):  # already ours: record who we say we are
                self._modify_job(job_id, lambda job: job.update(owner_host=host, owner_pid=pid))
                self._owned[job_id] = Ownership(job_id, mine.epoch, host, pid, mine.since,
                                                mine.lease_id)
            return self._owned[job_id]
        if current is not None:
            holder = json.loads(current.value)
            with self._etcd(job_id):
                left = self.client.lease_ttl(current.lease)
            raise OwnerAlive(job_id, f"pid {holder['pid']} on {holder['host']} (its lease "
                                     f"expires in {max(left, 0)} s unless renewed)")
        lease = self._ensure_lease()
        now = time.time()
        value = _dump({"host": host, "pid": pid, "since": now, "lease": lease})
        with self._etcd(job_id):
            ok, responses = self.client.txn([cmp_create(owner, 0)],
                                            [op_put(owner, value, lease), op_get(owner)],
                                            [op_get(owner)])
        kv = first_kv(responses[1] if ok else responses[0])
        if kv is None or kv.value != value:  # another controller won the race
            holder = json.loads(kv.value) if kv is not None else {"pid": "?", "host": "?"}
            raise OwnerAlive(job_id, f"pid {holder['pid']} on {holder['host']}")
        ownership = Ownership(job_id, kv.create_revision, host, pid, now, lease)
        self._owned[job_id] = ownership
        self._put_epoch(job_id, kv.create_revision, owner_host=host, owner_pid=pid)
        log.info("job %s claimed by %s pid %d (epoch %d)", job_id, host, pid, kv.create_revision)
        return ownership

    def ownership(self, job_id: str) -> Ownership | None:
        return self._owned.get(job_id)

    # locks ----------------------------------------------------------------------------

    def acquire_locks(self, job_id: str, resources: Sequence[str]) -> None:
        wanted = list(dict.fromkeys(resources))

        def attempt() -> bool | None:
            compares: list[dict[str, Any]] = []
            puts: list[dict[str, Any]] = []
            now = time.time()
            for resource in wanted:
                key = self._key("locks", resource)
                kv = self._get_kv(key, job_id)
                if kv is not None:
                    held = json.loads(kv.value)
                    if held["job"] != job_id:
                        self._refuse_or_take_over(resource, held["job"])
                    elif held.get("since"):
                        now = held["since"]
                compares.append(cmp_mod(key, kv.mod_revision if kv else 0))
                puts.append(op_put(key, _dump({"job": job_id, "since": now})))
            ok, _ = self._fenced(job_id, compares, puts)
            return True if ok else None

        self._retry(job_id, attempt)
        if wanted:
            log.info("job %s holds %s", job_id, ", ".join(wanted))

    def _refuse_or_take_over(self, resource: str, holder_id: str) -> None:
        kv = self._get_kv(self._key("jobs", holder_id))
        holder = self._job(kv.value) if kv is not None else None
        if holder is not None and holder.state not in TERMINAL_STATES:
            raise LockConflict(resource, holder_id, holder.state.value,
                               owner_host=holder.owner_host, owner_pid=holder.owner_pid)
        log.info("taking over stale lock on %s from job %s (%s)", resource, holder_id,
                 holder.state if holder else "gone")

    def release_locks(self, job_id: str) -> None:
        mine = [kv for kv in self._prefix(self._key("locks", ""), job_id)
                if json.loads(kv.value)["job"] == job_id]
        if not mine:
            self._fenced(job_id, [], [])  # still fenced: a deposed owner learns it here
            return
        self._fenced(job_id, [cmp_mod(kv.key, kv.mod_revision) for kv in mine],
                     [op_delete(kv.key) for kv in mine])
        log.info("job %s released %d lock(s)", job_id, len(mine))

    def locks(self) -> list[LockInfo]:
        rows: list[LockInfo] = []
        base = self._key("locks", "")
        for kv in self._prefix(base):
            held = json.loads(kv.value)
            job_kv = self._get_kv(self._key("jobs", held["job"]))
            job = self._job(job_kv.value) if job_kv is not None else None
            owner = self._get_kv(self._owner_key(held["job"]))
            remaining: float | None = -1.0
            if owner is not None:
                with self._etcd():
                    remaining = float(self.client.lease_ttl(owner.lease))
            rows.append(LockInfo(kv.key[len(base):], held["job"],
                                 job.state.value if job else None,
                                 job.owner_host if job else None,
                                 job.owner_pid if job else None, float(held["since"]),
                                 remaining))
        return rows

    # lifecycle --------------------------------------------------------------------------

    def revoke_lease(self) -> None:
        """Give up ownership of everything at once (a clean exit), or let a test play
        "the lease ran out" without waiting for it."""
        self.lease.revoke()
        self._owned.clear()

    def close(self) -> None:
        if self.lease.active:
            self.revoke_lease()

    def __enter__(self) -> EtcdJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # mypy proves the class still satisfies the Protocol

    def _is_a_journal(journal: EtcdJournal) -> Journal:
        return journal
