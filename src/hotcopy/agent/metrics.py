"""The agent's Prometheus metrics: what an SRE alerts on without reading our logs.

One registry per agent (not the process-global one), so tests and several agents in
one interpreter never share counters.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from hotcopy.agent.model import Health, Observation

log = logging.getLogger(__name__)

_DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600)
_PAUSE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class AgentMetrics:
    def __init__(self, shard: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.shard = shard
        r = self.registry
        self.health = Gauge("hotcopy_replica_health", "1 for the replica's current class",
                            ["shard", "replica", "state"], registry=r)
        self.lag = Gauge("hotcopy_replica_lag_seconds", "Seconds_Behind_Master (-1 unknown)",
                         ["shard", "replica"], registry=r)
        self.master_up = Gauge("hotcopy_master_up", "1 when the shard's master is reachable",
                               ["shard"], registry=r)
        self.leader = Gauge("hotcopy_agent_leader", "1 while this agent is the leader",
                            ["shard"], registry=r)
        self.paused = Gauge("hotcopy_agent_paused", "1 while the fleet-wide pause is on",
                            ["shard"], registry=r)
        self.observe_only = Gauge("hotcopy_agent_observe_only", "1 when run with --observe-only",
                                  ["shard"], registry=r)
        self.started = Counter("hotcopy_reseeds_started", "re-seeds this agent started",
                               ["shard"], registry=r)
        self.committed = Counter("hotcopy_reseeds_committed", "re-seeds that committed",
                                 ["shard"], registry=r)
        self.rolled_back = Counter("hotcopy_reseeds_rolled_back",
                                   "re-seeds that failed and were rolled back (or need a human)",
                                   ["shard", "outcome"], registry=r)
        self.duration = Histogram("hotcopy_reseed_duration_seconds", "whole re-seed, end to end",
                                  ["shard"], buckets=_DURATION_BUCKETS, registry=r)
        self.source_lock = Histogram("hotcopy_reseed_source_lock_seconds",
                                     "writes blocked on the donor per re-seed", ["shard"],
                                     buckets=_PAUSE_BUCKETS, registry=r)
        self.source_pause = Histogram("hotcopy_reseed_source_replication_paused_seconds",
                                      "donor's SQL thread stopped per re-seed", ["shard"],
                                      buckets=_PAUSE_BUCKETS, registry=r)
        self.polls = Counter("hotcopy_agent_polls", "health polls done", ["shard"], registry=r)
        for counter in (self.started, self.committed, self.polls):
            counter.labels(shard)  # present at 0 from the first scrape

    def serve(self, address: str, port: int) -> None:
        start_http_server(port, addr=address, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", address, port)

    def observed(self, observation: Observation) -> None:
        s = self.shard
        self.polls.labels(s).inc()
        self.master_up.labels(s).set(1 if observation.master_up else 0)
        for name, replica in observation.replicas.items():
            for state in Health:
                self.health.labels(s, name, str(state)).set(1 if replica.state is state else 0)
            self.lag.labels(s, name).set(-1 if replica.lag_s is None else replica.lag_s)

    def flags(self, *, leader: bool, paused: bool, observe_only: bool) -> None:
        self.leader.labels(self.shard).set(1 if leader else 0)
        self.paused.labels(self.shard).set(1 if paused else 0)
        self.observe_only.labels(self.shard).set(1 if observe_only else 0)

    def reseed_started(self) -> None:
        self.started.labels(self.shard).inc()

    def reseed_finished(self, report: dict[str, Any], seconds: float) -> None:
        state = str(report.get("state", ""))
        if state == "committed":
            self.committed.labels(self.shard).inc()
        else:
            self.rolled_back.labels(self.shard, state or "unknown").inc()
        self.duration.labels(self.shard).observe(seconds)
        for key, histogram in (("source_lock_ms", self.source_lock),
                               ("source_replication_paused_ms", self.source_pause)):
            value = report.get(key)
            if isinstance(value, int | float):
                histogram.labels(self.shard).observe(value / 1000)
