"""The clone end to end on a real MariaDB shard on btrfs, under write load."""

from __future__ import annotations

import json
import subprocess

import pytest

from hotcopy.loadgen import WriteLoad, seed
from hotcopy.mysql import replication
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.sandbox import SandboxInfo

from .helpers import (
    clone_json,
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    no_backup_lock,
    runtime,
    sql_thread_running,
    wait_replicating,
)


@pytest.fixture(scope="module")
def seeded(sandbox: SandboxInfo) -> SandboxInfo:
    rt = runtime(sandbox)
    seed(sandbox.address(sandbox.master), rt.config.mysql.option_file, 20_000)
    for name in sandbox.replicas:
        wait_replicating(rt.server(name), rt.server(sandbox.master))
    rt.close()
    return sandbox


def test_clone_under_write_load_commits_and_matches_master(seeded: SandboxInfo) -> None:
    rt = runtime(seeded)
    master, source, target = (rt.server(n) for n in (seeded.master, "replica1", "replica2"))
    mark_local(target, "only_on_old_replica2")
    target_server_id = target.scalar(("SELECT @@server_id", ()))
    with WriteLoad(seeded.address(seeded.master), rt.config.mysql.option_file) as load:
        proc, report = clone_json(seeded, "replica1", "replica2")
    assert proc.returncode == 0, proc.stderr
    assert load.commits > 50, "the master must have been written during the clone"
    assert report["state"] == "committed"
    assert report["source_lock_ms"] is not None and report["source_lock_ms"] >= 0
    assert report["source_replication_paused_ms"] >= report["source_lock_ms"]
    assert report["bytes_transferred"] > 1_000_000
    assert report["coordinates"]["gtid"]
    assert report["verified"] == "checksum" and report["tables_checked"] >= 1
    assert [s["outcome"] for s in report["steps"]] == ["done"] * len(report["steps"])
    assert report["outstanding_undo"] == []

    target.close()
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert not has_schema(target, "only_on_old_replica2"), "target must run on the new datadir"
    assert target.scalar(("SELECT @@server_id", ())) == target_server_id
    assert no_backup_lock(source)
    assert leftovers(seeded) == []
    shown = json.loads(hotcopy("show", "--config", str(seeded.config_path), report["job"],
                               "--json").stdout)
    assert shown["state"] == "committed"
    rt.close()


def test_failure_after_snapshot_rolls_everything_back(seeded: SandboxInfo) -> None:
    rt = runtime(seeded)
    master, source, target = (rt.server(n) for n in (seeded.master, "replica1", "replica2"))
    mark_local(target, "marker_failure_test")
    proc, report = clone_json(seeded, "replica1", "replica2",
                              env={"HOTCOPY_FAULT": "fail-before:start_target"})
    assert proc.returncode == 1, proc.stderr
    assert "start_target" in proc.stderr or "start_target" in (report.get("error") or "")
    assert report["state"] == "rolled-back"
    assert report["outstanding_undo"] == []
    assert {u["state"] for u in report["undo"]} <= {"done", "removed"}
    target.close()
    wait_replicating(target, master)
    assert has_schema(target, "marker_failure_test"), "target must be back on its old datadir"
    assert sql_thread_running(source)
    assert no_backup_lock(source)
    assert leftovers(seeded) == []
    rt.close()


def test_sigkill_after_snapshot_then_rollback_from_new_process(seeded: SandboxInfo) -> None:
    rt = runtime(seeded)
    master, source, target = (rt.server(n) for n in (seeded.master, "replica1", "replica2"))
    mark_local(target, "marker_kill_test")
    proc, _ = clone_json(seeded, "replica1", "replica2",
                         env={"HOTCOPY_FAULT": "kill-after:snapshot"})
    assert proc.returncode == -9, proc.stderr
    jobs = json.loads(hotcopy("jobs", "--config", str(seeded.config_path), "--json").stdout)
    job = jobs[0]
    assert job["state"] == "running"
    shown = json.loads(hotcopy("show", "--config", str(seeded.config_path), job["job"],
                               "--json").stdout)
    assert any(u["action"] == "snapshot.btrfs.destroy" for u in shown["outstanding_undo"])
    assert leftovers(seeded), "the snapshot is there until rolled back"

    # While the dead job holds its lock, another clone on the same servers is refused.
    proc2, _ = clone_json(seeded, "replica1", "replica2")
    assert proc2.returncode == 2
    assert job["job"] in proc2.stderr

    back = hotcopy("rollback", "--config", str(seeded.config_path), job["job"], "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["state"] == "rolled-back"
    assert sql_thread_running(source)
    assert no_backup_lock(source)
    target.close()
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert has_schema(target, "marker_kill_test")
    assert leftovers(seeded) == []
    again = hotcopy("rollback", "--config", str(seeded.config_path), job["job"])
    assert again.returncode == 2 and "nothing to roll back" in again.stderr
    rt.close()


def _subvolumes(seeded: SandboxInfo) -> list[str]:
    """The subvolumes' paths: a snapshot adds one. (Not their generation numbers, which
    grow with every write the running mysqld makes.)"""
    listing = subprocess.run(["btrfs", "subvolume", "list", str(seeded.datadir("replica1").parent)],
                             capture_output=True, text=True, check=True).stdout
    return sorted(line.split(" path ", 1)[1] for line in listing.splitlines() if " path " in line)


def test_dry_run_changes_nothing_and_prints_plan(seeded: SandboxInfo) -> None:
    before = _subvolumes(seeded)
    proc = hotcopy("clone", "--config", str(seeded.config_path), "--source", "replica1",
                   "--target", "replica2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    for step in ("stop_sql_thread", "snapshot", "pull", "swap_datadir", "verify"):
        assert step in proc.stdout  # the plan is the command's output
    assert "no problems found" in proc.stdout
    assert _subvolumes(seeded) == before and before
    rt = runtime(seeded)
    assert replication.single_channel(rt.server("replica1")).running  # type: ignore[union-attr]
    rt.close()


def test_kill_after_transfer_ships_only_what_the_target_needs_then_resume(
        seeded: SandboxInfo) -> None:
    rt = runtime(seeded)
    master, target = rt.server(seeded.master), rt.server("replica2")
    proc, _ = clone_json(seeded, "replica1", "replica2", env={"HOTCOPY_FAULT": "kill-after:pull"})
    assert proc.returncode == -9, proc.stderr
    job = json.loads(hotcopy("jobs", "--config", str(seeded.config_path), "--json").stdout)[0]
    staging = seeded.datadir("replica2").parent / f"data.hotcopy-new-{job['job']}"
    shipped = {p.name for p in staging.iterdir()}
    assert "ibdata1" in shipped and "mysql" in shipped and "app" in shipped
    forbidden = [n for n in shipped if n.startswith(("mysql-bin.", "relay-bin."))
                 or n in ("master.info", "relay-log.info", "auto.cnf")
                 or n.endswith((".pid", ".err", ".sock"))]
    assert forbidden == []

    resumed = hotcopy("resume", "--config", str(seeded.config_path), job["job"], "--json")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["state"] == "committed"
    target.close()
    wait_replicating(target, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert leftovers(seeded) == []
    rt.close()
