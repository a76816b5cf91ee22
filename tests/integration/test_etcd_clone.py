"""Real clones journaled in a real 3-member etcd cluster, with etcd and controllers failing.

The clone is frozen with SIGSTOP once its transfer has begun, so the fault lands mid-clone
whatever the machine's speed; then it is thawed and must reach the documented outcome:
- a follower or the leader SIGKILLed: the clone commits (retries are bounded);
- quorum lost: the controller stops at its next journal write, exit 3 naming the job,
  nothing unjournaled; once etcd is back and the lease expired, a rollback restores all;
- the controller SIGKILLed after the snapshot: another controller's rollback is refused
  while the dead one's lease lives, then takes the job over and restores every host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.mysql import locks
from hotcopy.mysql.server import Server
from hotcopy.progress import NullReporter
from hotcopy.runtime import Runtime
from hotcopy.saga import Job, JobState
from hotcopy.saga.etcd_client import EtcdClient
from hotcopy.saga.etcd_journal import EtcdJournal
from hotcopy.sandbox import SandboxInfo
from hotcopy.workflows import clone
from tests.etcd_cluster import EtcdCluster, require_etcd, unique_prefix
from tests.journals import RecordingJournal

from .helpers import (
    hotcopy,
    leftovers,
    runtime,
    sql_thread_running,
    wait_for,
    wait_replicating,
    with_etcd_journal,
)

pytestmark = pytest.mark.etcd

SOURCE, TARGET = "replica1", "replica2"
TTL_S = 6


@pytest.fixture(scope="module")
def etcd3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    require_etcd()
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd3"), 3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster(etcd3: EtcdCluster) -> Iterator[EtcdCluster]:
    """The module's cluster, every member up again after each test."""
    yield etcd3
    for i, member in enumerate(etcd3.members):
        if member.proc is None:
            etcd3.start_member(i, state="existing")
    etcd3.wait_ready()


class Shard:
    def __init__(self, info: SandboxInfo, cluster: EtcdCluster, tmp: Path) -> None:
        self.info = info
        self.prefix = unique_prefix()
        self.tmp = tmp
        self.config = self.variant("etcd.toml", cluster.endpoints)
        self.endpoints = cluster.endpoints
        self.rt: Runtime = runtime(info)

    def variant(self, name: str, endpoints: list[str], retry_rounds: int = 3) -> Path:
        """The sandbox's config with the etcd journal (this test's prefix) instead."""
        path = self.tmp / name
        path.write_text(with_etcd_journal(self.info, endpoints, self.prefix,
                                          lease_ttl_s=TTL_S, retry_rounds=retry_rounds))
        return path

    def journal(self) -> EtcdJournal:
        """A reader: reads need no ownership, so it never disturbs the controllers."""
        return EtcdJournal(EtcdClient(self.endpoints, timeout_s=2, rounds=5), "sandbox",
                           prefix=self.prefix, lease_ttl_s=TTL_S)

    def job(self, job_id: str) -> Job:
        return self.journal().get_job(job_id)

    def server(self, name: str) -> Server:
        return self.rt.server(name)


@pytest.fixture
def shard(sandbox: SandboxInfo, cluster: EtcdCluster, tmp_path: Path) -> Iterator[Shard]:
    shard = Shard(sandbox, cluster, tmp_path)
    yield shard
    # Whatever a failed test left: roll its jobs back (after the lease), replicas running.
    for job in shard.journal().list_jobs():
        if not job.terminal:
            wait_for(lambda job=job: rollback(shard, job.id).returncode != 2, timeout=3 * TTL_S)
    for name in sandbox.servers:
        shard.server(name).close()
    for name in sandbox.replicas:
        wait_replicating(shard.server(name), shard.server(sandbox.master), timeout=120)
    shard.rt.close()


def rollback(shard: Shard, job_id: str) -> subprocess.CompletedProcess[str]:
    return hotcopy("rollback", "--config", str(shard.config), job_id, timeout=300)


class FrozenClone:
    """``hotcopy clone`` in the background, frozen by SIGSTOP once its transfer began."""

    def __init__(self, shard: Shard, env: dict[str, str] | None = None,
                 config: Path | None = None) -> None:
        self.shard = shard
        self.out = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed in finish)
        self.err = tempfile.TemporaryFile("w+")  # noqa: SIM115
        full_env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hotcopy", "clone", "--config", str(config or shard.config),
             "--source", SOURCE, "--target", TARGET, "--yes", "--json"],
            stdout=self.out, stderr=self.err, text=True, env=full_env)
        reader = shard.journal()
        found: list[str] = []
        assert wait_for(lambda: bool(found.extend(j.id for j in reader.list_jobs()) or found),
                        timeout=60, interval=0.05), f"no job: {self.stderr()[-2000:]}"
        self.job_id = found[0]
        self.reader = reader

    def wait_transfer(self) -> None:
        started = wait_for(lambda: any(s.name == "pull" for s in self.reader.steps(self.job_id)),
                           timeout=120, interval=0.02)
        assert started, f"the transfer never began: {self.stderr()[-2000:]}"

    def freeze_in_transfer(self) -> None:
        self.wait_transfer()
        self.proc.send_signal(signal.SIGSTOP)
        assert self.reader.get_job(self.job_id).state is JobState.RUNNING  # truly mid-clone

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
        text = self.stderr()
        self.out.close()
        self.err.close()
        return code, text


def assert_restored(shard: Shard) -> None:
    source = shard.server(SOURCE)
    assert sql_thread_running(source)
    assert leftovers(shard.info) == []
    wait_replicating(shard.server(TARGET), shard.server(shard.info.master), timeout=120)


@pytest.mark.parametrize("who", ["follower", "leader"])
def test_clone_commits_when_an_etcd_member_is_sigkilled_mid_clone(
    shard: Shard, cluster: EtcdCluster, who: str,
) -> None:
    clone = FrozenClone(shard)
    clone.freeze_in_transfer()
    leader = cluster.leader()
    assert leader is not None
    victim = leader if who == "leader" else (leader + 1) % 3
    cluster.kill(victim)
    clone.thaw()
    code, stderr = clone.finish()
    assert code == 0, stderr[-3000:]
    job = shard.job(clone.job_id)
    assert job.state is JobState.COMMITTED
    assert {s.name: s.outcome for s in shard.journal().steps(job.id)}["verify"] == "done"
    if who == "leader":
        assert cluster.leader([i for i in range(3) if i != victim]) not in (None, victim)


def test_quorum_lost_mid_clone_stops_the_controller_then_a_rollback_restores_all(
    shard: Shard, cluster: EtcdCluster,
) -> None:
    clone = FrozenClone(shard)
    clone.freeze_in_transfer()
    entries_before = shard.journal().undo_entries(clone.job_id)
    leader = cluster.leader()
    assert leader is not None
    cluster.kill(leader)
    cluster.kill((leader + 1) % 3)
    clone.thaw()
    code, stderr = clone.finish()
    assert code == 3, stderr[-3000:]
    assert clone.job_id in stderr and "unreachable" in stderr

    for i, member in enumerate(cluster.members):  # etcd comes back
        if member.proc is None:
            cluster.start_member(i, state="existing")
    cluster.wait_ready()
    job = shard.job(clone.job_id)
    assert job.state is JobState.RUNNING  # not rolled back behind the journal's back
    shown = hotcopy("show", "--config", str(shard.config), clone.job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["state"] == "running" and report["outstanding_undo"], report
    assert {s["name"] for s in report["steps"]} >= {"snapshot", "pull"}
    outstanding = {e.seq for e in shard.journal().undo_entries(clone.job_id) if e.outstanding}
    assert {e.seq for e in entries_before if e.outstanding} <= outstanding
    results: list[subprocess.CompletedProcess[str]] = []
    assert wait_for(lambda: results.append(rollback(shard, clone.job_id))
                    or results[-1].returncode != 2, timeout=4 * TTL_S, interval=0.5)
    assert results[-1].returncode == 0, results[-1].stderr[-3000:]
    assert shard.job(clone.job_id).state is JobState.ROLLED_BACK
    assert_restored(shard)


def test_controller_killed_after_the_snapshot_is_taken_over_after_its_lease(
    shard: Shard, cluster: EtcdCluster,
) -> None:
    proc = hotcopy("clone", "--config", str(shard.config), "--source", SOURCE, "--target",
                   TARGET, "--yes", env={"HOTCOPY_FAULT": "kill-after:snapshot"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    job = shard.journal().list_jobs()[0]
    assert job.state is JobState.RUNNING

    early = rollback(shard, job.id)
    if early.returncode == 2:  # the dead controller's lease still runs: refused, named
        assert f"job {job.id} is owned by pid {job.owner_pid}" in early.stderr
        assert shard.job(job.id).state is JobState.RUNNING
        deadline = time.monotonic() + 3 * TTL_S
        while early.returncode == 2:
            assert time.monotonic() < deadline, early.stderr
            time.sleep(0.5)
            early = rollback(shard, job.id)
    assert early.returncode == 0, early.stderr[-3000:]
    done = shard.job(job.id)
    assert done.state is JobState.ROLLED_BACK
    assert done.owner_pid != job.owner_pid
    assert_restored(shard)


def test_a_paused_controller_is_deposed_after_its_lease_and_then_touches_nothing(
    shard: Shard, cluster: EtcdCluster,
) -> None:
    """Frozen past its TTL (a VM pause, a partition): another controller rolls the job
    back; when the first one wakes, its next journal write is rejected and it exits 3."""
    clone = FrozenClone(shard)
    clone.freeze_in_transfer()
    results: list[subprocess.CompletedProcess[str]] = []
    assert wait_for(lambda: results.append(rollback(shard, clone.job_id))
                    or results[-1].returncode != 2, timeout=4 * TTL_S, interval=0.5)
    assert results[-1].returncode == 0, results[-1].stderr[-3000:]
    assert shard.job(clone.job_id).state is JobState.ROLLED_BACK
    assert_restored(shard)
    undone = [e.seq for e in shard.journal().undo_entries(clone.job_id) if not e.outstanding]

    clone.thaw()
    code, stderr = clone.finish()
    assert code == 3, stderr[-3000:]
    assert f"job {clone.job_id}: this controller no longer owns it" in stderr
    after = shard.job(clone.job_id)
    assert after.state is JobState.ROLLED_BACK
    assert [e.seq for e in shard.journal().undo_entries(clone.job_id)
            if not e.outstanding] == undone
    assert leftovers(shard.info) == []  # it recreated nothing on any host
    assert_restored(shard)


def test_no_etcd_round_trip_while_the_source_is_locked(
    shard: Shard, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Quorum writes cost milliseconds each: none may sit inside the source's write lock
    (the benchmark's lock figure with etcd must stay as with SQLite). Only the local
    lease check before the snapshot is allowed there. While its replication is paused,
    only what protects a change: the lock's and the snapshot's undo entries, and taking
    the SQL thread's undo to run it. Every step's record still lands."""
    events: list[str] = []
    acquire, release = locks.acquire, locks.HeldLock.release
    flavor = type(shard.server(SOURCE).flavor)
    stop_sql, start_sql = flavor.stop_sql_thread, flavor.start_sql_thread

    def stopping(self: Any, *args: Any, **kwargs: Any) -> Any:
        events.append("STOP_SQL")
        return stop_sql(self, *args, **kwargs)

    def starting(self: Any, *args: Any, **kwargs: Any) -> Any:
        events.append("START_SQL")
        return start_sql(self, *args, **kwargs)

    monkeypatch.setattr(flavor, "stop_sql_thread", stopping)
    monkeypatch.setattr(flavor, "start_sql_thread", starting)

    def acquiring(*args: Any, **kwargs: Any) -> locks.HeldLock:
        held = acquire(*args, **kwargs)
        events.append("LOCKED")
        return held

    def releasing(self: locks.HeldLock) -> float:
        events.append("RELEASED")
        return release(self)

    monkeypatch.setattr(locks, "acquire", acquiring)
    monkeypatch.setattr(locks.HeldLock, "release", releasing)
    owner = shard.journal()
    rt = runtime(shard.info)
    try:
        outcome = clone.start(rt, RecordingJournal(owner, events.append),
                              SOURCE, TARGET, NullReporter())
    finally:
        rt.close()
        owner.close()
    assert outcome.exit_code == 0, outcome.error
    window = events[events.index("LOCKED") + 1:events.index("RELEASED")]
    assert window == ["ensure_may_act"], window
    stopped = events.index("STOP_SQL")
    paused = events[stopped + 1:events.index("START_SQL", stopped)]
    writes = [name for name in paused if name not in ("LOCKED", "RELEASED", "ensure_may_act",
                                                      "undo_entries")]
    assert writes == ["append_undo", "append_undo", "claim_undo"], paused
    records = {r.name: r for r in shard.journal().steps(outcome.job.id)}
    for name in ("lock_source", "record_position", "snapshot", "release_source"):
        assert records[name].outcome == "done", name
    assert records["record_position"].outputs["coordinates"]
    info = shard.job(outcome.job.id).info
    assert info["lock_attempts"] == 1 and info["source_lock_ms"] is not None
