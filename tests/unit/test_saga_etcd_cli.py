"""The etcd journal seen from the CLI: unreachable, wrong credentials, bad TLS (exit 2,
nothing changed, no secret anywhere), and `hotcopy locks` on both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import hotcopy
from hotcopy.saga import JobState, Journal, SqliteJournal
from tests.etcd_cluster import EtcdCluster, free_ports, require_etcd, unique_prefix
from tests.journals import JournalStore

SECRET = "s3cret-Pa55-do-not-log"


def write_config(tmp_path: Path, journal: str) -> Path:
    option_file = tmp_path / "admin.cnf"
    option_file.write_text("[client]\nuser=root\npassword=x\n")
    option_file.chmod(0o600)
    config = tmp_path / "hotcopy.toml"
    config.write_text(f"""
[shard]
name = "s1"
[mysql]
option_file = "{option_file}"
[journal]
{journal}
[servers.db1]
host = "127.0.0.1"
port = 3307
datadir = "/nonexistent/db1"
defaults_file = "/nonexistent/db1.cnf"
[servers.db2]
host = "127.0.0.1"
port = 3308
datadir = "/nonexistent/db2"
defaults_file = "/nonexistent/db2.cnf"
""")
    return config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(hotcopy.__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "hotcopy", "-vv", *args], capture_output=True,
                          text=True, timeout=120, env=env, check=False)


@pytest.mark.etcd
def test_unreachable_etcd_at_start_is_refused_naming_every_endpoint(tmp_path: Path) -> None:
    ports = free_ports(2)
    endpoints = [f"http://127.0.0.1:{p}" for p in ports]
    config = write_config(tmp_path, f'backend = "etcd"\nendpoints = {json.dumps(endpoints)}\n'
                                    "retry_rounds = 1\ntimeout_s = 1")
    proc = run("clone", "--config", str(config), "--source", "db1", "--target", "db2", "--yes")
    assert proc.returncode == 2, proc.stderr
    assert "the etcd journal is unreachable" in proc.stderr
    assert "nothing was changed" in proc.stderr
    for endpoint in endpoints:
        assert f"{endpoint}: ConnectionRefusedError" in proc.stderr


@pytest.fixture(scope="module")
def etcd_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    etcd = require_etcd()
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-auth"), 1).start()
    try:
        ctl = [str(Path(etcd).with_name("etcdctl")), "--endpoints", cluster.endpoints[0]]
        env = {**os.environ, "ETCDCTL_API": "3"}
        for args in (["user", "add", "root", "--new-user-password", SECRET],
                     ["user", "grant-role", "root", "root"], ["auth", "enable"]):
            subprocess.run([*ctl, *args], check=True, capture_output=True, env=env, timeout=30)
        yield cluster
    finally:
        cluster.stop()


def auth_config(tmp_path: Path, cluster: EtcdCluster, password: str, mode: int = 0o600) -> Path:
    auth = tmp_path / "etcd.cnf"
    auth.write_text(f"[etcd]\nuser = root\npassword = {password}\n")
    auth.chmod(mode)
    return write_config(tmp_path, f'backend = "etcd"\nendpoints = ["{cluster.endpoints[0]}"]\n'
                                  f'auth_file = "{auth}"')


@pytest.mark.etcd
def test_wrong_credentials_are_refused_and_no_secret_is_shown(
    etcd_with_auth: EtcdCluster, tmp_path: Path,
) -> None:
    wrong = "wrong-" + SECRET
    config = auth_config(tmp_path, etcd_with_auth, wrong)
    proc = run("jobs", "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    assert "refused the credentials of user 'root'" in proc.stderr
    assert wrong not in proc.stderr + proc.stdout
    assert SECRET not in proc.stderr + proc.stdout

    config = auth_config(tmp_path, etcd_with_auth, SECRET)
    proc = run("jobs", "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    assert SECRET not in proc.stderr + proc.stdout  # -vv logs every request: never the secret


@pytest.mark.etcd
def test_an_auth_file_others_can_read_is_refused(
    etcd_with_auth: EtcdCluster, tmp_path: Path,
) -> None:
    config = auth_config(tmp_path, etcd_with_auth, SECRET, mode=0o644)
    proc = run("jobs", "--config", str(config))
    assert proc.returncode == 2
    assert "readable by others" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


@pytest.mark.etcd
def test_tls_to_a_plain_etcd_is_refused(etcd_single: EtcdCluster, tmp_path: Path) -> None:
    endpoint = etcd_single.endpoints[0].replace("http://", "https://")
    config = write_config(tmp_path, f'backend = "etcd"\nendpoints = ["{endpoint}"]')
    proc = run("jobs", "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    assert "TLS with etcd at" in proc.stderr


def test_locks_lists_holder_job_and_lease(journal_store: JournalStore, tmp_path: Path) -> None:
    if journal_store.backend == "sqlite":
        config = write_config(tmp_path, f'path = "{journal_store.path}"')
    else:
        config = write_config(tmp_path, f'backend = "etcd"\n'
                                        f'endpoints = {json.dumps(journal_store.endpoints)}\n'
                                        f'prefix = "{journal_store.prefix}"')
    holder: Journal = journal_store.open()
    job = holder.create_job("clone", {"source": "db1", "target": "db2"})
    holder.claim_job(job.id, "ctl-7", 777)
    holder.acquire_locks(job.id, ["server:db1", "server:db2"])
    proc = run("locks", "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["resource"] for r in rows] == ["server:db1", "server:db2"]
    for row in rows:
        assert (row["job"], row["job_state"], row["host"], row["pid"]) == (
            job.id, "running", "ctl-7", 777)
        if journal_store.backend == "etcd":
            assert 0 < row["lease_remaining_s"] <= journal_store.lease_ttl_s
        else:
            assert row["lease_remaining_s"] is None
    table = run("locks", "--config", str(config))
    assert table.returncode == 0 and "server:db1" in table.stdout and "ctl-7" in table.stdout


@pytest.mark.etcd
def test_switching_to_etcd_is_refused_while_sqlite_has_unfinished_jobs(
    etcd_single: EtcdCluster, tmp_path: Path,
) -> None:
    sqlite_path = tmp_path / "journal.sqlite"
    old = SqliteJournal(sqlite_path)
    unfinished = old.create_job("clone", {})
    finished = old.create_job("clone", {})
    old.set_job_state(finished.id, JobState.ROLLED_BACK)
    old.close()
    etcd = (f'backend = "etcd"\nendpoints = ["{etcd_single.endpoints[0]}"]\n'
            f'path = "{sqlite_path}"\nprefix = "{unique_prefix()}"')
    config = write_config(tmp_path, etcd)
    proc = run("jobs", "--config", str(config))
    assert proc.returncode == 2
    assert f"1 unfinished job(s): {unfinished.id} (running)" in proc.stderr
    assert finished.id not in proc.stderr

    old = SqliteJournal(sqlite_path)  # the operator finishes it on SQLite first
    old.claim_job(unfinished.id, "ctl", os.getpid())
    old.set_job_state(unfinished.id, JobState.ROLLED_BACK)
    old.close()
    proc = run("jobs", "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
