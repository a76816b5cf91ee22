"""The agent's rules over plain data: classification, donor choice, rails, takeover, store."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hotcopy.agent import decisions, rails
from hotcopy.agent.health import classify
from hotcopy.agent.model import (
    Health,
    Observation,
    Policy,
    ReplicaHealth,
    ReseedRecord,
    RunningJob,
)
from hotcopy.agent.store import SqliteAgentStore
from hotcopy.mysql.flavor import ReplicaStatus
from hotcopy.space import space_needed

NOW = 1_800_000_000.0
POLICY = Policy(grace_s=60, flap_window_s=3600, max_reseeds_per_day=3, lag_threshold_s=60)
VERSION = "10.11.19-MariaDB"


def status(*, io: str = "Yes", sql: str = "Yes", errno: int = 0, error: str = "",
           io_error: str = "", lag: int | None = 0) -> ReplicaStatus:
    return ReplicaStatus("10.0.0.1", 3306, "repl", io, sql, lag, "bin.000001", 4, io_error,
                         error, errno, "Slave_Pos")


def test_sql_error_is_broken_only_after_the_grace_period() -> None:
    stopped = status(sql="No", errno=1032, error="Can't find record in 't'")
    inside, why = classify(stopped, now=NOW, error_since=NOW - 59, policy=POLICY, mark=None)
    assert inside is Health.LAGGING and "grace period" in why[1]
    after, why = classify(stopped, now=NOW, error_since=NOW - 60, policy=POLICY, mark=None)
    assert after is Health.BROKEN and "error 1032" in why[0]


def test_lost_relay_log_and_purged_binlogs_are_broken_at_once() -> None:
    corrupt = status(sql="No", errno=1594, error="Relay log read failure")
    assert classify(corrupt, now=NOW, error_since=NOW, policy=POLICY, mark=None)[0] is \
        Health.BROKEN
    purged = status(io="No", io_error="Got fatal error 1236 from master when reading data")
    assert classify(purged, now=NOW, error_since=None, policy=POLICY, mark=None)[0] is \
        Health.BROKEN
    reconnecting = status(io="Connecting", io_error="error reconnecting to master (2003)")
    assert classify(reconnecting, now=NOW, error_since=None, policy=POLICY,
                    mark=None)[0] is Health.LAGGING


@given(lag=st.one_of(st.none(), st.integers(0, 10**7)),
       io=st.sampled_from(["Yes", "No", "Connecting"]), sql=st.sampled_from(["Yes", "No"]))
def test_lag_or_stopped_threads_without_an_error_are_never_broken(
        lag: int | None, io: str, sql: str) -> None:
    state, _ = classify(status(io=io, sql=sql, lag=lag), now=NOW, error_since=None,
                        policy=POLICY, mark=None)
    assert state is not Health.BROKEN


def test_an_operator_mark_breaks_even_a_healthy_replica() -> None:
    state, why = classify(status(), now=NOW, error_since=None, policy=POLICY, mark="dba: disk")
    assert state is Health.BROKEN and "dba: disk" in why[0]


# -- decisions over generated shards --------------------------------------------------

replica_names = [f"r{i}" for i in range(1, 6)]


@st.composite
def replica(draw: st.DrawFn, name: str) -> ReplicaHealth:
    """Half of them good donors: a random mix would almost never reach a re-seed."""
    if draw(st.booleans()):
        return ReplicaHealth(name, Health.HEALTHY, io_running="Yes", sql_running="Yes",
                             lag_s=draw(st.integers(0, 50)), version=VERSION, crash_safe=True,
                             free_bytes=10**10, datadir_bytes=draw(st.integers(0, 10**9)))
    return ReplicaHealth(
        name, draw(st.sampled_from(list(Health))), ("generated",),
        io_running=draw(st.sampled_from(["Yes", "No"])),
        sql_running=draw(st.sampled_from(["Yes", "No"])),
        lag_s=draw(st.one_of(st.none(), st.integers(0, 500))),
        version=draw(st.sampled_from([VERSION, "10.6.18-MariaDB", ""])),
        crash_safe=draw(st.sampled_from([True, False, None])),
        free_bytes=draw(st.one_of(st.none(), st.integers(0, 10**10))),
        datadir_bytes=draw(st.one_of(st.none(), st.integers(0, 10**10))),
        marked=draw(st.booleans()))


@st.composite
def shards(draw: st.DrawFn) -> tuple[Observation, list[RunningJob], list[ReseedRecord],
                                     rails.Pause | None]:
    names = draw(st.lists(st.sampled_from(replica_names), min_size=1, max_size=5,
                          unique=True))
    replicas = {name: draw(replica(name)) for name in names}
    master_up = draw(st.sampled_from([True, True, True, False]))
    observation = Observation(NOW, "m", master_up, ("m unreachable",), replicas)
    jobs = draw(st.lists(st.builds(RunningJob, st.just("j1"), st.just("clone"),
                                   st.just("running"), st.sampled_from(replica_names),
                                   st.sampled_from(replica_names), st.booleans()),
                         max_size=draw(st.sampled_from([0, 0, 0, 1]))))
    history = draw(st.lists(st.builds(ReseedRecord, st.sampled_from(replica_names),
                                      st.sampled_from(replica_names), st.just("j0"),
                                      st.floats(NOW - 3 * 86400, NOW)), max_size=6))
    pause = draw(st.sampled_from([None, None, None, rails.Pause(NOW - 5, "dba@h", "night")]))
    return observation, jobs, history, pause


@settings(max_examples=400)
@given(shards())
def test_every_reseed_decision_obeys_every_rail(
        shard: tuple[Observation, list[RunningJob], list[ReseedRecord], rails.Pause | None],
) -> None:
    observation, jobs, history, pause = shard
    made = decisions.decide(observation, policy=POLICY, pause=pause, jobs=jobs,
                            history=history, observe_only=False)
    reseeds = [d for d in made if d.action == "reseed"]
    if not observation.master_up:
        assert [d.action for d in made] == ["master-down"]
        return
    assert len(reseeds) <= 1, "one re-seed per shard at a time"
    assert {d.target for d in made} == {n for n, r in observation.replicas.items()
                                        if r.state is Health.BROKEN}
    for decision in reseeds:
        target = observation.replicas[decision.target or ""]
        donor = observation.replicas[decision.donor or ""]
        assert target.state is Health.BROKEN
        assert pause is None and not jobs
        assert donor.name not in (target.name, observation.master)
        assert donor.state is Health.HEALTHY and donor.crash_safe is True
        assert donor.io_running == donor.sql_running == "Yes"
        assert not target.major or donor.major == target.major
        if target.free_bytes is not None and donor.datadir_bytes is not None:
            assert target.free_bytes >= space_needed(donor.datadir_bytes,
                                                     POLICY.free_space_margin)
        if not target.marked:
            assert all(NOW - r.started >= POLICY.flap_window_s for r in history
                       if r.target == target.name)
            assert sum(1 for r in history if NOW - r.started < rails.DAY_S) < \
                POLICY.max_reseeds_per_day
        assert donor.name not in decision.rejected_donors
        eligible = [r for n, r in observation.replicas.items()
                    if n != target.name and n not in decision.rejected_donors]
        assert donor.lag_s == min(r.lag_s for r in eligible if r.lag_s is not None)
    for decision in made:
        if decision.action == "blocked":
            assert decision.rail in ("pause", "one-per-shard", "flap-window", "max-per-day")
            assert decision.reasons


def healthy(name: str, lag: int) -> ReplicaHealth:
    return ReplicaHealth(name, Health.HEALTHY, io_running="Yes", sql_running="Yes", lag_s=lag,
                         version=VERSION, crash_safe=True, free_bytes=10**9,
                         datadir_bytes=10**6)


def test_the_donor_is_the_least_lagging_eligible_replica_with_reasons() -> None:
    broken = ReplicaHealth("r1", Health.BROKEN, ("SQL thread stopped on error 1032",),
                           version=VERSION, free_bytes=10**9)
    unsafe = ReplicaHealth("r4", Health.HEALTHY, io_running="Yes", sql_running="Yes", lag_s=0,
                           version=VERSION, crash_safe=False)
    observation = Observation(NOW, "m", True, (), {
        "r1": broken, "r2": healthy("r2", 7), "r3": healthy("r3", 2), "r4": unsafe,
        "r5": healthy("r5", 0)})
    jobs = [RunningJob("j9", "clone", "running", "r5", "other", True)]
    choice = decisions.choose_donor(broken, observation, rails.busy_servers(jobs), POLICY)
    assert choice.donor == "r3"
    assert "least lag" in choice.reasons[0] and "crash-safe" in choice.reasons
    assert choice.rejected == {"r4": "it is not crash-safe (`hotcopy audit`)",
                               "r5": "it is the donor or target of another job"}


def test_flap_window_and_daily_limit_say_until_when() -> None:
    history = [ReseedRecord("r1", "r2", "j1", NOW - 600, "committed")]
    block = rails.flap_window("r1", history, NOW, POLICY)
    assert block is not None and block.until == NOW - 600 + 3600
    assert "not re-seeded again until" in block.reason and "j1" in block.reason
    assert rails.flap_window("r2", history, NOW, POLICY) is None
    day = [ReseedRecord(f"r{i}", "r9", f"j{i}", NOW - 1000 * i) for i in range(1, 4)]
    limit = rails.daily_limit(day, NOW, POLICY)
    assert limit is not None and limit.until == NOW - 3000 + rails.DAY_S


def test_takeover_resumes_only_a_transfer_with_its_snapshot() -> None:
    assert decisions.takeover("j", {"snapshot": "done", "serve": "done", "pull": "running"},
                              {"snapshot", "stop_sql_thread"})[0] == "resume"
    assert decisions.takeover("j", {"snapshot": "done"}, {"snapshot"})[0] == "rollback"
    assert decisions.takeover("j", {"snapshot": "done", "pull": "running"}, set())[0] == \
        "rollback"
    assert decisions.takeover("j", {"drop_snapshot": "done"}, {"swap_datadir"})[0] == "resume"


def test_store_leader_key_pause_and_marks_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    one, two = SqliteAgentStore(path), SqliteAgentStore(path)
    assert one.campaign("a", 10, NOW)
    assert not two.campaign("b", 10, NOW + 5)
    assert one.campaign("a", 10, NOW + 5)  # renewal
    assert two.campaign("b", 10, NOW + 16)  # a's lease expired
    assert not one.campaign("a", 10, NOW + 17)
    two.set_pause(rails.Pause(NOW, "dba@h", "night"))
    two.mark("r1", "disk replaced")
    row = one.record_reseed(ReseedRecord("r1", "r2", None, NOW))
    one.update_reseed(row, job="j1", outcome="committed")
    one.close()
    two.close()
    again = SqliteAgentStore(path)
    assert again.pause() == rails.Pause(NOW, "dba@h", "night")
    assert again.marks() == {"r1": "disk replaced"}
    assert again.reseeds(NOW - 1) == [ReseedRecord("r1", "r2", "j1", NOW, "committed")]
    assert again.leader(NOW + 17) == ("b", NOW + 26)
    again.close()


def test_a_job_owner_is_alive_by_its_lease_else_by_its_pid_on_this_host() -> None:
    import socket
    import subprocess

    from hotcopy.agent.loop import owner_alive
    from hotcopy.saga import Job, JobState, LockInfo

    here = socket.gethostname()
    live = subprocess.Popen(["sh", "-c", "sleep 30", "hotcopy"])  # a hotcopy-named process
    other = subprocess.Popen(["sleep", "30"])  # alive, but not hotcopy: a recycled pid
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        def job(host: str, pid: int) -> Job:
            return Job("j", "clone", JobState.RUNNING, {}, {}, 0.0, 0.0, host, pid)

        def lock(left: float | None) -> LockInfo:
            return LockInfo("server:r1", "j", "running", here, 1, 0.0, left)

        assert owner_alive(job(here, live.pid), [], etcd=False)
        assert not owner_alive(job(here, other.pid), [], etcd=False)
        assert not owner_alive(job(here, dead.pid), [], etcd=False)
        assert owner_alive(job("elsewhere", 1), [], etcd=False)  # SQLite cannot tell
        assert not owner_alive(job("elsewhere", 1), [], etcd=True)  # its locks went
        assert owner_alive(job("elsewhere", 1), [lock(2.0)], etcd=True)
        assert not owner_alive(job(here, live.pid), [lock(-1.0)], etcd=True)
    finally:
        for proc in (live, other):
            proc.kill()
            proc.wait()
