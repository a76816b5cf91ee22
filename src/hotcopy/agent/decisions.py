"""What the leader does about the shard it observed: pure functions, reasons recorded.

Only a broken replica is ever re-seeded, from the healthiest donor, and only when no
rail holds it back. A master that is down stops every decision: the replicas then all
look unwell, and re-seeding them from each other would only destroy evidence failover
needs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hotcopy.agent import rails
from hotcopy.agent.model import (
    Decision,
    Health,
    Observation,
    Policy,
    ReplicaHealth,
    ReseedRecord,
    RunningJob,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DonorChoice:
    donor: str | None
    reasons: list[str]
    rejected: dict[str, str]


def _rejection(candidate: ReplicaHealth, master: str | None, busy: set[str],
               major: str) -> str | None:
    """Why ``candidate`` cannot be the donor, or None; the first reason found wins."""
    audit = ("it is not crash-safe (`hotcopy audit`)" if candidate.crash_safe is False
             else "its crash-safety audit did not run")
    checks = [
        (candidate.name == master, "it is the master"),
        (candidate.state is not Health.HEALTHY,
         f"it is {candidate.state}: {'; '.join(candidate.reasons)}"),
        (candidate.io_running != "Yes" or candidate.sql_running != "Yes",
         "it is not replicating"),
        (candidate.lag_s is None, "its lag is unknown"),
        (candidate.name in busy, "it is the donor or target of another job"),
        (candidate.crash_safe is not True, audit),
        (bool(major) and candidate.major != major,
         f"it runs {candidate.major}, the target needs {major}"),
    ]
    return next((why for failed, why in checks if failed), None)


def choose_donor(target: ReplicaHealth, observation: Observation, busy: set[str],
                 policy: Policy, *, master_major: str = "") -> DonorChoice:
    """The healthiest replica of the shard whose datadir fits on the target."""
    major = target.major or master_major
    rejected: dict[str, str] = {}
    fits: list[ReplicaHealth] = []
    for name, candidate in sorted(observation.replicas.items()):
        if name == target.name:
            continue
        why = _rejection(candidate, observation.master, busy, major)
        if why is None and target.free_bytes is not None and candidate.datadir_bytes is not None:
            need = int(candidate.datadir_bytes * (1 + policy.free_space_margin))
            if target.free_bytes < need:
                why = (f"its {candidate.datadir_bytes} bytes of data "
                       f"(+{policy.free_space_margin:.0%}) do not fit in the target's "
                       f"{target.free_bytes} free bytes")
        if why is None:
            fits.append(candidate)
        else:
            rejected[name] = why
    if not fits:
        return DonorChoice(None, ["no replica of the shard can be the donor"], rejected)
    best = min(fits, key=lambda c: (c.lag_s or 0, c.name))
    reasons = [f"{best.name} replicates, {best.lag_s}s behind the master (least lag of "
               f"{len(fits)} eligible)", "crash-safe", f"same major version {best.major or '?'}",
               "not the master and in no other job"]
    if target.free_bytes is not None and best.datadir_bytes is not None:
        reasons.append(f"its {best.datadir_bytes} bytes fit in the target's "
                       f"{target.free_bytes} free bytes")
    return DonorChoice(best.name, reasons, rejected)


def decide(observation: Observation, *, policy: Policy, pause: rails.Pause | None,
           jobs: Sequence[RunningJob], history: Sequence[ReseedRecord],
           observe_only: bool, master_major: str = "") -> list[Decision]:
    """One decision per broken replica (or one for a master that is down)."""
    now = observation.at
    if not observation.master_up:
        return [Decision("master-down", observation.master,
                         [*observation.master_reasons,
                          "no replica is re-seeded while the master is down (failover's "
                          "business)"], now, observe_only=observe_only)]
    decisions: list[Decision] = []
    pending = list(jobs)
    busy = rails.busy_servers(jobs)
    for name, health in sorted(observation.replicas.items()):
        if health.state is not Health.BROKEN:
            continue
        blocks = rails.blocks_for(name, now=now, policy=policy, pause=pause, jobs=pending,
                                  history=history, operator_marked=health.marked)
        if blocks:
            first = blocks[0]
            decisions.append(Decision("blocked", name, [*health.reasons,
                                                        *(b.reason for b in blocks)], now,
                                      until=first.until, rail=first.rail,
                                      observe_only=observe_only))
            continue
        choice = choose_donor(health, observation, busy, policy, master_major=master_major)
        if choice.donor is None:
            decisions.append(Decision("no-donor", name, [*health.reasons, *choice.reasons],
                                      now, observe_only=observe_only,
                                      rejected_donors=choice.rejected))
            continue
        decisions.append(Decision("reseed", name, [*health.reasons, *choice.reasons], now,
                                  donor=choice.donor, observe_only=observe_only,
                                  rejected_donors=choice.rejected))
        # The re-seed just decided counts as this shard's one job for the rest of the poll.
        pending.append(RunningJob("(deciding)", "clone", "decided", choice.donor, name, True))
        busy.update({choice.donor, name})
    return decisions


def takeover(job_id: str, step_outcomes: Mapping[str, str],
             outstanding_steps: set[str]) -> tuple[str, str]:
    """resume or rollback for a job whose controller is gone, and why.

    Resume only when the copy is worth keeping: the snapshot still exists (its undo
    is outstanding) and the transfer was under way; anything earlier costs the source
    another millisecond pause at most, so rolling back and starting over is simpler.
    """
    transfer_started = any(step_outcomes.get(s) in ("running", "done", "failed")
                           for s in ("serve", "pull"))
    snapshot_kept = "snapshot" in outstanding_steps
    past_copy = step_outcomes.get("drop_snapshot") == "done"
    if past_copy:
        return "resume", (f"job {job_id} had copied the data and dropped the snapshot: "
                          "resuming finishes the target")
    if snapshot_kept and transfer_started:
        return "resume", (f"job {job_id}'s snapshot still exists and its transfer was under "
                          "way: resuming keeps what was copied")
    why = "its snapshot is gone" if not snapshot_kept else "its transfer had not started"
    return "rollback", f"job {job_id}: {why}; rolling back restores every host"
