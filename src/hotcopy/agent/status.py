"""`hotcopy agent status`: assembled from the store and the journal, not from an agent.

It must answer when no agent runs (that is when an operator asks most): the leader's
last published poll, every agent's heartbeat, the pause, the decisions, the flap
windows (computed from the re-seed history, so they are right even if the leader is
gone) and the unfinished job with its current step and the bytes copied so far.
"""

from __future__ import annotations

import logging
from typing import Any

from hotcopy.agent import rails
from hotcopy.agent.loop import policy_of, unfinished
from hotcopy.agent.store import AgentStore
from hotcopy.config import Config
from hotcopy.saga import Journal

log = logging.getLogger(__name__)


def flap_windows(config: Config, store: AgentStore, now: float) -> list[dict[str, Any]]:
    policy = policy_of(config)
    history = store.reseeds(now - policy.flap_window_s)
    windows: dict[str, dict[str, Any]] = {}
    for record in history:
        block = rails.flap_window(record.target, history, now, policy)
        if block is not None:
            windows[record.target] = {"replica": record.target, "until": block.until,
                                      "until_utc": rails.stamp(block.until or now),
                                      "last_job": record.job, "last_outcome": record.outcome,
                                      "reason": block.reason}
    return list(windows.values())


def failovers(config: Config, store: AgentStore, now: float) -> tuple[list[dict[str, Any]],
                                                                      dict[str, Any] | None]:
    """The automatic failovers of the last day, and the anti-flap window they hold open
    (the shard's next automatic failover waits until its end)."""
    policy = policy_of(config)
    history = store.failovers(now - max(rails.DAY_S, policy.flap_window_s))
    records = [{**vars(r), "started_utc": rails.stamp(r.started)} for r in history]
    current = history[-1].promoted or "its master" if history else "its master"
    block = rails.failover_flap_window(current, history, now, policy)
    window = None if block is None else {"until": block.until, "reason": block.reason,
                                         "until_utc": rails.stamp(block.until or now)}
    return records, window


def _pause_text(pause: rails.Pause) -> str:
    block = rails.paused(pause)
    return block.reason if block is not None else ""


def build(config: Config, store: AgentStore, journal: Journal, now: float) -> dict[str, Any]:
    pause = store.pause()
    leader = store.leader(now)
    published = store.status() or {}
    jobs = []
    for job in unfinished(journal):
        steps = journal.steps(job.id)
        current = steps[-1] if steps else None
        jobs.append({"job": job.id, "kind": job.kind, "state": str(job.state),
                     "source": job.params.get("source"), "target": job.params.get("target"),
                     "controller": {"host": job.owner_host, "pid": job.owner_pid},
                     "step": current.name if current else None,
                     "step_outcome": current.outcome if current else None,
                     "steps_done": sum(1 for s in steps if s.outcome == "done"),
                     # What the copy recorded in the journal (as `hotcopy show` reads it):
                     # an operator sees the bytes so far also when the leader is gone.
                     "bytes_done": job.info.get("progress_bytes"),
                     "bytes_expected": job.info.get("progress_total"),
                     "progress_at": job.info.get("progress_at")})
    ttl = config.agent.lease_ttl_s
    agents = [{**a, "alive": now - float(a["seen"]) < max(3 * config.agent.interval_s, ttl)}
              for a in store.agents()]
    observation = published.get("observation") or {}
    failover_history, failover_window = failovers(config, store, now)
    return {
        "shard": config.shard.name,
        "at": now,
        "leader": None if leader is None else {"id": leader[0], "lease_expires": leader[1]},
        "agents": agents,
        "paused": pause is not None,
        "pause": None if pause is None else {"since": pause.since, "by": pause.by,
                                             "reason": pause.reason,
                                             "text": _pause_text(pause)},
        "observed_at": published.get("at"),
        "master": observation.get("master"),
        "master_up": observation.get("master_up"),
        "master_reasons": observation.get("master_reasons", []),
        "replicas": observation.get("replicas", {}),
        "current_decisions": published.get("current_decisions", []),
        "observe_only": published.get("observe_only"),
        "worker": published.get("worker"),
        "jobs": jobs,
        "decisions": store.decisions(20),
        "flap_windows": flap_windows(config, store, now),
        "auto_failover": config.agent.auto_failover,
        "failovers": failover_history,
        "failover_window": failover_window,
        "marks": store.marks(),
    }
