"""The agent store in etcd, beside the journal: agents on several hosts share it.

The leader key is the election: it is created with a create-if-absent txn and bound to
the candidate's own lease, so it vanishes with that lease. A leader that cannot renew
its lease (etcd unreachable, lease expired) is no leader from that moment: ``campaign``
answers False and the loop does nothing until it wins again. Every other key is plain
data (pause, marks, decisions, re-seed history, status), so it survives every agent.

The leader's lease is renewed by a thread of its own, every third of the TTL, not only
at each poll: a poll that reaches four hosts over ssh and audits them can take longer
than the TTL, and a lease renewed only per poll then expires in every poll; the
leadership passed round the agents and none ever acted (found by the netns test). The
thread stops renewing when the loop has not campaigned for ``STALL_S``: a hung loop
must not keep the leadership from a live agent for ever.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from hotcopy.agent.model import FailoverRecord, ReseedRecord
from hotcopy.agent.rails import Pause
from hotcopy.saga.etcd_client import (
    EtcdClient,
    EtcdError,
    KeyValue,
    b64,
    cmp_create,
    first_kv,
    op_delete,
    op_get,
    op_put,
    prefix_end,
)

log = logging.getLogger(__name__)

KEEP_DECISIONS = 500
#: A loop that has not campaigned for this long is hung: its lease is left to expire.
STALL_S = 120.0


class EtcdAgentStore:
    def __init__(self, client: EtcdClient, shard: str, *, prefix: str = "/hotcopy",
                 lease_ttl_s: float = 15) -> None:
        self.client = client
        self.base = f"{prefix.rstrip('/')}/agent/{shard}/"
        self.ttl = max(2, round(lease_ttl_s))
        self._lease = 0
        self._campaigned = time.monotonic()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def _k(self, *parts: str) -> str:
        return self.base + "/".join(parts)

    def _get(self, key: str) -> Any:
        kv = self.client.get(self._k(key))
        return None if kv is None else json.loads(kv.value)

    def _put(self, key: str, value: Any, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": b64(self._k(key)),
                                "value": b64(json.dumps(value, default=str))}
        if lease:
            body["lease"] = str(lease)
        self.client.call("/v3/kv/put", body)

    def _delete(self, key: str) -> None:
        self.client.call("/v3/kv/deleterange", {"key": b64(self._k(key))})

    def _values(self, prefix: str) -> list[tuple[str, Any]]:
        start = self._k(prefix)
        return [(kv.key[len(start):], json.loads(kv.value))
                for kv in self.client.get_prefix(start)]

    # pause, marks -------------------------------------------------------------------

    def pause(self) -> Pause | None:
        value = self._get("pause")
        return None if value is None else Pause(value["since"], value["by"], value["reason"])

    def set_pause(self, pause: Pause | None) -> None:
        if pause is None:
            self._delete("pause")
        else:
            self._put("pause", {"since": pause.since, "by": pause.by, "reason": pause.reason})

    def marks(self) -> dict[str, str]:
        return {name: str(text) for name, text in self._values("marks/")}

    def mark(self, name: str, text: str) -> None:
        self._put(f"marks/{name}", text)

    def unmark(self, name: str) -> None:
        self._delete(f"marks/{name}")

    # decisions, history -------------------------------------------------------------

    def record_decision(self, decision: dict[str, Any]) -> None:
        self._put(f"decisions/{time.time_ns():020d}", decision)
        self._trim("decisions/", KEEP_DECISIONS)

    def _trim(self, prefix: str, keep: int) -> None:
        start = self._k(prefix)
        answer = self.client.call("/v3/kv/range", {"key": b64(start),
                                                   "range_end": prefix_end(start),
                                                   "count_only": True})
        extra = int(answer.get("count", 0)) - keep
        if extra <= 0:
            return
        oldest = self.client.call("/v3/kv/range", {
            "key": b64(start), "range_end": prefix_end(start), "keys_only": True,
            "sort_order": "ASCEND", "sort_target": "KEY", "limit": extra})
        for raw in oldest.get("kvs") or []:
            self.client.call("/v3/kv/deleterange", {"key": raw["key"]})

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        start = self._k("decisions/")
        answer = self.client.call("/v3/kv/range", {
            "key": b64(start), "range_end": prefix_end(start), "sort_order": "DESCEND",
            "sort_target": "KEY", "limit": limit})
        return [json.loads(KeyValue.parse(raw).value) for raw in answer.get("kvs") or []]

    def record_reseed(self, record: ReseedRecord) -> int:
        rowid = time.time_ns()
        self._put(f"reseeds/{rowid:020d}", vars(record))
        return rowid

    def update_reseed(self, rowid: int, *, job: str | None, outcome: str) -> None:
        key = f"reseeds/{rowid:020d}"
        value = self._get(key) or {}
        value.update({"outcome": outcome, **({"job": job} if job else {})})
        self._put(key, value)

    def reseeds(self, since: float) -> list[ReseedRecord]:
        records = [ReseedRecord(**value) for _, value in self._values("reseeds/")]
        return sorted((r for r in records if r.started >= since), key=lambda r: r.started)

    def record_failover(self, record: FailoverRecord) -> int:
        rowid = time.time_ns()
        self._put(f"failovers/{rowid:020d}", vars(record))
        return rowid

    def update_failover(self, rowid: int, *, job: str | None, outcome: str,
                        promoted: str | None) -> None:
        key = f"failovers/{rowid:020d}"
        value = self._get(key) or {}
        value.update({"outcome": outcome, **({"job": job} if job else {}),
                      **({"promoted": promoted} if promoted else {})})
        self._put(key, value)

    def failovers(self, since: float) -> list[FailoverRecord]:
        records = [FailoverRecord(**value) for _, value in self._values("failovers/")]
        return sorted((r for r in records if r.started >= since), key=lambda r: r.started)

    # agents, status -----------------------------------------------------------------

    def heartbeat(self, agent_id: str, info: dict[str, Any], now: float) -> None:
        self._put(f"agents/{agent_id}", {"seen": now, **info})

    def agents(self) -> list[dict[str, Any]]:
        return [{"id": agent_id, **value} for agent_id, value in self._values("agents/")]

    def put_status(self, status: dict[str, Any]) -> None:
        self._put("status", status)

    def status(self) -> dict[str, Any] | None:
        value = self._get("status")
        return value if isinstance(value, dict) else None

    # election -----------------------------------------------------------------------

    def campaign(self, agent_id: str, ttl_s: float, now: float) -> bool:
        """Leader iff the leader key holds our id on our live lease, after this call."""
        key = self._k("leader")
        self._campaigned = time.monotonic()
        try:
            if self._lease and self.client.lease_keepalive(self._lease) <= 0:
                # Stop acting now; campaign afresh at the next poll like any other agent.
                log.warning("agent %s lost its etcd lease: not the leader any more", agent_id,
                            extra={"event": "lease-lost"})
                self._lease = 0
                return False
            if not self._lease:
                self._lease, _ = self.client.lease_grant(self.ttl)
            value = json.dumps({"id": agent_id, "since": now})
            won, responses = self.client.txn([cmp_create(key, 0)],
                                             [op_put(key, value, self._lease)], [op_get(key)])
            if won:
                log.info("agent %s is the leader", agent_id, extra={"event": "elected"})
                self._keep(self._lease)
                return True
            current = first_kv(responses[0]) if responses else None
            return (current is not None and current.lease == self._lease
                    and json.loads(current.value).get("id") == agent_id)
        except EtcdError as exc:
            log.warning("agent %s cannot reach etcd (%s): not acting", agent_id, exc,
                        extra={"event": "etcd-unreachable"})
            return False

    def _keep(self, lease: int) -> None:
        """Renew our lease in the background from now on, while the loop is alive."""
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep_alive, daemon=True,
                                            name=f"agent-lease-{lease:x}")
            self._keeper.start()

    def _keep_alive(self) -> None:
        """Lives as long as the store; renews whichever lease is ours (none: nothing)."""
        stalled = False
        while not self._stop.wait(self.ttl / 3):
            lease = self._lease
            if not lease:
                continue  # lost or not won: campaign() decides, not this thread
            if time.monotonic() - self._campaigned > STALL_S:
                if not stalled:
                    log.warning("the agent loop has not polled for %.0fs: no longer renewing "
                                "its leader lease", STALL_S, extra={"event": "loop-stalled"})
                stalled = True
                continue
            stalled = False
            try:
                self.client.lease_keepalive(lease)  # expired: the next campaign says so
            except EtcdError as exc:
                log.warning("renewing the leader lease: %s", exc,
                            extra={"event": "etcd-unreachable"})

    def leader(self, now: float) -> tuple[str, float] | None:
        kv = self.client.get(self._k("leader"))
        if kv is None:
            return None
        left = self.client.lease_ttl(kv.lease) if kv.lease else -1
        return str(json.loads(kv.value).get("id")), now + max(left, 0)

    def resign(self, agent_id: str) -> None:
        key = self._k("leader")
        try:
            kv = self.client.get(key)
            if kv is not None and kv.lease == self._lease and self._lease:
                self.client.txn([{"key": b64(key), "target": "LEASE", "result": "EQUAL",
                                  "lease": str(self._lease)}], [op_delete(key)])
            if self._lease:
                self.client.lease_revoke(self._lease)
        except EtcdError as exc:
            log.warning("resigning: %s (the lease expires by itself)", exc)
        self._lease = 0
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._lease = 0
