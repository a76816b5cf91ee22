"""The agent on one host, against a real shard (master + 3 replicas), as a real process.

Every wait is bounded, and every "nothing happened" is asserted after the agent has
provably polled again (its poll counter on the metrics endpoint moved on), never after
a sleep: an agent that is merely slow cannot pass for one that decided not to act.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.runtime import Runtime
from hotcopy.saga import Job, SqliteJournal
from hotcopy.sandbox import SandboxInfo

from .conftest import control, own_sandbox
from .helpers import hotcopy, runtime, stop_agent, wait_for, wait_replicating

GRACE_S = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Shard:
    info: SandboxInfo
    config: Path
    port: int
    rt: Runtime


@pytest.fixture(scope="module")
def shard() -> Iterator[Shard]:
    with own_sandbox(seed_rows=2000, replicas=3) as info:
        port = _free_port()
        config = info.directory / "agent.toml"
        config.write_text(info.config_path.read_text() + "\n".join([
            "", "[agent]", "interval_s = 0.5", f"grace_s = {GRACE_S}", "flap_window_s = 3600",
            "max_reseeds_per_day = 10", "audit_interval_s = 60", "lease_ttl_s = 5",
            f"metrics_port = {port}", ""]))
        rt = runtime(info)
        run(rt, info.master, "CREATE DATABASE IF NOT EXISTS agentdb",
            "CREATE TABLE IF NOT EXISTS agentdb.t (id INT PRIMARY KEY, v INT)",
            "INSERT INTO agentdb.t VALUES (1, 1), (2, 2), (3, 3)", binlog=True)
        for name in info.replicas:
            wait_replicating(rt.server(name), rt.server(info.master))
        yield Shard(info, config, port, rt)
        rt.close()


def run(rt: Runtime, name: str, *statements: str, binlog: bool = False) -> None:
    session = rt.server(name).new_session()
    try:
        session.execute(f"SET SESSION sql_log_bin = {int(binlog)}")
        for statement in statements:
            session.execute(statement)
    finally:
        session.close()


def break_replica(shard: Shard, name: str, row: int) -> None:
    """A real divergence: the row is gone on the replica, then the master updates it."""
    run(shard.rt, name, f"DELETE FROM agentdb.t WHERE id = {row}")
    run(shard.rt, shard.info.master, f"UPDATE agentdb.t SET v = v + 100 WHERE id = {row}",
        binlog=True)

    def stopped_on_1032() -> bool:
        from hotcopy.mysql import replication

        status = replication.single_channel(shard.rt.server(name))
        return status is not None and status.last_sql_errno == 1032

    assert wait_for(stopped_on_1032, 30), f"{name} did not stop on error 1032"


def jobs(shard: Shard) -> list[Job]:
    journal = SqliteJournal(shard.rt.config.journal_path())
    try:
        return journal.list_jobs(50)
    finally:
        journal.close()


def status(shard: Shard) -> dict[str, Any]:
    proc = hotcopy("agent", "status", "--config", str(shard.config), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def metrics(shard: Shard) -> dict[str, float]:
    """Every sample of the endpoint, parsed as Prometheus text, by name{labels}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{shard.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                              if k != "shard")
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def polls(shard: Shard) -> float:
    return metrics(shard).get("hotcopy_agent_polls_total{}", 0.0)


def wait_polls(shard: Shard, more: int, timeout: float = 60) -> None:
    """Until the agent has finished ``more`` further polls."""
    start = polls(shard)
    assert wait_for(lambda: polls(shard) >= start + more, timeout), "the agent stopped polling"


@contextmanager
def agent(shard: Shard, *extra: str, env: dict[str, str] | None = None) -> Iterator[Path]:
    """`hotcopy agent run` as a real process; SIGTERM and a bounded wait at the end."""
    log = shard.info.directory / f"agent-{len(list(shard.info.directory.glob('agent-*')))}.log"
    full_env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"} | (env or {})
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "hotcopy", "agent", "run", "--config",
                                 str(shard.config), *extra], stdout=subprocess.DEVNULL,
                                stderr=stderr, env=full_env)
    try:
        assert wait_for(lambda: _scrapable(shard) or proc.poll() is not None, 60)
        assert proc.poll() is None, log.read_text()
        yield log
    finally:
        stop_agent(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]


def _scrapable(shard: Shard) -> bool:
    try:
        metrics(shard)
    except OSError:
        return False
    return True


def log_lines(log: Path) -> list[dict[str, Any]]:
    """Every line the agent logged; each must be one JSON object."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def decisions_for(shard: Shard, target: str, action: str) -> list[dict[str, Any]]:
    return [d for d in status(shard)["decisions"]
            if d["target"] == target and d["action"] == action]


def assert_equal_to_master(shard: Shard, name: str) -> None:
    replica, master = shard.rt.server(name), shard.rt.server(shard.info.master)
    replica.close()
    wait_replicating(replica, master)
    assert differing_tables(table_checksums(master), table_checksums(replica)) == []


def test_broken_replica_is_reseeded_then_the_flap_window_holds(shard: Shard) -> None:
    break_replica(shard, "replica1", 1)
    with agent(shard) as log:
        assert wait_for(lambda: any(j.params.get("target") == "replica1"
                                    and j.state == "committed" for j in jobs(shard)), 300), \
            log.read_text()[-4000:]
        (job,) = [j for j in jobs(shard) if j.params.get("target") == "replica1"]
        # Lag ties (all 0 s) go to the first name: replica2 is the best donor.
        assert job.params["source"] == "replica2"
        (decision,) = decisions_for(shard, "replica1", "reseed")
        assert decision["donor"] == "replica2"
        why = " ".join(decision["reasons"])
        assert "error 1032" in why and "grace period" in why
        assert "least lag" in why and "crash-safe" in why
        assert set(decision["rejected_donors"]) == set()  # replica3 was eligible too
        assert_equal_to_master(shard, "replica1")

        wait_for(lambda: metrics(shard).get("hotcopy_reseeds_committed_total{}") == 1, 30)
        samples = metrics(shard)
        assert samples["hotcopy_reseeds_committed_total{}"] == 1
        assert samples["hotcopy_reseeds_started_total{}"] == 1
        assert samples["hotcopy_agent_leader{}"] == 1
        assert samples["hotcopy_master_up{}"] == 1
        assert samples["hotcopy_reseed_duration_seconds_count{}"] == 1
        assert samples["hotcopy_reseed_source_lock_seconds_count{}"] == 1
        wait_polls(shard, 2)
        assert metrics(shard)["hotcopy_replica_health{replica=replica1,state=healthy}"] == 1

        # Broken again inside the window: decided against, with the reason and the end.
        break_replica(shard, "replica1", 2)
        def flap_blocks() -> list[dict[str, Any]]:
            return [d for d in decisions_for(shard, "replica1", "blocked")
                    if d["rail"] == "flap-window"]

        assert wait_for(flap_blocks, 60)
        wait_polls(shard, 3)
        assert [j.id for j in jobs(shard)] == [job.id]
        blocks = flap_blocks()
        assert len(blocks) == 1, json.dumps(status(shard)["decisions"], indent=1)
        (blocked,) = blocks  # recorded once, not at every poll
        assert blocked["until"] == pytest.approx(job.created + 3600, abs=30)
        report = status(shard)
        (window,) = report["flap_windows"]
        assert window["replica"] == "replica1" and window["last_job"] == job.id
        assert "not re-seeded again until" in window["reason"]
        assert report["replicas"]["replica1"]["state"] == "broken"
        assert report["leader"] is not None
    lines = log_lines(log)
    assert any(line.get("event") == "decision" and line["decision"]["action"] == "reseed"
               for line in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)


def test_paused_then_observe_only_then_reseed_by_operator(shard: Shard) -> None:
    """replica1 is still broken (previous test) and inside its flap window."""
    proc = hotcopy("agent", "pause", "--config", str(shard.config), "--reason", "maintenance")
    assert proc.returncode == 0, proc.stderr
    proc = hotcopy("agent", "reseed", "--config", str(shard.config), "replica1")
    assert proc.returncode == 0, proc.stderr
    before = [j.id for j in jobs(shard)]
    with agent(shard):
        assert wait_for(lambda: any(d["rail"] == "pause"
                                    for d in decisions_for(shard, "replica1", "blocked")), 60)
        wait_polls(shard, 3)
        assert [j.id for j in jobs(shard)] == before
        report = status(shard)
        assert report["paused"] and "maintenance" in report["pause"]["text"]
        assert metrics(shard)["hotcopy_agent_paused{}"] == 1
    assert hotcopy("agent", "resume", "--config", str(shard.config)).returncode == 0

    # Observe only: the operator's mark lifts the flap window, so a re-seed is decided,
    # reported, and not carried out.
    checksum = table_checksums(shard.rt.server("replica1"))
    with agent(shard, "--observe-only"):
        assert wait_for(lambda: any(d["observe_only"] for d in
                                    decisions_for(shard, "replica1", "reseed")), 60)
        wait_polls(shard, 3)
        assert [j.id for j in jobs(shard)] == before
        assert metrics(shard)["hotcopy_agent_observe_only{}"] == 1
    assert table_checksums(shard.rt.server("replica1")) == checksum
    assert status(shard)["marks"].get("replica1")  # still marked: nothing was done

    # Unpaused, not observing: the mark is acted on despite the flap window.
    with agent(shard):
        assert wait_for(lambda: len([j for j in jobs(shard) if j.state == "committed"])
                        == len(before) + 1, 300)
        # Its process finished (old datadir removed after the commit) and was reaped.
        assert wait_for(lambda: metrics(shard).get("hotcopy_reseeds_committed_total{}") == 1,
                        120)
    assert status(shard)["marks"] == {}
    assert_equal_to_master(shard, "replica1")


def test_master_down_no_replica_is_reseeded(shard: Shard) -> None:
    master = control(shard.info, shard.info.master)
    before = [j.id for j in jobs(shard)]
    break_replica(shard, "replica2", 3)
    master.kill()  # SIGKILL: the master is gone, not shut down
    try:
        with agent(shard):
            assert wait_for(lambda: decisions_for(shard, shard.info.master, "master-down"), 60)
            wait_polls(shard, 3)
            assert [j.id for j in jobs(shard)] == before
            report = status(shard)
            assert report["master_up"] is False
            assert any("unreachable" in r for r in report["master_reasons"])
            assert metrics(shard)["hotcopy_master_up{}"] == 0
    finally:
        master.start(timeout=120)
        for name in shard.info.replicas:  # IO threads reconnect on their own retry timer
            assert wait_for(lambda name=name: _io_running(shard, name), 120), name


def _io_running(shard: Shard, name: str) -> bool:
    from hotcopy.mysql import replication

    status = replication.single_channel(shard.rt.server(name))
    return status is not None and status.io_running == "Yes"


def test_sigterm_mid_reseed_rolls_it_back_and_the_agent_exits_cleanly(shard: Shard) -> None:
    """What `systemctl stop` does: the running re-seed is rolled back, nothing is left."""
    from hotcopy.mysql import replication

    from .helpers import leftovers

    # The previous test left replica2 stopped on 1032: give it the row back, by hand.
    run(shard.rt, "replica2", "INSERT INTO agentdb.t VALUES (3, 3)", "START SLAVE")
    wait_replicating(shard.rt.server("replica2"), shard.rt.server(shard.info.master))
    before = {j.id for j in jobs(shard)}
    hotcopy("agent", "reseed", "--config", str(shard.config), "replica3")
    with agent(shard) as log:
        def pulling() -> list[Job]:
            return [j for j in jobs(shard) if j.id not in before
                    and any(s.name == "pull" for s in _steps(shard, j.id))]

        assert wait_for(pulling, 120, 0.02), log.read_text()[-3000:]
        (job,) = pulling()
        assert job.params["target"] == "replica3"
    # The agent has exited (the context manager asserted exit code 0) after the rollback.
    (ended,) = [j for j in jobs(shard) if j.id == job.id]
    assert ended.state == "rolled-back", ended
    assert leftovers(shard.info) == []
    source = replication.single_channel(shard.rt.server(str(ended.params["source"])))
    assert source is not None and source.sql_running == "Yes"
    assert_equal_to_master(shard, "replica3")
    assert any(line.get("event") == "worker-stopping" for line in log_lines(log))


def _steps(shard: Shard, job_id: str) -> list[Any]:
    journal = SqliteJournal(shard.rt.config.journal_path())
    try:
        return list(journal.steps(job_id))
    finally:
        journal.close()


def test_a_dead_controller_s_job_is_taken_over_by_policy(shard: Shard) -> None:
    """The re-seed's own process SIGKILLed right after the snapshot: the leader finds the
    job with its owner gone and rolls it back (its transfer had not started)."""
    from .helpers import leftovers

    before = {j.id for j in jobs(shard)}
    break_replica(shard, "replica2", 3)
    with agent(shard, env={"HOTCOPY_FAULT": "kill-after:snapshot"}) as log:
        def ended() -> list[Job]:
            return [j for j in jobs(shard) if j.id not in before and j.terminal]

        assert wait_for(ended, 180), log.read_text()[-3000:]
        (job,) = ended()
        assert job.params["target"] == "replica2" and job.state == "rolled-back"
        (takeover,) = [d for d in status(shard)["decisions"] if d.get("job") == job.id]
        assert takeover["action"] == "rollback"
        assert "transfer had not started" in " ".join(takeover["reasons"])
        # Still broken, but re-seeded (attempted) moments ago: the flap window holds.
        assert wait_for(lambda: any(d["rail"] == "flap-window" for d in
                                    decisions_for(shard, "replica2", "blocked")), 60)
        wait_polls(shard, 3)
        assert {j.id for j in jobs(shard)} == before | {job.id}
    assert leftovers(shard.info) == []
    assert any(line.get("event") == "worker-died" for line in log_lines(log))
    run(shard.rt, "replica2", "INSERT INTO agentdb.t VALUES (3, 103)", "START SLAVE")
    assert_equal_to_master(shard, "replica2")
