"""`hotcopy agent status` shows how far the running copy got, read from the journal.

The bytes come from what the pull step records in the job (as `hotcopy show` reads
them), so the status answers with no agent running: the job here is written by this
process and no agent exists at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hotcopy import config as config_module
from hotcopy.agent import status
from hotcopy.agent.store import SqliteAgentStore
from hotcopy.saga import SqliteJournal


def write_config(tmp_path: Path) -> Path:
    option = tmp_path / "admin.cnf"
    option.write_text("[client]\nuser = nobody\npassword = none\n")
    option.chmod(0o600)
    servers = "".join(
        f'\n[servers.{name}]\nhost = "127.0.0.1"\nport = {port}\nssh = "local"\n'
        f'datadir = "/nonexistent/{name}"\ndefaults_file = "/nonexistent/{name}.cnf"\n'
        for name, port in (("db1", 1), ("db2", 2)))
    path = tmp_path / "hotcopy.toml"
    path.write_text(f'[shard]\nname = "s"\n[mysql]\noption_file = "{option}"\n'
                    f'[journal]\npath = "{tmp_path / "journal.sqlite"}"\n' + servers)
    return path


def test_status_reports_the_running_copys_bytes(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = config_module.load(str(path))
    journal = SqliteJournal(config.journal_path())
    job = journal.create_job("clone", {"source": "db1", "target": "db2"})
    for step in ("preflight", "snapshot", "serve"):
        journal.step_started(job.id, step)
        journal.step_finished(job.id, step, "done", {})
    journal.step_started(job.id, "pull")
    at = time.time()
    journal.update_job_info(job.id, progress_bytes=3_000_000, progress_total=12_000_000,
                            progress_at=at)
    store = SqliteAgentStore(config.agent_store_path())
    try:
        (running,) = status.build(config, store, journal, time.time())["jobs"]
    finally:
        store.close()
    assert running["job"] == job.id and running["step"] == "pull"
    assert running["step_outcome"] == "running" and running["steps_done"] == 3
    assert (running["bytes_done"], running["bytes_expected"]) == (3_000_000, 12_000_000)
    assert running["progress_at"] == at

    # The same through the command, as an operator asks it (the job's owner is alive).
    argv = [sys.executable, "-m", "hotcopy", "agent", "status", "--config", str(path)]
    document = json.loads(subprocess.run([*argv, "--json"], capture_output=True, text=True,
                                         check=True, timeout=60).stdout)
    assert document["jobs"][0]["bytes_done"] == 3_000_000
    text = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"}).stdout
    assert f"job {job.id} running db1 -> db2 at step pull (running); 3.0 MB of 12.0 MB " \
           "(25%) copied" in " ".join(text.split()), text
    journal.close()
