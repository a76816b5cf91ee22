"""The agent and a dead master, as real processes against a real shard (master + 2 replicas).

In file order on one sandbox: the master SIGKILLed with ``agent.auto_failover`` off is
reported and left alone (proved over polls the agent published after it had seen the
master down for well beyond ``failover_after_s``, not after a sleep); the agent restarted
with it on promotes a replica through the failover workflow and the other replica follows
the new master; that new master SIGKILLed inside the anti-flap window is held back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotcopy import config as config_module
from hotcopy.agent.store import SqliteAgentStore
from hotcopy.runtime import Runtime
from hotcopy.saga import Job, SqliteJournal
from hotcopy.sandbox import SandboxInfo
from hotcopy.workflows import topology

from .conftest import control, own_sandbox
from .helpers import hotcopy, runtime, stop_agent, wait_for, wait_replicating

AFTER_S = 2.0
#: "Well beyond failover_after_s": the agent must have seen the master down this long.
BEYOND_S = 4 * AFTER_S
STATE: dict[str, str] = {}


@dataclass
class Shard:
    info: SandboxInfo
    off: Path
    auto: Path
    rt: Runtime


def _agent_config(info: SandboxInfo, name: str, auto: bool) -> Path:
    path = info.directory / name
    path.write_text(info.config_path.read_text() + "\n".join([
        "", "[agent]", "interval_s = 0.5", "grace_s = 60", "flap_window_s = 3600",
        "lease_ttl_s = 5", "metrics_port = 0", f"failover_after_s = {AFTER_S}",
        f"auto_failover = {'true' if auto else 'false'}", ""]))
    return path


@pytest.fixture(scope="module")
def shard() -> Iterator[Shard]:
    with own_sandbox(seed_rows=500) as info:
        rt = runtime(info)
        yield Shard(info, _agent_config(info, "off.toml", False),
                    _agent_config(info, "auto.toml", True), rt)
        rt.close()


def _store(shard: Shard) -> SqliteAgentStore:
    return SqliteAgentStore(config_module.load(shard.off).agent_store_path())


def published(shard: Shard) -> dict[str, Any]:
    """The leader's last poll as it published it in the store."""
    store = _store(shard)
    try:
        return store.status() or {}
    finally:
        store.close()


def decisions(shard: Shard, action: str, target: str) -> list[dict[str, Any]]:
    store = _store(shard)
    try:
        return [d for d in store.decisions(50)
                if d["action"] == action and d["target"] == target]
    finally:
        store.close()


def jobs(shard: Shard, kind: str) -> list[Job]:
    journal = SqliteJournal(shard.rt.config.journal_path())
    try:
        return [j for j in journal.list_jobs(50) if j.kind == kind]
    finally:
        journal.close()


def view(shard: Shard) -> topology.ShardView:
    rt = runtime(shard.info)
    try:
        return topology.read_shard(rt, crash_safety=False)
    finally:
        rt.close()


def seen_down_beyond(shard: Shard, master: str, action: str) -> bool:
    """A poll published after the agent had seen ``master`` down for BEYOND_S, whose
    decision about it was still ``action``."""
    status = published(shard)
    current = [d for d in status.get("current_decisions", []) if d["target"] == master]
    return (len(current) == 1 and current[0]["action"] == action
            and current[0]["since"] is not None
            and float(status["at"]) - float(current[0]["since"]) >= BEYOND_S)


@contextmanager
def agent(shard: Shard, config: Path) -> Iterator[Path]:
    """`hotcopy agent run` as a real process, up once it has published a poll of its own;
    SIGTERM and a bounded wait at the end (exit 0 asserted)."""
    log = shard.info.directory / f"agent-{len(list(shard.info.directory.glob('agent-*')))}.log"
    before = published(shard).get("at", 0.0)
    env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "hotcopy", "agent", "run", "--config",
                                 str(config)], stdout=subprocess.DEVNULL, stderr=stderr,
                                env=env)
    try:
        assert wait_for(lambda: published(shard).get("at", 0.0) > before
                        or proc.poll() is not None, 60), log.read_text()[-3000:]
        assert proc.poll() is None, log.read_text()[-3000:]
        yield log
    finally:
        stop_agent(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]


def _sigkill(shard: Shard, name: str, replicas: Sequence[str]) -> None:
    """SIGKILL, then until every replica's IO thread has lost it: the agent's first poll
    then sees the master down from every side (its first decision says why it waits)."""
    mysqld = control(shard.info, name)
    mysqld.kill()
    assert wait_for(lambda: not mysqld.is_running(), 30), f"{name} still runs"
    assert wait_for(lambda: all(view(shard).servers[n].io_running != "Yes" for n in replicas),
                    60), f"an IO thread still reads from {name}"


def test_auto_failover_off_reports_the_dead_master_and_changes_nothing(shard: Shard) -> None:
    master = shard.info.master
    _sigkill(shard, master, shard.info.replicas)
    with agent(shard, shard.off) as log:
        assert wait_for(lambda: seen_down_beyond(shard, master, "master-down"), 120), \
            log.read_text()[-3000:]
        (reported,) = decisions(shard, "master-down", master)  # once, not at every poll
        why = " ".join(reported["reasons"])
        assert "agent.auto_failover is off" in why
        assert f"hotcopy failover --config {shard.off} --dry-run" in why
        assert f"master {master} unreachable" in why
    assert jobs(shard, "failover") == []
    after = view(shard)
    assert after.master is None and not after.servers[master].reachable
    for name in shard.info.replicas:
        assert after.servers[name].replicates_from == master
        assert after.servers[name].channels == 1


def test_auto_failover_on_promotes_the_candidate_and_the_other_follows(shard: Shard) -> None:
    master = shard.info.master
    with agent(shard, shard.auto) as log:
        def committed() -> list[Job]:
            return [j for j in jobs(shard, "failover") if j.state == "committed"]

        assert wait_for(committed, 240), log.read_text()[-4000:]
        (job,) = jobs(shard, "failover")
        new = str(job.info["new_master"])

        def recorded() -> list[Any]:
            store = _store(shard)
            try:
                return [r for r in store.failovers(0) if r.outcome == "committed"]
            finally:
                store.close()

        assert wait_for(recorded, 60), log.read_text()[-3000:]  # reaped by the leader
        (record,) = recorded()
        assert (record.master, record.job, record.promoted) == (master, job.id, new)
        (decided,) = decisions(shard, "failover", master)
        assert decided["candidate"] == new == record.candidate
        why = " ".join(decided["reasons"])
        assert "longer than agent.failover_after_s = 2" in why
        assert f"candidate {new}" in why and decided["observe_only"] is False
    (other,) = [n for n in shard.info.replicas if n != new]
    after = view(shard)
    assert after.master == new and not after.servers[new].read_only
    assert after.servers[other].replicates_from == new
    shard.rt.server(new).execute(("CREATE DATABASE IF NOT EXISTS after_failover", ()))
    wait_replicating(shard.rt.server(other), shard.rt.server(new))
    assert shard.rt.server(other).scalar(
        ("SELECT COUNT(*) FROM information_schema.SCHEMATA "
         "WHERE SCHEMA_NAME = 'after_failover'", ())) == 1
    status = hotcopy("agent", "status", "--config", str(shard.auto), "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["auto_failover"] is True
    assert [(f["master"], f["promoted"], f["outcome"]) for f in report["failovers"]] == \
        [(master, new, "committed")]
    assert report["failover_window"]["until"] == pytest.approx(record.started + 3600, abs=1e-3)
    STATE.update(new=new, other=other, job=job.id)


def test_a_second_master_death_inside_the_flap_window_is_blocked(shard: Shard) -> None:
    new, other = STATE["new"], STATE["other"]
    _sigkill(shard, new, [other])
    with agent(shard, shard.auto) as log:
        assert wait_for(lambda: seen_down_beyond(shard, new, "blocked"), 120), \
            log.read_text()[-3000:]
        (blocked,) = decisions(shard, "blocked", new)
        assert blocked["rail"] == "flap-window"
        assert STATE["job"] in " ".join(blocked["reasons"])
        store = _store(shard)
        (record,) = store.failovers(0)
        store.close()
        assert blocked["until"] == pytest.approx(record.started + 3600, abs=1e-3)
    assert [j.id for j in jobs(shard, "failover")] == [STATE["job"]]
    after = view(shard)
    assert after.servers[other].replicates_from == new and after.servers[other].channels == 1
    assert not after.servers[new].reachable
