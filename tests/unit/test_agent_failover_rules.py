"""Automatic failover's rules over plain data: when the agent reports, waits, holds back
or fails a dead master over, and that every rail holds whatever the shard looks like."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hotcopy.agent import decisions, rails
from hotcopy.agent.model import (
    Decision,
    FailoverRecord,
    Health,
    Observation,
    Policy,
    ReplicaHealth,
    RunningJob,
)
from hotcopy.agent.store import SqliteAgentStore

NOW = 1_800_000_000.0
AUTO = Policy(flap_window_s=3600, auto_failover=True, failover_after_s=30,
              max_failovers_per_day=2)
CANDIDATE: decisions.Candidate = ("r1", ["candidate r1 has every GTID r2 has"])


def replica(name: str, io: str = "Connecting", reachable: bool = True) -> ReplicaHealth:
    return ReplicaHealth(name, Health.LAGGING if reachable else Health.UNREACHABLE,
                         sql_reachable=reachable, io_running=io if reachable else "",
                         sql_running="Yes" if reachable else "")


def dead(at: float = NOW, *replicas: ReplicaHealth) -> Observation:
    shard = replicas or (replica("r1"), replica("r2"))
    return Observation(at, "m", False, ("master m unreachable: (2003) refused",),
                       {r.name: r for r in shard})


def decide(observation: Observation, *, policy: Policy = AUTO, since: float | None = NOW - 31,
           pause: rails.Pause | None = None, jobs: list[RunningJob] | None = None,
           history: list[FailoverRecord] | None = None,
           candidate: decisions.Candidate | None = CANDIDATE) -> Decision:
    return decisions.decide_master(observation, policy=policy, since=since, pause=pause,
                                   jobs=jobs or [], history=history or [],
                                   candidate=candidate, observe_only=False,
                                   config_path="/etc/hotcopy/s1.toml")


def test_off_by_default_a_dead_master_is_reported_with_how_to_fail_over_by_hand() -> None:
    assert Policy().auto_failover is False
    made = decide(dead(), policy=replace(AUTO, auto_failover=False), since=NOW - 86400)
    assert made.action == "master-down" and made.target == "m" and made.candidate is None
    why = " ".join(made.reasons)
    assert "not failed over automatically: agent.auto_failover is off" in why
    assert "`hotcopy failover --config /etc/hotcopy/s1.toml --dry-run`" in why
    assert "master m unreachable" in why and made.since == NOW - 86400


def test_on_it_waits_failover_after_s_then_fails_over_to_the_candidate() -> None:
    early = decide(dead(), since=NOW - 29)
    assert early.action == "master-down" and early.until == NOW + 1
    assert "failed over automatically at" in " ".join(early.reasons)
    due = decide(dead(), since=NOW - 30)
    assert due.action == "failover" and due.target == "m" and due.candidate == "r1"
    assert "candidate r1 has every GTID r2 has" in due.reasons
    assert due.key() != early.key()  # recorded as a new decision


def test_the_first_sighting_is_kept_across_polls_and_reset_by_a_live_sign() -> None:
    since = decisions.down_since(None, dead(NOW))
    assert since == NOW
    assert decisions.down_since(since, dead(NOW + 10)) == NOW
    # One replica's IO thread connected: the master lives (seen from it); count again.
    alive = dead(NOW + 20, replica("r1", io="Yes"), replica("r2"))
    assert decisions.down_since(NOW, alive) is None
    made = decide(alive, since=None)
    assert made.action == "master-down" and "looks alive from r1" in " ".join(made.reasons)
    answering = Observation(NOW + 30, "m", True, (), {"r1": replica("r1", io="Yes")})
    assert decisions.down_since(NOW, answering) is None
    assert decisions.down_since(None, dead(NOW + 40)) == NOW + 40


def test_no_identified_master_or_no_replica_to_ask_is_never_failed_over() -> None:
    nobody = Observation(NOW, None, False, ("no configured server is the master",),
                         {"r1": replica("r1")})
    assert decisions.down_since(None, nobody) is None
    assert decide(nobody, since=None).action == "master-down"
    lonely = dead(NOW, replica("r1", reachable=False))
    assert decisions.down_since(None, lonely) is None
    assert decide(lonely, since=None).action == "master-down"


def test_an_unreachable_replica_or_no_candidate_is_not_failed_over() -> None:
    part = dead(NOW, replica("r1"), replica("r2", reachable=False))
    made = decide(part)
    assert made.action == "no-candidate" and "r2 unreachable" in " ".join(made.reasons)
    made = decide(dead(), candidate=(None, ["the replicas are incomparable: r1 lacks 0-2-9"]))
    assert made.action == "no-candidate" and made.candidate is None
    assert "incomparable" in " ".join(made.reasons)


def test_each_rail_blocks_with_its_name_and_end() -> None:
    pause = rails.Pause(NOW - 5, "dba@h", "maintenance")
    paused = decide(dead(), pause=pause)
    assert (paused.action, paused.rail, paused.until) == ("blocked", "pause", None)
    job = RunningJob("j9", "clone", "running", "r2", "r1", True)
    busy = decide(dead(), jobs=[job])
    assert (busy.action, busy.rail) == ("blocked", "one-per-shard")
    last = FailoverRecord("m0", "m", "j1", NOW - 600, "committed", "m")
    flap = decide(dead(), history=[last])
    assert (flap.action, flap.rail, flap.until) == ("blocked", "flap-window", NOW + 3000)
    assert "no automatic failover until" in " ".join(flap.reasons)
    two = [FailoverRecord("a", "b", "j1", NOW - 80000, "committed"),
           FailoverRecord("b", "c", "j2", NOW - 70000, "committed")]
    day = decide(dead(), history=two)
    assert (day.action, day.rail, day.until) == ("blocked", "max-per-day", NOW - 80000 + 86400)
    none = decide(dead(), policy=replace(AUTO, max_failovers_per_day=0))
    assert (none.action, none.rail, none.until) == ("blocked", "max-per-day", None)
    # Outside the window and the day: free again.
    old = FailoverRecord("m0", "m", "j1", NOW - 90000, "committed", "m")
    assert decide(dead(), history=[old]).action == "failover"


def test_decide_routes_a_dead_master_and_re_seeds_nothing() -> None:
    broken = ReplicaHealth("r2", Health.BROKEN, ("SQL thread stopped on error 1032",),
                           io_running="Connecting", sql_running="No")
    made = decisions.decide(dead(NOW, replica("r1"), broken), policy=AUTO, pause=None,
                            jobs=[], history=[], observe_only=True, since=NOW - 60,
                            candidate=CANDIDATE)
    assert [(d.action, d.target, d.candidate, d.observe_only) for d in made] == \
        [("failover", "m", "r1", True)]


def test_takeover_of_a_failover_follows_the_point_of_no_return() -> None:
    assert decisions.takeover_promotion("j1", passed_point_of_no_return=False,
                                        attention=None)[0] == "rollback"
    assert decisions.takeover_promotion("j1", passed_point_of_no_return=True,
                                        attention=None)[0] == "resume"
    action, why = decisions.takeover_promotion("j1", passed_point_of_no_return=True,
                                               attention="verify: r2 not replicating\nmore")
    assert action == "attention" and "verify: r2 not replicating" in why


@st.composite
def outages(draw: st.DrawFn) -> tuple[Observation, float | None, Policy, rails.Pause | None,
                                      list[RunningJob], list[FailoverRecord]]:
    names = ["r1", "r2", "r3"][:draw(st.integers(1, 3))]
    shard = [replica(n, io=draw(st.sampled_from(["Connecting", "No", "Yes"])),
                     reachable=draw(st.booleans())) for n in names]
    observation = dead(NOW, *shard)
    since = draw(st.one_of(st.none(), st.floats(NOW - 200, NOW)))
    policy = replace(AUTO, auto_failover=draw(st.booleans()),
                     failover_after_s=draw(st.sampled_from([0.0, 30.0, 120.0])),
                     max_failovers_per_day=draw(st.integers(0, 3)))
    pause = draw(st.sampled_from([None, None, rails.Pause(NOW - 5, "dba@h", "night")]))
    jobs = draw(st.lists(st.just(RunningJob("j1", "clone", "running", "r1", "r2", True)),
                         max_size=1))
    history = draw(st.lists(st.builds(FailoverRecord, st.just("m"), st.just("r1"),
                                      st.just("j0"), st.floats(NOW - 3 * 86400, NOW)),
                            max_size=4))
    return observation, since, policy, pause, jobs, history


@settings(max_examples=400)
@given(outages())
def test_every_failover_decision_obeys_every_rail(
        outage: tuple[Observation, float | None, Policy, rails.Pause | None,
                      list[RunningJob], list[FailoverRecord]]) -> None:
    observation, since, policy, pause, jobs, history = outage
    made = decide(observation, policy=policy, since=since, pause=pause, jobs=jobs,
                  history=history)
    if made.action != "failover":
        return
    assert policy.auto_failover
    assert since is not None and NOW - since >= policy.failover_after_s
    assert pause is None and not jobs
    assert all(NOW - r.started >= policy.flap_window_s for r in history)
    assert len([r for r in history if NOW - r.started < 86400]) < policy.max_failovers_per_day
    assert all(r.sql_reachable and r.io_running != "Yes"
               for r in observation.replicas.values())
    assert made.candidate == "r1"


def test_failover_history_survives_a_restart_of_the_store(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    one = SqliteAgentStore(path)
    row = one.record_failover(FailoverRecord("m", "r1", None, NOW))
    one.update_failover(row, job="j1", outcome="committed", promoted="r2")
    one.close()
    again = SqliteAgentStore(path)
    assert again.failovers(NOW - 1) == [FailoverRecord("m", "r1", "j1", NOW, "committed", "r2")]
    assert again.failovers(NOW + 1) == []
    again.close()
