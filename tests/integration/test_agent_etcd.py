"""Three agents on a real 3-member etcd: the leader dies mid-clone, another finishes the job.

The agents are real `hotcopy agent run` processes, each in its own session, so
SIGKILLing a session kills an agent and the clone it forked at once, as the death of
its host would. The leader is frozen (SIGSTOP) once the transfer is under way, so the
kill lands mid-clone for certain, whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotcopy.mysql import replication
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.runtime import Runtime
from hotcopy.saga import Job, JobState
from hotcopy.saga.etcd_client import EtcdClient
from hotcopy.saga.etcd_journal import EtcdJournal
from hotcopy.sandbox import SandboxInfo

from ..etcd_cluster import EtcdCluster, require_etcd, unique_prefix
from .conftest import own_sandbox
from .helpers import (
    hotcopy,
    leftovers,
    runtime,
    wait_for,
    wait_replicating,
    with_etcd_journal,
)

pytestmark = pytest.mark.etcd

TTL_S = 3


@dataclass
class Shard:
    info: SandboxInfo
    config: Path
    prefix: str
    endpoints: list[str]
    rt: Runtime

    def journal(self) -> EtcdJournal:
        return EtcdJournal(EtcdClient(self.endpoints, timeout_s=2, rounds=5), "sandbox",
                           prefix=self.prefix, lease_ttl_s=TTL_S)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shard]:
    require_etcd()
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd3"), 3)
    try:
        cluster.start()
        with own_sandbox(seed_rows=40_000, replicas=3) as info:
            prefix = unique_prefix()
            text = with_etcd_journal(info, cluster.endpoints, prefix, lease_ttl_s=TTL_S)
            text += ("\n[agent]\ninterval_s = 0.5\ngrace_s = 1\naudit_interval_s = 60\n"
                     f"lease_ttl_s = {TTL_S}\nmetrics_port = 0\n")
            config = info.directory / "agent-etcd.toml"
            config.write_text(text)
            rt = runtime(info)
            yield Shard(info, config, prefix, cluster.endpoints, rt)
            rt.close()
    finally:
        cluster.stop()


def run(rt: Runtime, name: str, statement: str, *, binlog: bool) -> None:
    session = rt.server(name).new_session()
    try:
        session.execute(f"SET SESSION sql_log_bin = {int(binlog)}")
        session.execute(statement)
    finally:
        session.close()


def status(shard: Shard) -> dict[str, Any]:
    proc = hotcopy("agent", "status", "--config", str(shard.config), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def leader_pid(shard: Shard) -> int | None:
    leader = status(shard)["leader"]
    return None if leader is None else int(str(leader["id"]).rsplit(":", 1)[1])


@pytest.fixture
def agents(shard: Shard) -> Iterator[dict[int, subprocess.Popen[bytes]]]:
    procs: dict[int, subprocess.Popen[bytes]] = {}
    for i in range(3):
        log = (shard.info.directory / f"agent-etcd-{i}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "hotcopy", "agent", "run", "--config",
                                 str(shard.config)], stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
        procs[proc.pid] = proc
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_leader_killed_mid_clone_another_leads_and_the_job_ends(
        shard: Shard, agents: dict[int, subprocess.Popen[bytes]]) -> None:
    rt, master = shard.rt, shard.info.master
    run(rt, master, "CREATE DATABASE IF NOT EXISTS agentdb", binlog=True)
    run(rt, master, "CREATE TABLE IF NOT EXISTS agentdb.t (id INT PRIMARY KEY, v INT)",
        binlog=True)
    run(rt, master, "INSERT INTO agentdb.t VALUES (1, 1)", binlog=True)
    wait_replicating(rt.server("replica1"), rt.server(master))
    run(rt, "replica1", "DELETE FROM agentdb.t WHERE id = 1", binlog=False)
    run(rt, master, "UPDATE agentdb.t SET v = 2 WHERE id = 1", binlog=True)

    assert wait_for(lambda: leader_pid(shard) in agents, 60), "no agent became the leader"
    first = leader_pid(shard)
    assert first is not None
    reader = shard.journal()
    jobs: list[Job] = []

    def started() -> bool:
        jobs[:] = reader.list_jobs()
        return bool(jobs)

    assert wait_for(started, 120, 0.05), "the leader started no re-seed"
    job_id = jobs[0].id
    assert wait_for(lambda: any(s.name == "pull" for s in reader.steps(job_id)), 120, 0.02)
    os.killpg(first, signal.SIGSTOP)  # the leader and its clone, frozen mid-transfer
    assert reader.get_job(job_id).state is JobState.RUNNING
    killed_at = time.monotonic()
    os.killpg(first, signal.SIGKILL)
    agents[first].wait(timeout=30)

    assert wait_for(lambda: leader_pid(shard) not in (None, first), 6 * TTL_S, 0.1), \
        "no other agent took the lead"
    took_lead_s = time.monotonic() - killed_at
    assert wait_for(lambda: reader.get_job(job_id).terminal, 300, 0.5), \
        f"job {job_id} never ended: {reader.get_job(job_id).state}"
    ended = reader.get_job(job_id)
    assert ended.state in (JobState.COMMITTED, JobState.ROLLED_BACK), ended
    report = status(shard)
    (takeover,) = [d for d in report["decisions"] if d.get("job") == job_id]
    assert takeover["action"] in ("resume", "rollback")
    assert not str(takeover["agent"]).endswith(f":{first}")  # the new leader decided it
    expected = JobState.COMMITTED if takeover["action"] == "resume" else JobState.ROLLED_BACK
    assert ended.state is expected
    print(f"new leader after {took_lead_s:.1f}s; job {job_id} {ended.state} by "
          f"{takeover['action']}")

    assert leftovers(shard.info) == []
    source = rt.server(str(ended.params["source"]))
    status_row = replication.single_channel(source)
    assert status_row is not None and status_row.running
    if ended.state is JobState.COMMITTED:
        target = rt.server("replica1")
        target.close()
        wait_replicating(target, rt.server(master))
        assert differing_tables(table_checksums(rt.server(master)),
                                table_checksums(target)) == []
