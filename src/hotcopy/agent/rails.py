"""The safety rails: the reasons an automated re-seed (or failover) must wait.

Pure functions over plain data. Each rail names itself and, where the wait has an
end, until when: an operator reading ``agent status`` must see "not re-seeded again
until T, because ..." rather than an agent that silently does nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from hotcopy.agent.model import Block, FailoverRecord, Policy, ReseedRecord, RunningJob

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass(frozen=True)
class Pause:
    since: float
    by: str
    reason: str


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def paused(pause: Pause | None) -> Block | None:
    if pause is None:
        return None
    return Block("pause", f"the fleet-wide pause is on since {stamp(pause.since)} "
                          f"(by {pause.by}: {pause.reason}); `hotcopy agent resume` lifts it")


def one_per_shard(jobs: Sequence[RunningJob]) -> Block | None:
    """Two re-seeds at once on one shard could take its last healthy replicas away."""
    if not jobs:
        return None
    job = jobs[0]
    return Block("one-per-shard", f"job {job.id} ({job.kind} {job.source} -> {job.target}, "
                                  f"{job.state}) is unfinished on this shard: one re-seed per "
                                  "shard at a time")


def flap_window(target: str, history: Sequence[ReseedRecord], now: float,
                policy: Policy) -> Block | None:
    """A replica that breaks again soon after its re-seed has a cause a re-seed won't fix."""
    recent = [r for r in history if r.target == target
              and now - r.started < policy.flap_window_s]
    if not recent:
        return None
    last = max(recent, key=lambda r: r.started)
    until = last.started + policy.flap_window_s
    return Block("flap-window",
                 f"{target} was re-seeded at {stamp(last.started)} (job {last.job}, "
                 f"{last.outcome}) and broke again inside the anti-flap window of "
                 f"{policy.flap_window_s:.0f}s: not re-seeded again until {stamp(until)}; "
                 "find the cause (`hotcopy audit`), then `hotcopy agent reseed` it by hand",
                 until)


def daily_limit(history: Sequence[ReseedRecord], now: float, policy: Policy) -> Block | None:
    window = sorted(r.started for r in history if now - r.started < DAY_S)
    if len(window) < policy.max_reseeds_per_day:
        return None
    until = window[len(window) - policy.max_reseeds_per_day] + DAY_S
    return Block("max-per-day", f"{len(window)} re-seeds in the last 24 h, the limit is "
                                f"{policy.max_reseeds_per_day}: none until {stamp(until)}",
                 until)


def blocks_for(target: str, *, now: float, policy: Policy, pause: Pause | None,
               jobs: Sequence[RunningJob], history: Sequence[ReseedRecord],
               operator_marked: bool = False) -> list[Block]:
    """Every rail that holds a re-seed of ``target`` back now, most fundamental first.

    An operator's explicit mark lifts the flap window and the daily limit (a human has
    looked); it never lifts the pause or the one-job-per-shard rule.
    """
    found = [paused(pause), one_per_shard(jobs)]
    if not operator_marked:
        found += [flap_window(target, history, now, policy), daily_limit(history, now, policy)]
    return [block for block in found if block is not None]


def busy_servers(jobs: Sequence[RunningJob]) -> set[str]:
    """Servers that are the donor or the target of an unfinished job."""
    busy: set[str] = set()
    for job in jobs:
        busy.update(name for name in (job.source, job.target) if name)
    return busy


# -- automatic failover --------------------------------------------------------------


def failover_flap_window(master: str, history: Sequence[FailoverRecord], now: float,
                         policy: Policy) -> Block | None:
    """A second master death soon after a failover is a cause a failover won't fix (a
    bad host, a query that kills every master): failing over again would only burn
    through the replicas. Per shard, whichever server was master.
    """
    recent = [r for r in history if now - r.started < policy.flap_window_s]
    if not recent:
        return None
    last = max(recent, key=lambda r: r.started)
    until = last.started + policy.flap_window_s
    promoted = f", promoted {last.promoted}" if last.promoted else ""
    return Block("flap-window",
                 f"the shard was failed over automatically at {stamp(last.started)} "
                 f"(master {last.master}, job {last.job}, {last.outcome}{promoted}); "
                 f"{master} down again inside the anti-flap window of "
                 f"{policy.flap_window_s:.0f}s: no automatic failover until {stamp(until)}; "
                 "find the cause, then `hotcopy failover --config FILE` by hand", until)


def failover_daily_limit(history: Sequence[FailoverRecord], now: float,
                         policy: Policy) -> Block | None:
    window = sorted(r.started for r in history if now - r.started < DAY_S)
    if len(window) < policy.max_failovers_per_day:
        return None
    if policy.max_failovers_per_day == 0:
        return Block("max-per-day", "max_failovers_per_day is 0: no automatic failover")
    until = window[len(window) - policy.max_failovers_per_day] + DAY_S
    return Block("max-per-day", f"{len(window)} automatic failovers in the last 24 h, the "
                                f"limit is {policy.max_failovers_per_day}: none until "
                                f"{stamp(until)}", until)


def failover_blocks(master: str, *, now: float, policy: Policy, pause: Pause | None,
                    jobs: Sequence[RunningJob],
                    history: Sequence[FailoverRecord]) -> list[Block]:
    """Every rail that holds an automatic failover of ``master`` back now.

    An unfinished job of any kind holds it: a clone half done still has a replica's
    threads stopped or its datadir swapped, and a failover already under way must not
    get a second one beside it.
    """
    found = [paused(pause), one_per_shard(jobs), failover_flap_window(master, history, now,
                                                                      policy),
             failover_daily_limit(history, now, policy)]
    return [block for block in found if block is not None]
