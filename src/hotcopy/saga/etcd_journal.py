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
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from hotcopy.errors import RefusedError
from hotcopy.saga.etcd_client import (
    EtcdAuthError,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    cmp_create,
    cmp_mod,
    first_kv,
    op_delete,
    op_get,
    op_put,
)
from hotcopy.saga.etcd_lease import LeaseKeeper
from hotcopy.saga.journal import (
    OUTSTANDING,
    STEP_OUTCOMES,
    TERMINAL_STATES,
    EntryState,
    FencedOut,
    Job,
    JobNotFound,
    JobState,
    Journal,
    JournalUnavailable,
    LockConflict,
    LockInfo,
    OwnerAlive,
    Ownership,
    StepRecord,
    UndoEntry,
    dump_json,
    new_job_id,
    refuse_unless_running,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
_ATTEMPTS = 8
"""Compare failures caused by our own earlier (ambiguous) write are re-read and retried."""


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class EtcdJournal:
    """A Journal in etcd; one lease per instance (per controller process)."""

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

    # jobs ---------------------------------------------------------------------------

    @staticmethod
    def _job(raw: str) -> Job:
        fields = json.loads(raw)
        return Job(**{**fields, "state": JobState(fields["state"])})

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

    # undo entries -----------------------------------------------------------------------

    @staticmethod
    def _entry(raw: str) -> UndoEntry:
        fields = json.loads(raw)
        fields.pop("claimed_epoch", None)
        return UndoEntry(**{**fields, "state": EntryState(fields["state"])})

    def _entry_key(self, job_id: str, seq: int) -> str:
        return self._key("undo", job_id, f"{seq:08d}")

    def append_undo(
        self, job_id: str, action: str, params: Mapping[str, Any], label: str,
        step: str | None,
    ) -> UndoEntry:
        params_json = dump_json(params)
        now = time.time()
        job_key = self._key("jobs", job_id)

        def attempt() -> UndoEntry | None:
            job = self._kv.get(job_key) or self._job_kv(job_id)
            refuse_unless_running(job_id, json.loads(job.value)["state"])
            seq = self._next_seq.get(job_id) or 1 + len(
                self._prefix(self._key("undo", job_id, ""), job_id))
            value = _dump({"job_id": job_id, "seq": seq, "action": action,
                           "params": json.loads(params_json), "label": label, "step": step,
                           "state": EntryState.PENDING.value, "attempts": 0, "error": None,
                           "created": now, "finished": None})
            key = self._entry_key(job_id, seq)
            # The job's revision is compared so that its state is still "running" when
            # the entry lands: a rollback begun meanwhile never misses it.
            if self._put_cas(job_id, key, value, 0, [cmp_mod(job_key, job.mod_revision)]):
                self._next_seq[job_id] = seq + 1
                return self._entry(value)
            self._next_seq.pop(job_id, None)
            self._kv.pop(job_key, None)
            kv = self._get_kv(key, job_id)
            if kv is not None and kv.value == value:  # our own write, answered late
                self._kv[key] = kv
                self._next_seq[job_id] = seq + 1
                return self._entry(value)
            return None

        entry = self._retry(job_id, attempt)
        self._refuse_if_lease_lapsing(job_id, "making the change")
        return entry

    def _modify_entry(
        self, job_id: str, seq: int, change: Callable[[dict[str, Any]], None],
    ) -> UndoEntry:
        key = self._entry_key(job_id, seq)

        def attempt() -> UndoEntry | None:
            kv = self._kv.get(key) or self._get_kv(key, job_id)
            if kv is None:
                self._require_job(job_id)
                raise ValueError(f"job {job_id} has no undo entry #{seq}")
            entry = json.loads(kv.value)
            change(entry)
            value = _dump(entry)
            return self._entry(value) if self._put_cas(job_id, key, value,
                                                       kv.mod_revision) else None

        return self._retry(job_id, attempt)

    def claim_undo(self, job_id: str, seq: int) -> UndoEntry:
        epoch = self._owned[job_id].epoch if job_id in self._owned else 0

        def change(entry: dict[str, Any]) -> None:
            if EntryState(entry["state"]) not in OUTSTANDING:
                raise ValueError(f"undo #{seq} of job {job_id} is {entry['state']}, not "
                                 "outstanding")
            entry["claimed_epoch"] = epoch

        entry = self._modify_entry(job_id, seq, change)
        self._refuse_if_lease_lapsing(job_id, "running this undo")
        return entry

    def _refuse_if_lease_lapsing(self, job_id: str, what: str) -> None:
        """Recorded, but our lease may lapse before we act: a new owner could then act
        on the same entry at the same time. By our own clock, with a margin: stop."""
        left = self.lease_valid_for()
        if left < self.margin_s:
            raise JournalUnavailable(
                f"job {job_id}: this controller's etcd lease is valid for only {left:.1f} s "
                f"more; it stops before {what}",
                hint=f"after the lease expired, `hotcopy rollback {job_id}` from any host")

    def set_undo_state(
        self, job_id: str, seq: int, state: EntryState, *, attempts: int, error: str | None
    ) -> None:
        state = EntryState(state)
        finished = None if state is EntryState.PENDING else time.time()

        def change(entry: dict[str, Any]) -> None:
            entry.update(state=state.value, attempts=attempts, error=error, finished=finished)

        self._modify_entry(job_id, seq, change)

    def undo_entries(
        self, job_id: str, states: Collection[EntryState] | None = None
    ) -> list[UndoEntry]:
        entries = [self._entry(kv.value)
                   for kv in self._prefix(self._key("undo", job_id, ""), job_id)]
        if states is not None:
            wanted = {EntryState(s) for s in states}
            entries = [e for e in entries if e.state in wanted]
        return sorted(entries, key=lambda e: e.seq)

    # steps --------------------------------------------------------------------------

    def _step_kvs(self, job_id: str) -> list[KeyValue]:
        return self._prefix(self._key("steps", job_id, ""), job_id)

    def _own_steps(self, job_id: str) -> list[KeyValue]:
        if job_id not in self._steps_kv:
            self._steps_kv[job_id] = self._step_kvs(job_id)
        return self._steps_kv[job_id]

    def _put_step(self, job_id: str, record: dict[str, Any], n: int, revision: int) -> bool:
        key = self._key("steps", job_id, f"{n:06d}")
        kv = self._put_cas(job_id, key, _dump(record), revision)
        cached = self._steps_kv.get(job_id)
        if kv is None or cached is None:
            self._steps_kv.pop(job_id, None)
            return kv is not None
        if n <= len(cached):
            cached[n - 1] = kv
        else:
            cached.append(kv)
        return True

    def step_started(self, job_id: str, name: str) -> None:
        now = time.time()

        def attempt() -> bool | None:
            kvs = self._own_steps(job_id)
            tries = [json.loads(kv.value) for kv in kvs]
            record = {"job_id": job_id, "name": name, "started": now, "ended": None,
                      "outcome": "running", "outputs": {}, "error": None,
                      "attempt": 1 + sum(1 for t in tries if t["name"] == name)}
            return True if self._put_step(job_id, record, len(kvs) + 1, 0) else None

        self._retry(job_id, attempt)

    def step_finished(
        self, job_id: str, name: str, outcome: str,
        outputs: Mapping[str, Any] | None = None, error: str | None = None,
    ) -> None:
        if outcome not in STEP_OUTCOMES:
            raise ValueError(f"step outcome must be one of {sorted(STEP_OUTCOMES)}: {outcome!r}")
        outputs_json = dump_json(outputs or {}, "outputs")
        now = time.time()

        def attempt() -> bool | None:
            kvs = self._own_steps(job_id)
            latest = next(((n, kv) for n, kv in reversed(list(enumerate(kvs, 1)))
                           if json.loads(kv.value)["name"] == name), None)
            if latest is None:  # a step skipped without ever starting
                n, revision = len(kvs) + 1, 0
                record = {"job_id": job_id, "name": name, "started": now, "attempt": 1}
            else:
                n, kv = latest
                revision, record = kv.mod_revision, json.loads(kv.value)
            record.update(ended=None if outcome == "running" else now, outcome=outcome,
                          outputs=json.loads(outputs_json), error=error)
            return True if self._put_step(job_id, record, n, revision) else None

        self._retry(job_id, attempt)

    def steps(self, job_id: str) -> list[StepRecord]:
        latest: dict[str, tuple[int, StepRecord]] = {}
        for n, kv in enumerate(self._step_kvs(job_id), 1):
            record = StepRecord(**json.loads(kv.value))
            latest[record.name] = (n, record)
        return [record for _, record in sorted(latest.values(), key=lambda item: item[0])]

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
