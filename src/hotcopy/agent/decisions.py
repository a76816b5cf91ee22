"""What the leader does about the shard it observed: pure functions, reasons recorded.

Only a broken replica is ever re-seeded, from the healthiest donor, and only when no
rail holds it back. A master that is down stops every decision: the replicas then all
look unwell, and re-seeding them from each other would only destroy evidence failover
needs.

That master is reported, and failed over only when ``agent.auto_failover`` is on, it
has been seen down in every poll for ``failover_after_s``, and no rail holds it back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hotcopy.agent import rails
from hotcopy.agent.model import (
    Decision,
    FailoverRecord,
    Health,
    Observation,
    Policy,
    ReplicaHealth,
    ReseedRecord,
    RunningJob,
)
from hotcopy.space import space_needed

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
            need = space_needed(candidate.datadir_bytes, policy.free_space_margin)
            if target.free_bytes < need:
                why = (f"its {candidate.datadir_bytes} bytes of data "
                       f"(+{need - candidate.datadir_bytes} free, the preflight's rule) do "
                       f"not fit in the target's {target.free_bytes} free bytes")
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


#: (name, reasons): who the failover workflow would promote now, or None and why not.
Candidate = tuple[str | None, list[str]]


def master_seen_down(observation: Observation) -> bool:
    """Down as failover's detection needs it: no SQL from here *and* no reachable
    replica's IO thread connected (one that is means the master lives, seen from it)."""
    reachable = [r for r in observation.replicas.values() if r.sql_reachable]
    return (observation.master is not None and not observation.master_up and bool(reachable)
            and all(r.io_running != "Yes" for r in reachable))


def down_since(previous: float | None, observation: Observation) -> float | None:
    """When the master was first seen down in an unbroken run of polls; a master seen
    answering (or alive from any replica) starts the count again."""
    if not master_seen_down(observation):
        return None
    return observation.at if previous is None else previous


def _by_hand(config_path: str) -> str:
    return (f"to fail over by hand: `hotcopy failover --config {config_path} --dry-run`, "
            f"then `hotcopy failover --config {config_path} --yes`")


def _waiting(observation: Observation, policy: Policy, since: float | None,
             config_path: str) -> tuple[list[str], float | None] | None:
    """Why a master that is not up is only reported (reasons, until), or None when an
    automatic failover is due (subject to the rails)."""
    master = observation.master
    if master is None:
        return ["no configured server is identified as the master: nothing to fail over"], None
    if since is None or not master_seen_down(observation):
        alive = sorted(n for n, r in observation.replicas.items() if r.io_running == "Yes")
        return [f"{master} looks alive from {', '.join(alive)} (IO thread connected): not "
                "failed over" if alive else "no reachable replica to ask: not failed over"], None
    down = f"{master} seen down in every poll since {rails.stamp(since)} " \
           f"({observation.at - since:.0f}s)"
    if not policy.auto_failover:
        return [down, "not failed over automatically: agent.auto_failover is off",
                _by_hand(config_path)], None
    if observation.at - since < policy.failover_after_s:
        until = since + policy.failover_after_s
        return [down, f"failed over automatically at {rails.stamp(until)} if still down "
                      f"(agent.failover_after_s = {policy.failover_after_s:g})"], until
    return None


def decide_master(observation: Observation, *, policy: Policy, since: float | None,
                  pause: rails.Pause | None, jobs: Sequence[RunningJob],
                  history: Sequence[FailoverRecord], candidate: Candidate | None,
                  observe_only: bool, config_path: str = "FILE") -> Decision:
    """The one decision about a master that is not up: report, wait, hold back, or fail
    over (to the candidate the workflow would choose)."""
    now, master = observation.at, observation.master
    reasons = [*observation.master_reasons,
               "no replica is re-seeded while the master is down (failover's business)"]
    waiting = _waiting(observation, policy, since, config_path)
    if waiting is not None:
        return Decision("master-down", master, [*reasons, *waiting[0]], now, until=waiting[1],
                        observe_only=observe_only, since=since)
    assert master is not None and since is not None
    reasons.append(f"{master} seen down in every poll since {rails.stamp(since)} "
                   f"({now - since:.0f}s), longer than agent.failover_after_s = "
                   f"{policy.failover_after_s:g}")
    blocks = rails.failover_blocks(master, now=now, policy=policy, pause=pause, jobs=jobs,
                                   history=history)
    if blocks:
        first = blocks[0]
        return Decision("blocked", master, [*reasons, *(b.reason for b in blocks)], now,
                        until=first.until, rail=first.rail, observe_only=observe_only,
                        since=since)
    unreachable = sorted(n for n, r in observation.replicas.items() if not r.sql_reachable)
    name, why = candidate if candidate is not None else (None, ["no candidate was read"])
    if unreachable:
        name, why = None, [f"replica(s) {', '.join(unreachable)} unreachable: failover asks "
                           "every replica before it promotes one; not failed over"]
    if name is None:
        return Decision("no-candidate", master, [*reasons, *why, _by_hand(config_path)], now,
                        observe_only=observe_only, since=since)
    return Decision("failover", master, [*reasons, *why], now, candidate=name,
                    observe_only=observe_only, since=since)


def decide(observation: Observation, *, policy: Policy, pause: rails.Pause | None,
           jobs: Sequence[RunningJob], history: Sequence[ReseedRecord],
           observe_only: bool, master_major: str = "", since: float | None = None,
           failovers: Sequence[FailoverRecord] = (), candidate: Candidate | None = None,
           config_path: str = "FILE") -> list[Decision]:
    """One decision per broken replica (or one for a master that is down)."""
    now = observation.at
    if not observation.master_up:
        return [decide_master(observation, policy=policy, since=since, pause=pause, jobs=jobs,
                              history=failovers, candidate=candidate,
                              observe_only=observe_only, config_path=config_path)]
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
        return "resume", (f"job {job_id} had copied the data and swapped it in: "
                          "resuming finishes the target")
    if snapshot_kept and transfer_started:
        return "resume", (f"job {job_id}'s snapshot still exists and its transfer was under "
                          "way: resuming keeps what was copied")
    why = "its snapshot is gone" if not snapshot_kept else "its transfer had not started"
    return "rollback", f"job {job_id}: {why}; rolling back restores every host"


def takeover_promotion(job_id: str, *, passed_point_of_no_return: bool,
                       attention: str | None) -> tuple[str, str]:
    """resume, rollback or attention for a failover (or switchover) whose controller is gone.

    Past the point of no return a new master takes writes: undoing it would split the
    shard's history, so the job is finished. Before it, every change is undone. A job
    that already stopped for attention is left to a human: resuming it again and again
    from every poll would repeat whatever failed.
    """
    if attention:
        return "attention", (f"job {job_id} stopped past its point of no return and needs "
                             f"a human: {attention.splitlines()[0]}")
    if passed_point_of_no_return:
        return "resume", (f"job {job_id} had passed the point of no return (a new master is "
                          "writable): resuming finishes it")
    return "rollback", (f"job {job_id} had not promoted anyone: rolling back puts every "
                        "replica back as it was")
