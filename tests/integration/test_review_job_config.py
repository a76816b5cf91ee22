"""Review finding 10: rollback and resume refuse a config that names other servers, and the
job's locks carry the shard's name.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hotcopy import config as config_module
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo

from .helpers import clone_json, hotcopy, leftovers
from .test_refusals import edited_config

SOURCE, TARGET = "replica1", "replica2"


@pytest.fixture
def dead_job(sandbox: SandboxInfo) -> str:
    proc, _ = clone_json(sandbox, SOURCE, TARGET, env={"HOTCOPY_FAULT": "kill-after:snapshot"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    with SqliteJournal(config_module.load(sandbox.config_path).journal_path()) as journal:
        return journal.list_jobs(limit=1)[0].id


def lock_names(sandbox: SandboxInfo, job_id: str) -> list[str]:
    path = config_module.load(sandbox.config_path).journal_path()
    with sqlite3.connect(path) as db:
        return sorted(r[0] for r in db.execute("SELECT resource FROM locks WHERE job_id = ?",
                                               (job_id,)))


def outstanding(sandbox: SandboxInfo, job_id: str) -> int:
    with SqliteJournal(config_module.load(sandbox.config_path).journal_path()) as journal:
        return len([e for e in journal.undo_entries(job_id) if e.state.value == "pending"])


@pytest.mark.parametrize("command", ["rollback", "resume"])
def test_a_config_naming_other_servers_or_another_shard_is_refused(
        sandbox: SandboxInfo, dead_job: str, tmp_path: Path, command: str) -> None:
    shard = config_module.load(sandbox.config_path).shard.name
    assert lock_names(sandbox, dead_job) == [f"server:{shard}/{SOURCE}",
                                             f"server:{shard}/{TARGET}"]
    pending = outstanding(sandbox, dead_job)
    assert pending > 0
    other_datadir = edited_config(sandbox, tmp_path, {
        (f"servers.{TARGET}", "datadir"): f'"{tmp_path}/elsewhere"'}, name="moved.toml")
    other_shard = edited_config(sandbox, tmp_path, {("shard", "name"): '"s-other"'},
                                name="shard.toml")
    for config, needle in ((other_datadir, f"worked on {TARGET}"),
                           (other_shard, f"belongs to shard {shard}")):
        proc = hotcopy(command, "--config", str(config), dead_job, env={"COLUMNS": "200"})
        # Before the fix the job was rolled back (or resumed) with whatever config came.
        assert proc.returncode == 2, proc.stderr + proc.stdout
        assert needle in " ".join(proc.stderr.split()), proc.stderr
        assert outstanding(sandbox, dead_job) == pending
    proc = hotcopy("rollback", "--config", str(sandbox.config_path), dead_job)
    assert proc.returncode == 0, proc.stderr
    assert leftovers(sandbox) == []
