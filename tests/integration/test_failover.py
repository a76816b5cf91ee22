"""Failover and rejoin on a real MariaDB shard (a master and three replicas).

The tests share one sandbox and run in file order: refusal while the master lives, a
failover after SIGKILL of the master under write load with the replicas at different
positions, the old master restarted read-only and rejoined, the two rejoin paths made
certain (a detached server is demoted, one with an errant GTID is re-seeded by a
clone), and last, because errant GTIDs cannot be taken back, incomparable replicas.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.loadclient import AckedWriter, create_table, write_endpoint
from hotcopy.mysql import checksum, gtid
from hotcopy.mysql.connection import connect
from hotcopy.runtime import Runtime
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo
from hotcopy.workflows import topology
from tests.integration.conftest import control, own_sandbox
from tests.integration.helpers import hotcopy, runtime, wait_for, wait_replicating

STATE: dict[str, str] = {}


@pytest.fixture(scope="module")
def shard() -> Iterator[SandboxInfo]:
    with own_sandbox(seed_rows=2000, replicas=3) as info:
        rt = runtime(info)
        create_table(rt.address(info.master), str(info.admin_option_file))
        conn = connect(rt.address(info.master), str(info.admin_option_file))
        try:
            conn.execute("CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-secret-2'")
            conn.execute("GRANT SELECT, INSERT ON app.* TO 'app'@'%'")
        finally:
            conn.close()
        rt.close()
        yield info


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("failover")
    (path / "app.cnf").write_text("[client]\nuser = app\npassword = app-secret-2\n")
    (path / "app.cnf").chmod(0o600)
    return path


def _view(info: SandboxInfo) -> topology.ShardView:
    rt = runtime(info)
    try:
        return topology.read_shard(rt, crash_safety=False)
    finally:
        rt.close()


def _endpoint(rt: Runtime, name: str) -> tuple[str, int]:
    address = rt.address(name)
    return address.host, address.port


def _last_job(info: SandboxInfo) -> tuple[str, str, str]:
    job = SqliteJournal(runtime(info).config.journal_path()).list_jobs(limit=1)[0]
    return job.id, job.kind, job.state.value


def _sigkill(info: SandboxInfo, name: str) -> None:
    pid = control(info, name).pid()
    assert pid is not None, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not control(info, name).is_running(), timeout=30)


def _io_threads_failing(info: SandboxInfo, names: list[str]) -> bool:
    view = _view(info)
    return all(view.servers[n].io_running != "Yes" for n in names)


def _same_data(rt: Runtime, names: list[str]) -> None:
    sums = {n: checksum.table_checksums(rt.server(n)) for n in names}
    first = sums[names[0]]
    assert first and all(s == first for s in sums.values()), sums


def test_failover_is_refused_while_the_master_lives(shard: SandboxInfo) -> None:
    proc = hotcopy("failover", "--config", str(shard.config_path), "--yes")
    assert proc.returncode == 2, proc.stderr
    assert "the master master looks alive from replica1: its IO thread is connected" in \
        proc.stderr
    assert "looks alive from this controller: it answers SQL" in proc.stderr
    assert _last_job(shard)[1:] == ("failover", "failed")
    view = _view(shard)
    assert view.master == "master" and view.problems == []
    assert all(s.io_running == "Yes" for s in view.replicas())


def test_failover_after_sigkill_under_load_promotes_the_most_advanced(
        shard: SandboxInfo, work: Path) -> None:
    rt = runtime(shard)
    endpoint = work / "endpoint"
    write_endpoint(endpoint, *_endpoint(rt, "master"))
    config = work / "follow.toml"
    config.write_text(shard.config_path.read_text() + "\n[hooks]\npost_failover = " + json.dumps(
        ["sh", "-c", f'printf "%s:%s\\n" "$HOTCOPY_NEW_MASTER_HOST" "$HOTCOPY_NEW_MASTER_PORT" '
                     f"> {endpoint}.tmp && mv {endpoint}.tmp {endpoint}"]) + "\n")
    with AckedWriter(endpoint, str(work / "app.cnf")) as writer:
        assert writer.wait_for_acks(100)
        # replica3 stops fetching: it falls behind. replica2 fetches but does not apply:
        # the failover must apply its relay log before comparing.
        rt.server("replica3").execute(("STOP SLAVE", ()))
        rt.server("replica2").execute(("STOP SLAVE SQL_THREAD", ()))
        assert writer.wait_for_acks(300)
        _sigkill(shard, "master")
        assert wait_for(lambda: _io_threads_failing(shard, ["replica1", "replica2"]), 60)
        before = _view(shard)
        behind = gtid.Position.parse(before.servers["replica3"].gtid_slave_pos)
        fetched_only = gtid.Position.parse(before.servers["replica2"].gtid_slave_pos)

        refused = hotcopy("failover", "--config", str(config), "--to", "replica3", "--yes")
        assert refused.returncode == 2, refused.stderr
        assert "--to replica3 is behind: it lacks 0-1-" in refused.stderr
        kept = _view(shard)  # the refusal put every thread back as it was
        assert kept.servers["replica3"].io_running == "No"
        assert kept.servers["replica3"].sql_running == "No"
        assert kept.servers["replica2"].sql_running == "No"

        killed = hotcopy("failover", "--config", str(config), "--yes",
                         env={"HOTCOPY_FAULT": "kill-before:choose"})
        assert killed.returncode == -9, killed.stderr
        job_id, _, state = _last_job(shard)
        assert state == "running"
        assert _view(shard).servers["replica1"].io_running == "No"  # stopped by the job
        rolled = hotcopy("rollback", "--config", str(config), job_id)
        assert rolled.returncode == 0, rolled.stderr

        failing = work / "failing.toml"
        failing.write_text(shard.config_path.read_text()
                           + '\n[hooks]\npre_failover = ["sh", "-c", "exit 9"]\n')
        aborted = hotcopy("failover", "--config", str(failing), "--yes")
        assert aborted.returncode == 2, aborted.stderr
        assert "hook pre_failover failed: exit status 9" in aborted.stderr
        assert _last_job(shard)[1:] == ("failover", "rolled-back")
        kept = _view(shard)
        assert kept.master is None and not kept.servers["master"].reachable
        assert all(kept.servers[n].channels == 1 for n in ("replica1", "replica2", "replica3"))
        assert kept.servers["replica3"].io_running == "No"
        assert kept.servers["replica1"].io_running == "Connecting"

        proc = hotcopy("failover", "--config", str(config), "--yes", "--json")
        assert proc.returncode == 0, proc.stderr
        assert writer.wait_for_acks(100), "the writer did not resume on the new master"
    report = json.loads(proc.stdout)
    assert report["state"] == "committed"
    after = _view(shard)
    new = after.master
    assert new in ("replica1", "replica2")  # equal once replica2 applied its relay log
    top = gtid.Position.parse(after.servers[new].gtid_binlog_pos)
    assert top.covers(behind) and top.covers(fetched_only) and top != behind
    for name in ("replica1", "replica2", "replica3"):
        if name != new:
            assert after.servers[name].replicates_from == new
            wait_replicating(rt.server(name), rt.server(new))
            assert after.servers[name].errant == []
    _same_data(rt, ["replica1", "replica2", "replica3"])
    assert not after.servers["master"].reachable
    assert "read_only = 1" in (shard.defaults_file("master")).read_text()
    host, port = _endpoint(rt, new)
    assert {a.endpoint for a in writer.acks} >= {f"{host}:{port}"}
    STATE["new_master"] = str(new)
    rt.close()


def test_old_master_restarts_read_only_and_rejoins(shard: SandboxInfo) -> None:
    new = STATE["new_master"]
    control(shard, "master").start(timeout=120)
    view = _view(shard)
    old = view.servers["master"]
    assert old.reachable and old.read_only and old.channels == 0
    assert view.master == new
    errant = old.errant
    proc = hotcopy("rejoin", "--config", str(shard.config_path), "master", "--json")
    assert proc.returncode == 0, proc.stderr
    # A master killed under load may have committed what no replica received: then it
    # is re-seeded (a clone), else demoted in place (a rejoin job).
    assert _last_job(shard)[1:] == ("clone" if errant else "rejoin", "committed")
    rt = runtime(shard)
    wait_replicating(rt.server("master"), rt.server(new))
    assert _view(shard).servers["master"].errant == []
    _same_data(rt, [new, "master"])
    rt.close()


def test_rejoin_demotes_a_detached_server_without_errant_gtids(shard: SandboxInfo) -> None:
    new = STATE["new_master"]
    rt = runtime(shard)
    rt.server("replica3").execute(("STOP SLAVE", ()))
    rt.server("replica3").execute(("RESET SLAVE ALL", ()))
    assert _view(shard).servers["replica3"].channels == 0
    proc = hotcopy("rejoin", "--config", str(shard.config_path), "replica3")
    assert proc.returncode == 0, proc.stderr
    assert _last_job(shard)[1:] == ("rejoin", "committed")
    wait_replicating(rt.server("replica3"), rt.server(new))
    rt.close()


def test_rejoin_reseeds_a_server_with_errant_gtids(shard: SandboxInfo) -> None:
    new = STATE["new_master"]
    rt = runtime(shard)
    conn = rt.server("master").new_session()
    try:
        conn.execute("SET SESSION gtid_domain_id = 77")
        conn.execute("CREATE DATABASE IF NOT EXISTS stray_write")
    finally:
        conn.close()
    assert _view(shard).servers["master"].errant
    proc = hotcopy("rejoin", "--config", str(shard.config_path), "master")
    assert proc.returncode == 0, proc.stderr
    assert _last_job(shard)[1:] == ("clone", "committed")
    rt.server("master").close()
    view = _view(shard)
    assert view.servers["master"].errant == []
    assert view.servers["master"].replicates_from == new
    wait_replicating(rt.server("master"), rt.server(new))
    _same_data(rt, [new, "master"])
    rt.close()


def test_incomparable_replicas_are_refused_naming_the_gtids(shard: SandboxInfo) -> None:
    new = STATE["new_master"]
    rt = runtime(shard)
    others = [n for n in shard.servers if n != new]
    named = {}
    for name, domain in zip(others[:2], (88, 89), strict=True):
        conn = rt.server(name).new_session()
        try:
            conn.execute("SET SESSION gtid_domain_id = %s", (domain,))
            conn.execute(f"CREATE DATABASE IF NOT EXISTS local_{domain}")
            named[name] = f"{domain}-{int(conn.scalar('SELECT @@server_id'))}-1"
        finally:
            conn.close()
    _sigkill(shard, new)
    assert wait_for(lambda: _io_threads_failing(shard, others), 60)
    proc = hotcopy("failover", "--config", str(shard.config_path), "--yes")
    assert proc.returncode == 2, proc.stderr
    assert "incomparable" in proc.stderr
    lacks = dict(item.split(" lacks ", 1) for item in
                 proc.stderr.split("another lacks: ", 1)[1].split("\n", 1)[0].split("; "))
    assert named[others[1]] in lacks[others[0]].split(",")
    assert named[others[0]] in lacks[others[1]].split(",")
    assert _last_job(shard)[1:] == ("failover", "rolled-back")
    rt.close()
