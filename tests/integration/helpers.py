"""Shared helpers of the integration tests: run the real CLI, inspect the real shard."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hotcopy import config as config_module
from hotcopy.mysql import replication
from hotcopy.mysql.server import Server
from hotcopy.runtime import Runtime
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo


def hotcopy(*args: str, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI in a fresh process, as an operator would."""
    full_env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "hotcopy", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, check=False)


Completed = subprocess.CompletedProcess[str]


def clone_json(info: SandboxInfo, source: str, target: str, *extra: str,
               env: dict[str, str] | None = None,
               config: Path | None = None) -> tuple[Completed, dict[str, Any]]:
    proc = hotcopy("clone", "--config", str(config or info.config_path), "--source", source,
                   "--target", target, "--yes", "--json", *extra, env=env)
    try:
        document = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        document = {}
    return proc, document


def with_etcd_journal(info: SandboxInfo, endpoints: list[str], prefix: str, *,
                      lease_ttl_s: int, timeout_s: float = 2,
                      retry_rounds: int | None = None) -> str:
    """The sandbox's config text with its [journal] on etcd instead of the SQLite file."""
    journal = (f'[journal]\nbackend = "etcd"\nendpoints = {json.dumps(endpoints)}\n'
               f'prefix = "{prefix}"\nlease_ttl_s = {lease_ttl_s}\ntimeout_s = {timeout_s}\n')
    if retry_rounds is not None:
        journal += f"retry_rounds = {retry_rounds}\n"
    text, n = re.subn(r"\[journal\]\npath = [^\n]*\n", journal, info.config_path.read_text())
    assert n == 1, "the sandbox config has no [journal] path to replace"
    return text


def runtime(info: SandboxInfo) -> Runtime:
    return Runtime(config_module.load(info.config_path))


def wait_replicating(server: Server, master: Server, timeout: float = 120) -> None:
    """Caught up, and both threads running: an IO thread told START SLAVE a moment ago
    says "Connecting" until the master has answered, even when nothing is left to apply."""
    replication.wait_caught_up(server, master, timeout_s=timeout)
    wait_for(lambda: (s := replication.single_channel(server)) is not None and s.running,
             timeout=30)
    status = replication.single_channel(server)
    assert status is not None and status.running, status


def job_id_from(proc: subprocess.CompletedProcess[str], info: SandboxInfo) -> str:
    jobs = json.loads(hotcopy("jobs", "--config", str(info.config_path), "--json").stdout)
    return str(jobs[0]["job"])


def leftovers(info: SandboxInfo) -> list[str]:
    """Everything a finished or rolled-back job must not leave behind."""
    found: list[str] = []
    for name in info.replicas:
        mount = info.datadir(name).parent
        for entry in mount.iterdir():
            if entry.name.startswith(".hotcopy") or ".hotcopy-" in entry.name:
                found.append(str(entry))
        for entry in mount.parent.iterdir():
            if ".hotcopy-" in entry.name:
                found.append(str(entry))
        subvolumes = subprocess.run(["btrfs", "subvolume", "list", "-o", str(mount)],
                                    capture_output=True, text=True, check=False).stdout
        for line in subvolumes.splitlines():
            if "hotcopy" in line:
                found.append(f"subvolume {line}")
    job_ids = [job.id for job in SqliteJournal(runtime(info).config.journal_path()).list_jobs()]
    state_dir = Path("/run/hotcopy")
    if state_dir.exists():
        found += [str(e) for e in state_dir.iterdir() if any(j in e.name for j in job_ids)]
    processes = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True,
                               check=False).stdout
    found += [f"process {line}" for line in processes.splitlines()
              if any(j in line for j in job_ids)]
    return found


def sql_thread_running(server: Server) -> bool:
    status = replication.single_channel(server)
    return status is not None and status.sql_running == "Yes"


def no_backup_lock(server: Server) -> bool:
    """A write that needs the commit lock goes through quickly: nobody holds BLOCK_COMMIT."""
    session = server.new_session()
    try:
        session.execute("SET SESSION lock_wait_timeout = 5, sql_log_bin = 0")
        session.execute("CREATE DATABASE IF NOT EXISTS hotcopy_probe")
        session.execute("CREATE TABLE IF NOT EXISTS hotcopy_probe.t (id INT PRIMARY KEY)")
        session.execute("REPLACE INTO hotcopy_probe.t VALUES (1)")
        session.execute("DROP DATABASE hotcopy_probe")
        return True
    finally:
        session.close()


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def mark_local(server: Server, marker: str) -> None:
    """A table that exists only on this server's current datadir (not replicated)."""
    session = server.new_session()
    try:
        session.execute("SET SESSION sql_log_bin = 0")
        session.execute(f"CREATE DATABASE IF NOT EXISTS {marker}")
    finally:
        session.close()


def has_schema(server: Server, name: str) -> bool:
    return bool(server.scalar(("SELECT COUNT(*) FROM information_schema.SCHEMATA "
                               "WHERE SCHEMA_NAME = %s", (name,))))


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a `hotcopy agent run` (it finishes or hands back what it runs), bounded."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise


def stopped(pid: int) -> bool:
    """The process is SIGSTOPped (a clone paused by HOTCOPY_FAULT=pause-*)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return False
