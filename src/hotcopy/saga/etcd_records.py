"""The etcd journal's undo entries and step records, on top of EtcdStore's fenced writes.

An undo entry is written before its change is made; its put compares the job's revision
too, so a rollback that began meanwhile (the job left "running") never misses an entry.
Before the caller acts on a recorded entry, the lease must still be valid for a margin
by our own clock, or another controller could act on the same entry at the same time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from hotcopy.saga.etcd_client import KeyValue, cmp_mod
from hotcopy.saga.etcd_store import EtcdStore, _dump
from hotcopy.saga.journal import (
    OUTSTANDING,
    STEP_OUTCOMES,
    EntryState,
    StepRecord,
    UndoEntry,
    dump_json,
    refuse_unless_running,
)

log = logging.getLogger(__name__)


class EtcdRecords(EtcdStore):
    """Undo entries (``undo/ID/SEQ``) and step attempts (``steps/ID/N``)."""

    # undo entries -----------------------------------------------------------------------

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

    def ensure_may_act(self, job_id: str, what: str) -> None:
        self._refuse_if_lease_lapsing(job_id, what)

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
