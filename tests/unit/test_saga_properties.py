"""Property: whatever happened before a crash, a fresh process's rollback does exactly
what is owed, newest first, each undo completed at most once, nothing acknowledged lost.

A model mirrors the queue (and the transient failures injected into the undo actions)
call by call, so the test can demand the exact sequence of undo effects, not just
their set.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hotcopy.saga import (
    EntryState,
    JobState,
    Transaction,
    UndoFailed,
    undo_action,
)
from tests.etcd_cluster import EtcdCluster
from tests.journals import JournalStore, make_store

RETRIES = 3
ACTION = "test_prop.undo"


class Crash(BaseException):
    """The process dies: not an error any code path gets to handle."""


@dataclass
class World:
    effects: list[int] = field(default_factory=list)
    fails: dict[int, int] = field(default_factory=dict)
    crash_in: int | None = None  # die on the n-th undo call from now

    def reset(self) -> None:
        self.effects.clear()
        self.fails.clear()
        self.crash_in = None

    def call(self, n: int) -> None:
        if self.crash_in is not None:
            self.crash_in -= 1
            if self.crash_in == 0:
                self.crash_in = None
                raise Crash
        if self.fails.get(n, 0) > 0:
            self.fails[n] -= 1
            raise RuntimeError(f"change {n}: transient failure")
        self.effects.append(n)


WORLD = World()


@undo_action(ACTION, describe="undo change {n}")
def undo(context: Any, params: Mapping[str, Any]) -> None:
    WORLD.call(params["n"])


@dataclass
class Model:
    """What the queue must hold: seq -> (state, remaining injected failures)."""

    state: dict[int, EntryState] = field(default_factory=dict)
    fails: dict[int, int] = field(default_factory=dict)
    effects: list[int] = field(default_factory=list)
    calls: int = 0
    crash_at: int | None = None

    def run(self, seq: int) -> bool | None:
        """One undo with retries; True done, False failed, None the process died."""
        for _ in range(RETRIES):
            self.calls += 1
            if self.crash_at is not None and self.calls == self.crash_at:
                return None
            if self.fails[seq] > 0:
                self.fails[seq] -= 1
                continue
            self.effects.append(seq)
            return True
        return False

    def outstanding(self) -> list[int]:
        return sorted(s for s, st_ in self.state.items()
                      if st_ in (EntryState.PENDING, EntryState.FAILED))


push_op = st.tuples(st.just("push"), st.integers(0, 2 * RETRIES + 1))
pick_op = st.tuples(st.sampled_from(["exec", "remove"]), st.integers(0, 30))
ops_strategy = st.lists(st.one_of(push_op, push_op, pick_op), max_size=14)
ending = st.sampled_from(["between", "journaled-unacknowledged-push", "inside-exec-remove"])


def run_ops(txn: Transaction, model: Model, ops: list[tuple[str, int]]) -> None:
    for kind, arg in ops:
        if kind == "push":
            seq = txn.push(ACTION, {"n": len(model.state) + 1}, step="s")
            assert seq == len(model.state) + 1
            model.state[seq] = EntryState.PENDING
            model.fails[seq] = WORLD.fails[seq] = arg
            continue
        if not model.state:
            continue
        seq = sorted(model.state)[arg % len(model.state)]
        current = model.state[seq]
        if kind == "remove":
            if current in (EntryState.PENDING, EntryState.FAILED):
                txn.remove(seq)
                model.state[seq] = EntryState.REMOVED
            else:
                try:
                    txn.remove(seq)
                except ValueError:
                    continue
                raise AssertionError("remove of a finished entry must be refused")
            continue
        if current is not EntryState.PENDING:
            try:
                txn.exec_remove(seq)
            except ValueError:
                continue
            raise AssertionError("exec_remove of a non-pending entry must be refused")
        outcome = model.run(seq)
        try:
            txn.exec_remove(seq)
        except UndoFailed:
            assert outcome is False
            model.state[seq] = EntryState.FAILED
        else:
            assert outcome is True
            model.state[seq] = EntryState.DONE
        assert WORLD.effects == model.effects


ROLLBACK_CRASH = st.one_of(st.none(), st.integers(1, 8))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy, ending=ending, rollback_crash=ROLLBACK_CRASH)
def test_fresh_rollback_after_a_crash_does_exactly_what_is_owed(
    ops: list[tuple[str, int]], ending: str, rollback_crash: int | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store("sqlite", Path(tmp) / "state" / "journal.sqlite", None)
        check_fresh_rollback(store, ops, ending, rollback_crash)


@pytest.mark.etcd
@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=ops_strategy, ending=ending, rollback_crash=ROLLBACK_CRASH)
def test_fresh_rollback_after_a_crash_does_exactly_what_is_owed_on_etcd(
    etcd_single: EtcdCluster,
    ops: list[tuple[str, int]], ending: str, rollback_crash: int | None,
) -> None:
    store = make_store("etcd", Path("/nonexistent"), etcd_single)
    check_fresh_rollback(store, ops, ending, rollback_crash)


def check_fresh_rollback(
    store: JournalStore, ops: list[tuple[str, int]], ending: str, rollback_crash: int | None
) -> None:
    WORLD.reset()
    model = Model()
    try:
        journal = store.open()
        job_id = journal.create_job("clone", {}).id
        txn = Transaction(journal, job_id, None, retries=RETRIES, sleep=lambda _: None)
        run_ops(txn, model, ops)
        acknowledged = dict(model.state)

        if ending == "journaled-unacknowledged-push":
            # the journal write inside push() completed, then the process died
            seq = journal.append_undo(job_id, ACTION, {"n": len(model.state) + 1}, "x", None).seq
            model.state[seq] = EntryState.PENDING
            model.fails[seq] = WORLD.fails[seq] = 0
        elif ending == "inside-exec-remove" and EntryState.PENDING in model.state.values():
            seq = next(s for s, v in model.state.items() if v is EntryState.PENDING)
            WORLD.crash_in = 1  # dies in the undo, before its effect
            try:
                txn.exec_remove(seq)
            except Crash:
                pass
            else:
                raise AssertionError("the crash did not happen")
        owed_at_crash = set(model.outstanding())
        before_rollback = len(WORLD.effects)
        del txn  # abandoned: nothing is closed or flushed, as in a SIGKILL
        store.crash(journal)  # etcd: its lease runs out, so a fresh process may take over

        rounds = 0
        if rollback_crash is not None and model.outstanding():
            # a first rollback process dies too, part way through
            WORLD.crash_in = rollback_crash
            model.crash_at = model.calls + rollback_crash
            died = False
            for seq in reversed(model.outstanding()):
                outcome = model.run(seq)
                if outcome is None:
                    died = True
                    break
                model.state[seq] = EntryState.DONE if outcome else EntryState.FAILED
            model.crash_at = None
            fresh = store.open()
            try:
                Transaction(fresh, job_id, None, retries=RETRIES, sleep=lambda _: None).rollback()
            except Crash:
                assert died
            else:
                assert not died
                rounds += 1
            store.crash(fresh)
            event(f"first rollback process died: {died}")
            WORLD.crash_in = None
            assert WORLD.effects == model.effects

        while True:
            fresh = store.open()
            entries = fresh.undo_entries(job_id)
            # nothing acknowledged is lost, and its params are intact
            assert {e.seq for e in entries} >= set(acknowledged)
            assert all(e.params == {"n": e.seq} and e.action == ACTION for e in entries)
            owed = model.outstanding()
            assert [e.seq for e in entries if e.outstanding] == owed
            start = len(WORLD.effects)
            report = Transaction(fresh, job_id, None, retries=RETRIES,
                                 sleep=lambda _: None).rollback()
            for seq in reversed(owed):
                model.state[seq] = EntryState.DONE if model.run(seq) else EntryState.FAILED
            this_round = WORLD.effects[start:]
            assert this_round == model.effects[start:]
            assert this_round == sorted(this_round, reverse=True)  # LIFO
            assert [e.seq for e in report.done] == this_round
            rounds += 1
            if report.complete:
                break
            assert fresh.get_job(job_id).state is JobState.ROLLBACK_INCOMPLETE
            assert rounds < 10
            store.crash(fresh)

        event(f"ending: {ending}")
        event(f"rollback rounds needed: {rounds}")
        assert fresh.get_job(job_id).state is JobState.ROLLED_BACK
        assert fresh.undo_entries(job_id, [EntryState.PENDING, EntryState.FAILED]) == []
        rolled_back = WORLD.effects[before_rollback:]
        assert len(rolled_back) == len(set(rolled_back))  # each completed at most once
        assert set(rolled_back) == owed_at_crash  # exactly what was owed, all of it
    finally:
        store.close_all()
