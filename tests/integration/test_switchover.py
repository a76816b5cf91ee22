"""Switchover on a real MariaDB shard (a master and three replicas), under write load.

The writer is a non-privileged account (read_only stops it, as it stops applications)
that follows the master through an endpoint file the post_switchover hook rewrites.
The tests share one sandbox and run in file order; each leaves the shard healthy,
whichever server is its master then; the errant-transaction test comes last because
an errant GTID cannot be taken back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.loadclient import AckedWriter, create_table, write_endpoint
from hotcopy.mysql import checksum
from hotcopy.mysql.connection import connect
from hotcopy.runtime import Runtime
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo
from hotcopy.workflows import topology
from tests.integration.conftest import own_sandbox
from tests.integration.helpers import hotcopy, runtime, wait_replicating

#: Every step boundary before the point of no return (``promote`` is where it is crossed).
BOUNDARIES = ["read_only_master", "drain_writes", "record_position", "wait_candidate",
              "wait_replicas", "promote"]


@pytest.fixture(scope="module")
def shard() -> Iterator[SandboxInfo]:
    with own_sandbox(seed_rows=2000, replicas=3) as info:
        rt = runtime(info)
        master = rt.address(info.master)
        create_table(master, str(info.admin_option_file))
        conn = connect(master, str(info.admin_option_file))
        try:
            conn.execute("CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-secret-1'")
            conn.execute("GRANT SELECT, INSERT ON app.* TO 'app'@'%'")
        finally:
            conn.close()
        rt.close()
        yield info


@pytest.fixture(scope="module")
def work(shard: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("switchover")
    app_cnf = path / "app.cnf"
    app_cnf.write_text("[client]\nuser = app\npassword = app-secret-1\n")
    app_cnf.chmod(0o600)
    return path


def _config(shard: SandboxInfo, work: Path, name: str, hooks: dict[str, list[str]]) -> Path:
    lines = [shard.config_path.read_text(), "", "[hooks]"]
    lines += [f"{key} = {json.dumps(argv)}" for key, argv in hooks.items()]
    path = work / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _follow_hooks(work: Path) -> dict[str, list[str]]:
    endpoint = work / "endpoint"
    return {
        "pre_switchover": ["sh", "-c", f"env | grep ^HOTCOPY_ | sort > {work}/pre.env"],
        "post_switchover": ["sh", "-c", 'printf "%s:%s\\n" "$HOTCOPY_NEW_MASTER_HOST" '
                            f'"$HOTCOPY_NEW_MASTER_PORT" > {endpoint}.tmp && '
                            f"mv {endpoint}.tmp {endpoint}"],
    }


def _view(info: SandboxInfo) -> topology.ShardView:
    rt = runtime(info)
    try:
        return topology.read_shard(rt, crash_safety=False)
    finally:
        rt.close()


def _assert_master(info: SandboxInfo, master: str) -> None:
    """``master`` writable; every other server replicates from it, threads running."""
    view = _view(info)
    assert view.master == master, view.problems
    assert not view.servers[master].read_only
    for server in view.replicas():
        assert server.replicates_from == master, server
        assert (server.io_running, server.sql_running) == ("Yes", "Yes"), server
        assert server.read_only, server.name
        assert server.errant == [], server
    assert view.problems == []


def _endpoint(rt: Runtime, name: str) -> str:
    address = rt.address(name)
    return f"{address.host}:{address.port}"


def _acked_on(rt: Runtime, name: str) -> set[int]:
    rows = rt.server(name).query(("SELECT n FROM app.acked", ()))
    return {int(r["n"]) for r in rows}


def _last_job(info: SandboxInfo) -> dict[str, object]:
    journal = SqliteJournal(runtime(info).config.journal_path())
    job = journal.list_jobs(limit=1)[0]
    return {"id": job.id, "state": job.state.value, "undo": journal.undo_entries(job.id)}


def test_switchover_under_load_keeps_every_acknowledged_commit(shard: SandboxInfo,
                                                               work: Path) -> None:
    rt = runtime(shard)
    old, new = _view(shard).master, "replica1"
    assert old is not None
    write_endpoint(work / "endpoint", *_endpoint(rt, old).split(":"))  # type: ignore[arg-type]
    config = _config(shard, work, "follow.toml", _follow_hooks(work))
    with AckedWriter(work / "endpoint", str(work / "app.cnf")) as writer:
        assert writer.wait_for_acks(200)
        proc = hotcopy("switchover", "--config", str(config), "--to", new, "--yes", "--json")
        assert proc.returncode == 0, proc.stderr
        assert writer.wait_for_acks(200), "the writer did not resume on the new master"
    report = json.loads(proc.stdout)
    assert report["state"] == "committed"
    assert [s["name"] for s in report["steps"]][-1] == "verify"
    endpoints = {a.endpoint for a in writer.acks}
    assert endpoints == {_endpoint(rt, old), _endpoint(rt, new)}
    acked = {a.n for a in writer.acks}
    assert acked <= _acked_on(rt, new)
    _assert_master(shard, new)
    for name in shard.servers:
        if name != new:
            wait_replicating(rt.server(name), rt.server(new))
            assert acked <= _acked_on(rt, name), name
    sums = {name: checksum.table_checksums(rt.server(name)) for name in shard.servers}
    assert sums[new] and all(s == sums[new] for s in sums.values())
    env = dict(line.split("=", 1) for line in (work / "pre.env").read_text().splitlines())
    assert env["HOTCOPY_OLD_MASTER"] == old and env["HOTCOPY_NEW_MASTER"] == new
    assert f"{env['HOTCOPY_NEW_MASTER_HOST']}:{env['HOTCOPY_NEW_MASTER_PORT']}" == \
        _endpoint(rt, new)
    assert env["HOTCOPY_JOB_ID"] == report["job"] and env["HOTCOPY_HOOK"] == "pre_switchover"
    assert not any("secret" in value for value in env.values())
    rt.close()


def test_failing_pre_hook_aborts_with_nothing_changed(shard: SandboxInfo, work: Path) -> None:
    before = _view(shard)
    assert before.master is not None
    candidate = next(s.name for s in before.replicas())
    config = _config(shard, work, "failing.toml",
                     {"pre_switchover": ["sh", "-c", "echo no VIP today >&2; exit 7"]})
    proc = hotcopy("switchover", "--config", str(config), "--to", candidate, "--yes")
    assert proc.returncode == 2, proc.stderr
    assert "pre_switchover failed: exit status 7: no VIP today" in proc.stderr
    job = _last_job(shard)
    assert job["state"] == "failed" and job["undo"] == []
    _assert_master(shard, before.master)
    after = _view(shard)
    for name, server in before.servers.items():
        assert after.servers[name].read_only == server.read_only


def test_fault_at_each_boundary_before_the_point_of_no_return_rolls_back(
        shard: SandboxInfo, work: Path) -> None:
    rt = runtime(shard)
    master = _view(shard).master
    assert master is not None
    candidate = next(n for n in shard.servers if n != master)
    write_endpoint(work / "endpoint", *_endpoint(rt, master).split(":"))  # type: ignore[arg-type]
    config = str(shard.config_path)
    with AckedWriter(work / "endpoint", str(work / "app.cnf")) as writer:
        for step in BOUNDARIES:
            assert writer.wait_for_acks(20), f"writes stopped before {step}"
            failed = hotcopy("switchover", "--config", config, "--to", candidate, "--yes",
                             env={"HOTCOPY_FAULT": f"fail-before:{step}"})
            # Before the first change there is nothing to undo: the job just failed.
            nothing_yet = step == BOUNDARIES[0]
            assert failed.returncode == 1, (step, failed.stderr)
            assert _last_job(shard)["state"] == ("failed" if nothing_yet else "rolled-back")
            _assert_master(shard, master)
            killed = hotcopy("switchover", "--config", config, "--to", candidate, "--yes",
                             env={"HOTCOPY_FAULT": f"kill-before:{step}"})
            assert killed.returncode == -9, (step, killed.stderr)
            job = _last_job(shard)
            assert job["state"] == "running", step
            rolled = hotcopy("rollback", "--config", config, str(job["id"]))
            assert rolled.returncode == 0, (step, rolled.stderr)
            assert _last_job(shard)["state"] == "rolled-back", step
            _assert_master(shard, master)
        assert writer.wait_for_acks(20), "writes did not resume after the last rollback"
    acked = {a.n for a in writer.acks}
    assert {a.endpoint for a in writer.acks} == {_endpoint(rt, master)}
    assert acked <= _acked_on(rt, master)
    for name in shard.servers:
        if name != master:
            wait_replicating(rt.server(name), rt.server(master))
            assert acked <= _acked_on(rt, name), name
    rt.close()


def test_failure_after_the_point_of_no_return_is_finished_by_resume(shard: SandboxInfo) -> None:
    master = _view(shard).master
    assert master is not None
    candidate = next(n for n in shard.servers if n != master)
    config = str(shard.config_path)
    proc = hotcopy("switchover", "--config", config, "--to", candidate, "--yes",
                   env={"HOTCOPY_FAULT": "fail-after:promote"})
    assert proc.returncode == 3, proc.stderr
    assert f"past the point of no return: {candidate} is the writable master" in proc.stderr
    assert "repoint_replicas, demote_old_master, post_hook, verify" in proc.stderr
    job = _last_job(shard)
    assert job["state"] == "running" and job["undo"] and all(
        e.state.value == "removed" for e in job["undo"])  # type: ignore[attr-defined]
    view = _view(shard)
    assert view.master == candidate and not view.servers[candidate].read_only
    assert view.servers[master].read_only  # the old master never became writable again
    refused = hotcopy("rollback", "--config", config, str(job["id"]))
    assert refused.returncode == 2 and "passed its point of no return" in refused.stderr
    resumed = hotcopy("resume", "--config", config, str(job["id"]))
    assert resumed.returncode == 0, resumed.stderr
    assert _last_job(shard)["state"] == "committed"
    _assert_master(shard, candidate)


def test_open_write_transaction_blocks_until_killed_with_the_flag(shard: SandboxInfo,
                                                                  work: Path) -> None:
    rt = runtime(shard)
    master = _view(shard).master
    assert master is not None
    candidate = next(n for n in shard.servers if n != master)
    config = _config(shard, work, "drain.toml", {})
    config.write_text(config.read_text() + "\n[promotion]\ndrain_timeout_s = 1\n")
    app = connect(rt.address(master), str(work / "app.cnf"))
    try:
        app.execute("START TRANSACTION")
        app.execute("INSERT INTO app.acked (n, endpoint, note) VALUES (-1, 'open', 'open')")
        held = hotcopy("switchover", "--config", str(config), "--to", candidate, "--yes")
        assert held.returncode == 1, held.stderr
        assert f"write transactions still open on {master}" in held.stderr
        assert f"#{app.thread_id} app@" in held.stderr and "--kill-writers" in held.stderr
        _assert_master(shard, master)
        killed = hotcopy("switchover", "--config", str(config), "--to", candidate, "--yes",
                         "--kill-writers")
        assert killed.returncode == 0, killed.stderr
        assert f"killing session #{app.thread_id}" in killed.stderr
    finally:
        app.close()
    _assert_master(shard, candidate)
    assert -1 not in _acked_on(rt, candidate)  # the killed transaction was rolled back
    rt.close()


def test_errant_transaction_is_refused_by_name_and_shown(shard: SandboxInfo) -> None:
    rt = runtime(shard)
    master = _view(shard).master
    replicas = [n for n in shard.servers if n != master]
    errant_on, candidate = replicas[-1], replicas[0]
    conn = rt.server(errant_on).new_session()
    try:
        conn.execute("SET SESSION gtid_domain_id = 77")
        conn.execute("CREATE DATABASE IF NOT EXISTS local_fix")
        server_id = int(conn.scalar("SELECT @@server_id"))
    finally:
        conn.close()
    errant = f"77-{server_id}-1"
    proc = hotcopy("switchover", "--config", str(shard.config_path), "--to", candidate, "--yes")
    assert proc.returncode == 2, proc.stderr
    assert f"{errant_on} has errant transactions" in proc.stderr and errant in proc.stderr
    shown = hotcopy("topology", "--config", str(shard.config_path), "--json")
    assert shown.returncode == 1
    servers = {s["name"]: s for s in json.loads(shown.stdout)["servers"]}
    assert servers[errant_on]["errant"] == [errant]
    assert all(s["errant"] == [] for n, s in servers.items() if n != errant_on)
    assert _view(shard).master == master
    rt.close()
