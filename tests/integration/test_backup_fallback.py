"""The fallback without snapshots, end to end: datadirs on plain directories, so the
clone streams a hot backup (mariabackup) from source to target, prepares it there and
goes on as the snapshot clone does. Proven under write load, killed mid-stream and
rolled back, and refused when the tool is missing."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy import config as config_module
from hotcopy.loadgen import WriteLoad
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo

from ..real_parts import missing_tools, needs
from .conftest import own_sandbox
from .helpers import (
    clone_json,
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    no_backup_lock,
    runtime,
    sql_thread_running,
    wait_for,
    wait_replicating,
)
from .test_security import assert_method_kept_its_secrets

BACKUP_TOOLS = ("mariabackup", "mariadb-backup", "xtrabackup")
STATE_DIR = Path("/run/hotcopy")  # transfer.state_dir's default, which the sandbox keeps

pytestmark = needs(missing_tools(("mariabackup", "mbstream"), "backup pipeline tests"))


@pytest.fixture(scope="module")
def plain() -> Iterator[SandboxInfo]:
    """A shard whose datadirs are plain directories: no snapshot is possible there."""
    with own_sandbox(filesystem="plain", before_down=roll_back_unfinished) as info:
        yield info


def roll_back_unfinished(directory: Path) -> None:
    """A test that failed between a kill and its rollback must not leave a job's listener,
    option-file copy or stopped SQL thread behind: finish such jobs before teardown."""
    config = directory / "hotcopy.toml"
    if not config.exists():
        return
    for job in SqliteJournal(config_module.load(config).journal_path()).list_jobs():
        if not job.terminal:
            hotcopy("rollback", "--config", str(config), job.id, "--json")


def steps(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in report["steps"]}


def job_files(job: str) -> list[str]:
    """The per-job directories (token, option-file copy, tool's work files) on the hosts."""
    return sorted(str(p) for p in STATE_DIR.glob(f"{job}*")) if STATE_DIR.exists() else []


def listening(port: int) -> bool:
    out = subprocess.run(["ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True,
                         check=False).stdout
    return bool(out.strip())


def tool_files(datadir: Path) -> list[str]:
    return sorted(p.name for p in datadir.iterdir()
                  if p.name.startswith(("xtrabackup_", "mariadb_backup_", "backup-my.cnf")))


def test_clone_under_write_load_streams_a_backup_and_matches_master(plain: SandboxInfo) -> None:
    rt = runtime(plain)
    master, source, target = (rt.server(n) for n in (plain.master, "replica1", "replica2"))
    mark_local(target, "only_on_old_replica2")
    with WriteLoad(plain.address(plain.master), rt.config.mysql.option_file) as load:
        proc, report = clone_json(plain, "replica1", "replica2")
    assert proc.returncode == 0, proc.stderr
    assert load.commits > 20, "the master must have been written during the clone"
    assert report["state"] == "committed"
    by_name = steps(report)
    assert by_name["preflight"]["detail"].endswith("pipeline backup")
    assert {"listen", "backup_stream", "stop_stream", "prepare_backup"} <= set(by_name)
    assert "snapshot" not in by_name and "serve" not in by_name
    assert [s["outcome"] for s in report["steps"]] == ["done"] * len(report["steps"])
    assert report["outstanding_undo"] == []
    # What the source paid, measured: the tool's write lock and the polled SQL-thread stop.
    assert report["source_lock_ms"] is not None and report["source_lock_ms"] > 0
    assert report["source_replication_paused_ms"] is not None
    assert report["source_replication_paused_ms"] > 0, "mariabackup stops the SQL thread"
    assert report["bytes_transferred"] > 1_000_000
    assert report["coordinates"]["gtid"] and report["coordinates"]["extra"]["taken_by"] == \
        "backup"
    assert report["verified"] == "checksum" and report["tables_checked"] >= 1

    target.close()
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert not has_schema(target, "only_on_old_replica2"), "target must run on the new datadir"
    assert sql_thread_running(source) and no_backup_lock(source)
    assert tool_files(plain.datadir("replica2")) == []
    assert tool_files(plain.datadir("replica1")) == []
    assert job_files(report["job"]) == [], "option-file copy, token or work files left"
    listener = by_name["listen"]["detail"].rsplit(":", 1)[-1].split()[0]
    assert not listening(int(listener))
    assert leftovers(plain) == []
    print(f"\nbackup pipeline: source_lock_ms={report['source_lock_ms']} "
          f"source_replication_paused_ms={report['source_replication_paused_ms']} "
          f"bytes={report['bytes_transferred']} ({by_name['backup_stream']['detail']})")
    rt.close()


def slow_config(info: SandboxInfo, directory: Path) -> Path:
    """The sandbox config with the stream paced, so a kill lands while it flows."""
    path = directory / "hotcopy.toml"
    path.write_text(info.config_path.read_text() + "\n[transfer]\nbwlimit_kbps = 4096\n")
    return path


def test_kill_during_the_stream_then_rollback_restores_everything(
        plain: SandboxInfo, tmp_path: Path) -> None:
    rt = runtime(plain)
    master, source, target = (rt.server(n) for n in (plain.master, "replica1", "replica2"))
    mark_local(target, "marker_backup_kill")
    config = slow_config(plain, tmp_path)
    proc, _ = clone_json(plain, "replica1", "replica2", config=config,
                         env={"HOTCOPY_FAULT": "kill-during:backup_stream:0.5"})
    job = str(json.loads(hotcopy("jobs", "--config", str(config), "--json").stdout)[0]["job"])
    try:
        assert proc.returncode == -9, proc.stderr
        shown = json.loads(hotcopy("show", "--config", str(config), job, "--json").stdout)
        assert shown["state"] == "running"
        assert steps(shown)["backup_stream"]["outcome"] == "running"
        actions = {u["action"] for u in shown["outstanding_undo"]}
        assert {"backup.release_source", "host.remove_file", "transfer.stream.stop"} <= actions
        assert any(Path(p, "admin.cnf").exists() for p in job_files(job)), \
            "the kill must land while the option-file copy exists"
    finally:
        rolled = hotcopy("rollback", "--config", str(config), job, "--json")
    assert rolled.returncode == 0, rolled.stderr
    report = json.loads(rolled.stdout)
    assert report["state"] == "rolled-back"
    assert report["outstanding_undo"] == []
    assert {u["state"] for u in report["undo"]} <= {"done", "removed"}
    assert job_files(job) == []
    assert wait_for(lambda: sql_thread_running(source), timeout=30)
    assert no_backup_lock(source)
    target.close()
    assert has_schema(target, "marker_backup_kill"), "the target keeps its own datadir"
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert leftovers(plain) == []
    rt.close()


def path_without_backup_tools(directory: Path) -> str:
    """A PATH with every command of this one except the backup tools."""
    directory.mkdir()
    for folder in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            link = directory / entry
            if entry in BACKUP_TOOLS or link.exists() or link.is_symlink():
                continue
            link.symlink_to(os.path.join(folder, entry))
    return str(directory)


def test_refused_when_no_snapshot_and_no_backup_tool(plain: SandboxInfo) -> None:
    rt = runtime(plain)
    target = rt.server("replica2")
    mark_local(target, "marker_backup_refusal")
    with tempfile.TemporaryDirectory() as scratch:
        path = path_without_backup_tools(Path(scratch) / "bin")
        assert subprocess.run(["sh", "-c", "command -v mariabackup"], env={"PATH": path},
                              capture_output=True, check=False).returncode != 0
        proc, report = clone_json(plain, "replica1", "replica2",
                                  env={"PATH": path, "COLUMNS": "200"})
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2, message
    assert f"the datadir {plain.datadir('replica1')}" in message
    assert "cannot be snapshotted" in message
    assert "mariadb-backup / mariabackup is not installed on replica1" in message
    assert "install mariadb-backup" in message
    assert report["state"] == "refused"  # as its exit code 2 said
    assert [s["name"] for s in report["steps"]] == ["preflight"]
    assert report["undo"] == []
    journal = SqliteJournal(rt.config.journal_path())
    assert journal.get_job(report["job"]).params["pipeline"] == "backup"
    assert has_schema(target, "marker_backup_refusal") and sql_thread_running(
        rt.server("replica1"))
    assert leftovers(plain) == []
    rt.close()


def test_resume_after_a_crash_redoes_the_backup_and_commits(plain: SandboxInfo) -> None:
    rt = runtime(plain)
    master, source, target = (rt.server(n) for n in (plain.master, "replica1", "replica2"))
    proc, _ = clone_json(plain, "replica1", "replica2",
                         env={"HOTCOPY_FAULT": "kill-after:backup_stream"})
    assert proc.returncode == -9, proc.stderr
    job = str(json.loads(hotcopy("jobs", "--config", str(plain.config_path),
                                 "--json").stdout)[0]["job"])
    resumed = hotcopy("resume", "--config", str(plain.config_path), job, "--json")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["state"] == "committed"
    attempts = {s["name"]: s["attempt"] for s in report["steps"] if s["outcome"] == "done"}
    assert attempts["listen"] == 2 and attempts["backup_stream"] == 2, attempts
    assert "snapshot" not in attempts and attempts["prepare_backup"] == 1
    assert report["outstanding_undo"] == []
    target.close()
    wait_replicating(target, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert sql_thread_running(source) and job_files(job) == []
    assert leftovers(plain) == []
    rt.close()


def test_backup_pipeline_keeps_every_secret(plain: SandboxInfo) -> None:
    """The backup stream's token and the passwords (mariabackup reads them from an option
    file copy): in no argv or environment sampled, nor in output, journal or logs."""
    assert_method_kept_its_secrets(plain, "backup")
    assert leftovers(plain) == []
