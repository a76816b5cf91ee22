"""Every "bad input" refusal of `hotcopy clone`, against the real shard.

Each refusal must exit 2, say on stderr what is wrong, where, and what to do, and leave
the fleet exactly as it was: no job left open, the source replicating, no snapshot or
staging directory, the target still running on its own datadir. Both the confirmed run
(`--yes`) and the plan (`--dry-run`) are held to that.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy import config as config_module
from hotcopy.mysql.server import Server
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo

from .helpers import has_schema, hotcopy, leftovers, mark_local, runtime, wait_for, wait_replicating

MARKER = "refusal_target_marker"
TERMINAL = {"committed", "rolled-back", "failed", "refused"}
#: rich wraps at 80 columns off a terminal; wide lines keep failure output readable.
WIDE = {"COLUMNS": "200"}
MODES = ("--dry-run", "--yes")


# -- running the CLI and checking what it left ----------------------------------------


def jobs(config: Path) -> list[dict[str, Any]]:
    proc = hotcopy("jobs", "--config", str(config), "--json", "--limit", "500")
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def clone(config: Path, source: str, target: str, mode: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return hotcopy("clone", "--config", str(config), "--source", source, "--target", target,
                   mode, env={**WIDE, **(env or {})}, timeout=120)


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str,
                   secrets: tuple[str, ...] = ()) -> str:
    """Exit 2 and every needle on stderr; no traceback, no secret anywhere in the output."""
    stderr = " ".join(proc.stderr.split())
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}\n{proc.stdout}"
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in stderr, f"{needle!r} missing from:\n{proc.stderr}"
    for secret in secrets:
        assert secret not in proc.stderr + proc.stdout
    return stderr


def known_jobs(info: SandboxInfo) -> set[str]:
    with SqliteJournal(config_module.load(info.config_path).journal_path()) as journal:
        return {job.id for job in journal.list_jobs(limit=10_000)}


def assert_unchanged(info: SandboxInfo, known: set[str], yes_started: float | None, *,
                     source_sql: bool = True, open_job: str | None = None,
                     marker: bool = True) -> None:
    """Nothing on the shard moved; a refused --yes run leaves at most a failed job, no undo."""
    after = jobs(info.config_path)
    still_open = [j["job"] for j in after if j["state"] not in TERMINAL and j["job"] != open_job]
    assert still_open == [], after
    new = [j for j in after if j["job"] not in known]
    assert len(new) <= 1, new
    with SqliteJournal(config_module.load(info.config_path).journal_path()) as journal:
        for job in new:
            assert job["state"] == "refused", job  # as its exit code 2 said
            assert yes_started is not None and job["created"] >= yes_started, \
                "a dry run must not create a job"
            assert journal.undo_entries(job["job"]) == [], job
    rt = runtime(info)
    try:
        status = rt.server("replica1").one(("SHOW SLAVE STATUS", ()))
        assert status is not None
        assert (status["Slave_SQL_Running"] == "Yes") is source_sql, status
        assert rt.mysqld("replica2").is_running()
        if marker:
            assert has_schema(rt.server("replica2"), MARKER), "target left its datadir"
    finally:
        rt.close()
    assert leftovers(info) == []


def refuse(info: SandboxInfo, source: str, target: str, *needles: str,
           config: Path | None = None, env: dict[str, str] | None = None,
           modes: tuple[str, ...] = MODES, secrets: tuple[str, ...] = (),
           source_sql: bool = True, open_job: str | None = None,
           marker: bool = True) -> list[str]:
    """Run the clone in each mode, expect the refusal each time, then check nothing changed.

    The plan runs first, so a job that appears can only belong to the confirmed run.
    """
    known, yes_started, messages = known_jobs(info), None, []
    for mode in modes:
        if mode == "--yes":
            yes_started = time.time()
        proc = clone(config or info.config_path, source, target, mode, env)
        messages.append(assert_refused(proc, *needles, secrets=secrets))
    assert_unchanged(info, known, yes_started, source_sql=source_sql, open_job=open_job,
                     marker=marker)
    return messages


# -- configs derived from the sandbox's own ---------------------------------------------


def edited_config(info: SandboxInfo, directory: Path, edits: dict[tuple[str, str], str | None],
                  *, append: str = "", name: str = "hotcopy.toml") -> Path:
    """The sandbox config with ``{(table, key): value or None to delete}`` applied."""
    section, lines = "", []
    for line in info.config_path.read_text().splitlines():
        header = re.fullmatch(r"\[([^\]]+)\]", line.strip())
        if header:
            section = header.group(1)
        key = line.split("=", 1)[0].strip() if "=" in line else None
        if key is None or (section, key) not in edits:
            lines.append(line)
        elif (value := edits[(section, key)]) is not None:
            lines.append(f"{key} = {value}")
    path = directory / name
    path.write_text("\n".join(lines) + "\n" + append)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin_password(info: SandboxInfo) -> str:
    match = re.search(r"^password\s*=\s*(.+)$", info.admin_option_file.read_text(), re.M)
    assert match
    return match.group(1).strip()


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard(sandbox: SandboxInfo) -> Iterator[SandboxInfo]:
    """The session shard, with a marker that exists only on the target's current datadir."""
    rt = runtime(sandbox)
    target = rt.server("replica2")
    mark_local(target, MARKER)
    try:
        yield sandbox
    finally:
        session = target.new_session()
        try:
            session.execute("SET SESSION sql_log_bin = 0")
            session.execute(f"DROP DATABASE IF EXISTS {MARKER}")
        finally:
            session.close()
        rt.close()


# -- 1. the config file -------------------------------------------------------------------


def test_missing_config_file(shard: SandboxInfo, tmp_path: Path) -> None:
    missing = tmp_path / "no-such.toml"
    refuse(shard, "replica1", "replica2", f"config file {missing} does not exist", "--config",
           config=missing)


def test_invalid_toml(shard: SandboxInfo, tmp_path: Path) -> None:
    lines = shard.config_path.read_text().splitlines()
    broken = lines.index("[servers.replica1]")
    lines[broken] = "[servers.replica1"
    path = tmp_path / "broken.toml"
    path.write_text("\n".join(lines) + "\n")
    refuse(shard, "replica1", "replica2", f"{path} is not valid TOML", f"line {broken + 1}",
           config=path)


@pytest.mark.parametrize(("table", "key", "typo", "meant"), [
    ("servers.replica1", "snapshot", "snapshto", "snapshot"),
    ("clone", None, "max_source_lag", "max_source_lag_s"),
])
def test_unknown_key_is_named_with_a_suggestion(shard: SandboxInfo, tmp_path: Path, table: str,
                                                key: str | None, typo: str, meant: str) -> None:
    if key is None:
        path = edited_config(shard, tmp_path, {}, append=f"\n[{table}]\n{typo} = 5\n")
    else:
        text = shard.config_path.read_text()
        head, _, tail = text.partition(f"[{table}]\n")
        path = tmp_path / "typo.toml"
        path.write_text(head + f"[{table}]\n" + tail.replace(f"{key} =", f"{typo} =", 1))
    refuse(shard, "replica1", "replica2", f"{path} is invalid", f"{table}.{typo}: unknown key",
           f"did you mean '{meant}'", config=path)


def test_missing_required_key(shard: SandboxInfo, tmp_path: Path) -> None:
    path = edited_config(shard, tmp_path, {("servers.replica2", "datadir"): None})
    stderr = refuse(shard, "replica1", "replica2", "servers.replica2.datadir: required key is "
                    "missing", config=path)[0]
    assert "servers.replica1.datadir" not in stderr


def test_wrong_type(shard: SandboxInfo, tmp_path: Path) -> None:
    path = edited_config(shard, tmp_path, {("servers.replica1", "port"): '"abc"'})
    refuse(shard, "replica1", "replica2", "servers.replica1.port:", "valid integer",
           "(got 'abc')", config=path)


def test_option_file_that_does_not_exist(shard: SandboxInfo, tmp_path: Path) -> None:
    missing = tmp_path / "gone.cnf"
    path = edited_config(shard, tmp_path, {("mysql", "option_file"): f'"{missing}"'})
    refuse(shard, "replica1", "replica2", f"mysql.option_file in {path}: {missing} does not "
           "exist", "user= and password=", config=path)


# -- 2. server names ----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["source", "target"])
def test_unknown_server_lists_the_known_ones(shard: SandboxInfo, role: str) -> None:
    source, target = ("replica9", "replica2") if role == "source" else ("replica1", "replica9")
    refuse(shard, source, target, "unknown server 'replica9'", "no servers.replica9 section",
           "master, replica1, replica2")


def test_source_equals_target(shard: SandboxInfo) -> None:
    refuse(shard, "replica1", "replica1", "source and target are the same server (replica1)",
           "--target names the replica to re-seed")


# -- 3-5. the source ---------------------------------------------------------------------


def test_master_as_source(shard: SandboxInfo) -> None:
    refuse(shard, "master", "replica2", "source master is not a replica",
           "pass one of the shard's replicas as --source")


def test_source_with_replication_stopped(shard: SandboxInfo) -> None:
    rt = runtime(shard)
    source = rt.server("replica1")
    try:
        source.execute(("STOP SLAVE SQL_THREAD", ()))
        refuse(shard, "replica1", "replica2", "replication on source replica1 is not running",
               "SQL thread No", "START SLAVE", source_sql=False)
    finally:
        source.execute(("START SLAVE SQL_THREAD", ()))
        wait_replicating(source, rt.server("master"), timeout=60)
        rt.close()


def _seconds_behind(server: Server) -> int:
    status = server.one(("SHOW SLAVE STATUS", ()))
    return int((status or {}).get("Seconds_Behind_Master") or 0)


def test_source_lagging_beyond_the_limit(shard: SandboxInfo, tmp_path: Path) -> None:
    path = edited_config(shard, tmp_path, {}, append="\n[clone]\nmax_source_lag_s = 1\n")
    rt = runtime(shard)
    master, source = rt.server("master"), rt.server("replica1")
    try:
        source.execute(("STOP SLAVE", ()))
        source.execute(("CHANGE MASTER TO MASTER_DELAY = 60", ()))
        source.execute(("START SLAVE", ()))
        master.execute(("CREATE DATABASE IF NOT EXISTS refusal_lag", ()))
        assert wait_for(lambda: _seconds_behind(source) >= 3, timeout=30), "no lag appeared"
        messages = refuse(shard, "replica1", "replica2", "source replica1 is",
                          "behind its master (limit clone.max_source_lag_s = 1)",
                          f"raise clone.max_source_lag_s in {path}", config=path)
        lags = [int(lag) for lag in re.findall(r"is (\d+)s behind", " ".join(messages))]
        assert len(lags) >= 2 and min(lags) > 1, messages
    finally:
        source.execute(("STOP SLAVE", ()))
        source.execute(("CHANGE MASTER TO MASTER_DELAY = 0", ()))
        source.execute(("START SLAVE", ()))
        master.execute(("DROP DATABASE IF EXISTS refusal_lag", ()))
        wait_replicating(source, master, timeout=60)
        rt.close()


# -- 6. the target ------------------------------------------------------------------------


def test_master_as_target(shard: SandboxInfo) -> None:
    refuse(shard, "replica1", "master", "target master is the shard's master",
           "pass a replica as --target")


def _dump_threads(server: Server) -> dict[int, str]:
    rows = server.query(server.flavor.binlog_dump_threads())
    return {int(row["ID"]): str(row["HOST"]) for row in rows}


def test_target_with_a_replica_of_its_own(shard: SandboxInfo) -> None:
    rt = runtime(shard)
    target = rt.server("replica2")
    before = _dump_threads(target)
    first_log = str(target.query(("SHOW BINARY LOGS", ()))[0]["Log_name"])
    address = shard.address("replica2")
    client = subprocess.Popen(
        ["timeout", "120", "mariadb-binlog", f"--defaults-extra-file={shard.admin_option_file}",
         f"--host={address.host}", f"--port={address.port}", "--read-from-remote-server",
         "--stop-never", "--stop-never-slave-server-id=4242", first_log],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert wait_for(lambda: len(_dump_threads(target)) > len(before), timeout=20), \
            client.stderr.read() if client.poll() is not None and client.stderr else "no dump"
        new = {i: h for i, h in _dump_threads(target).items() if i not in before}
        refuse(shard, "replica1", "replica2", "target replica2 has 1 replica(s) of its own",
               *new.values(), "re-point them", "KILL")
    finally:
        os.killpg(client.pid, signal.SIGKILL)
        client.wait(timeout=30)
        if client.stderr:
            client.stderr.close()
        for thread in set(_dump_threads(target)) - set(before):
            target.execute(("KILL %s", (thread,)))
        assert wait_for(lambda: set(_dump_threads(target)) <= set(before), timeout=20)
        rt.close()


# -- 7. credentials and reachability -----------------------------------------------------


def test_wrong_credentials(shard: SandboxInfo, tmp_path: Path) -> None:
    wrong_password = "Wr0ng-pa55-7f3a9c"
    option_file = tmp_path / "wrong.cnf"
    text = re.sub(r"(?m)^password\s*=.*$", f"password = {wrong_password}",
                  shard.admin_option_file.read_text())
    option_file.write_text(text)
    option_file.chmod(0o600)
    path = edited_config(shard, tmp_path, {("mysql", "option_file"): f'"{option_file}"'})
    port = shard.ports["replica1"]
    secrets = (wrong_password, admin_password(shard))
    refuse(shard, "replica1", "replica2", f"source replica1 (127.0.0.1:{port}): access denied",
           str(option_file), "mysql.option_file", config=path, secrets=secrets)
    journal_text = json.dumps(jobs(shard.config_path))
    assert not any(secret in journal_text for secret in secrets)


@pytest.mark.parametrize(("role", "name"), [("source", "replica1"), ("target", "replica2")])
def test_unreachable_server(shard: SandboxInfo, tmp_path: Path, role: str, name: str) -> None:
    port = free_port()
    path = edited_config(shard, tmp_path, {(f"servers.{name}", "port"): str(port)})
    refuse(shard, "replica1", "replica2", f"{role} {name} (127.0.0.1:{port}): cannot connect",
           "connection refused", f"is mysqld running on {name}", f"servers.{name}", config=path,
           secrets=(admin_password(shard),))


# -- 8-9. filesystems -------------------------------------------------------------------


# A datadir on no snapshot-capable filesystem falls back to mariabackup; with neither,
# the refusal is tested in test_backup_fallback.py
# (test_refused_when_no_snapshot_and_no_backup_tool).


def test_not_enough_free_space_on_the_target(shard: SandboxInfo) -> None:
    ship = int(_plan(shard)["facts"]["ship_bytes"])
    mount = shard.datadir("replica2").parent
    filler = mount / "refusal-filler.bin"
    free_before = _free(mount)
    try:
        subprocess.run(["fallocate", "-l", str(free_before - ship // 2), str(filler)], check=True)
        assert _free(mount) < ship
        refuse(shard, "replica1", "replica2", f"target replica2: {mount} has",
               "free but the copy needs", "clone.free_space_margin = 10%", "free at least")
    finally:
        filler.unlink(missing_ok=True)
        subprocess.run(["btrfs", "filesystem", "sync", str(mount)], check=False)
        assert wait_for(lambda: _free(mount) > free_before - ship, timeout=30)


def _plan(info: SandboxInfo) -> dict[str, Any]:
    proc = hotcopy("clone", "--config", str(info.config_path), "--source", "replica1",
                   "--target", "replica2", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    plan: dict[str, Any] = json.loads(proc.stdout)
    return plan


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# -- 10. another job --------------------------------------------------------------------


def test_latency_throttle_with_a_method_that_cannot_change_its_rate(
        shard: SandboxInfo, tmp_path: Path) -> None:
    path = edited_config(shard, tmp_path, {}, append=(
        '\n[transfer]\nmethod = "rsyncd"\nmax_source_latency_factor = 1.5\n'))
    refuse(shard, "replica1", "replica2", "transfer method rsyncd",
           "cannot change its rate while it runs",
           "transfer.max_source_latency_factor needs (the stream method can)", config=path)


def test_latency_probe_table_without_an_integer_key(shard: SandboxInfo, tmp_path: Path) -> None:
    path = edited_config(shard, tmp_path, {}, append=(
        '\n[transfer]\nmax_source_latency_factor = 2\nlatency_probe_table = "app.missing"\n'))
    refuse(shard, "replica1", "replica2", "transfer.latency_probe_table app.missing on replica1",
           "needs a primary key of one integer column (no such table", config=path)


def test_delta_reseed_with_a_method_that_ships_whole_files(
        shard: SandboxInfo, tmp_path: Path) -> None:
    path = edited_config(shard, tmp_path, {}, append=(
        '\n[transfer]\nmethod = "stream"\n\n[clone]\ndelta = "on"\n'))
    refuse(shard, "replica1", "replica2", 'clone.delta = "on" cannot be honoured',
           "the stream method ships whole files", 'set clone.delta = "auto"', config=path)


def test_clone_refused_while_another_job_holds_the_servers(shard: SandboxInfo) -> None:
    config, known = shard.config_path, known_jobs(shard)
    killed = clone(config, "replica1", "replica2", "--yes",
                   env={"HOTCOPY_FAULT": "kill-after:lock_job"})
    running = [j for j in jobs(config) if j["state"] == "running" and j["job"] not in known]
    try:
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert len(running) == 1 and running[0]["source"] == "replica1", running
        job = running[0]["job"]
        for source, target, modes in (("replica1", "replica2", MODES),
                                      ("replica2", "replica1", ("--yes",))):
            refuse(shard, source, target, f"job {job} (running, replica1 → replica2) is still "
                   "working on replica1, replica2", "controller", "is gone",
                   f"hotcopy rollback --config {config} {job}", open_job=job, modes=modes)
    finally:
        for row in running:
            undone = hotcopy("rollback", "--config", str(config), row["job"])
            assert undone.returncode == 0, undone.stderr
    assert {j["job"]: j["state"] for j in jobs(config)}[job] == "rolled-back"
    assert [f for f in _plan(shard)["findings"] if f["severity"] == "error"] == []
    assert_unchanged(shard, known_jobs(shard), None)


# -- 11. rehearsal faults ---------------------------------------------------------------


@pytest.mark.parametrize(("spec", "needles"), [
    ("bogus", ("HOTCOPY_FAULT: cannot read 'bogus'", "kill-after:STEP")),
    ("kill-after:lokc_job", ("'kill-after:lokc_job' names no step", "lock_job")),
    ("kill-during:pull:1.5", ("'kill-during:pull:1.5' would never fire", "(0, 1]")),
])
def test_bad_fault_spec(shard: SandboxInfo, spec: str, needles: tuple[str, ...]) -> None:
    refuse(shard, "replica1", "replica2", *needles, env={"HOTCOPY_FAULT": spec})


@pytest.mark.parametrize("mode", ["--dry-run", "--yes"])
def test_fault_spec_with_a_fraction_that_is_no_number(shard: SandboxInfo, mode: str) -> None:
    refuse(shard, "replica1", "replica2", "kill-during", "must be a number",
           env={"HOTCOPY_FAULT": "kill-during:pull:abc"}, modes=(mode,))
