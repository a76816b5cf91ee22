"""The agent store and election on a real etcd (one member): one leader key, one holder."""

from __future__ import annotations

import time

import pytest

from hotcopy.agent import etcd_store
from hotcopy.agent.etcd_store import EtcdAgentStore
from hotcopy.agent.model import FailoverRecord, ReseedRecord
from hotcopy.agent.rails import Pause
from hotcopy.saga.etcd_client import EtcdClient
from tests.etcd_cluster import EtcdCluster, unique_prefix

pytestmark = pytest.mark.etcd


def store(etcd: EtcdCluster, prefix: str) -> EtcdAgentStore:
    return EtcdAgentStore(EtcdClient(etcd.endpoints, timeout_s=2, rounds=2), "s1",
                          prefix=prefix, lease_ttl_s=2)


def test_one_leader_and_a_lost_lease_stops_acting_at_once(etcd_single: EtcdCluster) -> None:
    prefix = unique_prefix()
    a, b, c = store(etcd_single, prefix), store(etcd_single, prefix), store(etcd_single, prefix)
    now = time.time()
    assert a.campaign("a", 2, now)
    assert not b.campaign("b", 2, now) and not c.campaign("c", 2, now)
    assert a.campaign("a", 2, now)  # renewed
    leader = a.leader(now)
    assert leader is not None and leader[0] == "a"

    a.client.lease_revoke(a._lease)  # the lease is gone behind a's back (expired, revoked)
    assert not a.campaign("a", 2, now), "a leader whose lease is gone must stop at once"
    winners = [s for s, name in ((b, "b"), (c, "c"), (a, "a")) if s.campaign(name, 2, now)]
    assert winners == [b]
    leader = c.leader(now)
    assert leader is not None and leader[0] == "b"

    b.resign("b")
    assert a.leader(now) is None
    assert c.campaign("c", 2, now) and not a.campaign("a", 2, now)
    for s in (a, c):
        s.resign("x")


def test_a_dead_leader_is_replaced_after_its_ttl(etcd_single: EtcdCluster) -> None:
    prefix = unique_prefix()
    dead, alive = store(etcd_single, prefix), store(etcd_single, prefix)
    assert dead.campaign("dead", 2, time.time())
    assert not alive.campaign("alive", 2, time.time())
    dead.close()  # its process is gone: nothing renews its lease any more (not revoked)
    deadline = time.monotonic() + 15  # the dead one never renews: etcd expires its lease
    while not alive.campaign("alive", 2, time.time()):
        assert time.monotonic() < deadline, "the leader key outlived its lease"
        time.sleep(0.2)
    leader = alive.leader(time.time())
    assert leader is not None and leader[0] == "alive"
    alive.resign("alive")


def test_a_leader_busy_longer_than_its_ttl_stays_leader(etcd_single: EtcdCluster) -> None:
    """A poll over ssh can outlast the TTL: the lease is renewed meanwhile, not lost."""
    prefix = unique_prefix()
    busy, other = store(etcd_single, prefix), store(etcd_single, prefix)
    assert busy.campaign("busy", 2, time.time())
    time.sleep(3 * 2)  # three TTLs without a campaign: one poll that took that long
    assert not other.campaign("other", 2, time.time())
    assert busy.campaign("busy", 2, time.time()), "the leader lost its lease mid-poll"
    busy.resign("busy")
    other.resign("other")


def test_a_hung_loop_gives_the_leadership_up(etcd_single: EtcdCluster,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_store, "STALL_S", 1.0)
    prefix = unique_prefix()
    hung, alive = store(etcd_single, prefix), store(etcd_single, prefix)
    assert hung.campaign("hung", 2, time.time())
    deadline = time.monotonic() + 15  # the keeper stops after STALL_S; then the TTL runs
    while not alive.campaign("alive", 2, time.time()):
        assert time.monotonic() < deadline, "a hung loop kept the leadership"
        time.sleep(0.2)
    assert not hung.campaign("hung", 2, time.time())
    alive.resign("alive")
    hung.close()


def test_pause_marks_history_and_decisions_are_shared(etcd_single: EtcdCluster,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = unique_prefix()
    one, two = store(etcd_single, prefix), store(etcd_single, prefix)
    one.set_pause(Pause(1.0, "dba@h", "night"))
    assert two.pause() == Pause(1.0, "dba@h", "night")
    two.set_pause(None)
    assert one.pause() is None
    one.mark("r1", "disk replaced")
    assert two.marks() == {"r1": "disk replaced"}
    two.unmark("r1")
    assert one.marks() == {}
    row = one.record_reseed(ReseedRecord("r1", "r2", None, 100.0))
    two.update_reseed(row, job="j1", outcome="committed")
    assert one.reseeds(50.0) == [ReseedRecord("r1", "r2", "j1", 100.0, "committed")]
    assert one.reseeds(150.0) == []
    row = one.record_failover(FailoverRecord("m", "r1", None, 100.0))
    two.update_failover(row, job="j2", outcome="committed", promoted="r1")
    assert one.failovers(50.0) == [FailoverRecord("m", "r1", "j2", 100.0, "committed", "r1")]
    assert two.failovers(150.0) == []
    monkeypatch.setattr(etcd_store, "KEEP_DECISIONS", 3)
    for i in range(5):
        one.record_decision({"n": i})
    assert [d["n"] for d in two.decisions(10)] == [4, 3, 2]
