"""What a production shard needs before the source is touched, against the real shard.

A transfer that cannot work must be refused by the preflight (exit 2), in the plan and
in the confirmed run, before the source's SQL thread is stopped; a journal directory
that does not exist is refused unless asked for, and read-only commands create nothing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy import config as config_module
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo

from .helpers import hotcopy, leftovers, runtime, sql_thread_running

WIDE = {"COLUMNS": "200"}


def _clone(config: Path, *extra: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return hotcopy("clone", "--config", str(config), "--source", "replica1", "--target",
                   "replica2", *extra, env={**WIDE, **(env or {})}, timeout=180)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _config_with(info: SandboxInfo, directory: Path, replace: dict[str, str],
                 append: str = "") -> Path:
    """The sandbox config with whole lines swapped (``{old line: new line}``)."""
    lines = []
    for line in info.config_path.read_text().splitlines():
        lines.append(replace.get(line.strip(), line))
    path = directory / "hotcopy.toml"
    path.write_text("\n".join(lines) + "\n" + append)
    return path


def _journal_line(info: SandboxInfo) -> str:
    for line in info.config_path.read_text().splitlines():
        if line.strip().startswith("path =") and "journal" in line:
            return line.strip()
    raise AssertionError("the sandbox config names no journal path")


def _jobs(config: Path) -> list[dict[str, Any]]:
    proc = hotcopy("jobs", "--config", str(config), "--json", "--limit", "500")
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


@pytest.fixture(scope="module")
def shard(sandbox: SandboxInfo) -> Iterator[SandboxInfo]:
    yield sandbox
    assert leftovers(sandbox) == []


def _assert_source_untouched(info: SandboxInfo, new_jobs: list[dict[str, Any]]) -> None:
    """The refused run got no further than its preflight: no step touched the source."""
    with SqliteJournal(config_module.load(info.config_path).journal_path()) as journal:
        for job in new_jobs:
            assert job["state"] == "refused", job  # as its exit code 2 said
            assert [s.name for s in journal.steps(job["job"])] == ["preflight"], job
            assert journal.undo_entries(job["job"]) == []
    rt = runtime(info)
    try:
        assert sql_thread_running(rt.server("replica1"))
    finally:
        rt.close()
    assert leftovers(info) == []


def test_forced_transfer_method_that_cannot_work_is_refused_at_preflight(
        shard: SandboxInfo) -> None:
    before = {j["job"] for j in _jobs(shard.config_path)}
    for mode in ("--dry-run", "--yes"):
        proc = _clone(shard.config_path, mode, "--transfer", "zfs_send")
        assert proc.returncode == 2, f"{mode}: exit {proc.returncode}\n{proc.stderr}"
        stderr = _flat(proc.stderr)
        assert "transfer method zfs_send (--transfer) cannot be used" in stderr, proc.stderr
        assert "snapshotted with btrfs" in stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    new = [j for j in _jobs(shard.config_path) if j["job"] not in before]
    assert len(new) == 1, new  # the --yes run; the plan made no job
    _assert_source_untouched(shard, new)


def test_configured_transfer_method_is_named_with_its_key(shard: SandboxInfo,
                                                         tmp_path: Path) -> None:
    config = _config_with(shard, tmp_path, {}, append='\n[transfer]\nmethod = "zfs_send"\n')
    proc = _clone(config, "--dry-run")
    assert proc.returncode == 2, proc.stderr
    assert f"transfer method zfs_send (transfer.method in {config})" in _flat(proc.stderr)


def test_listener_without_a_free_port_in_port_range_is_refused(shard: SandboxInfo,
                                                              tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = _config_with(shard, tmp_path, {},
                              append=f"\n[transfer]\nport_range = [{port}, {port}]\n")
        proc = _clone(config, "--dry-run", "--transfer", "rsyncd")
        assert proc.returncode == 2, proc.stderr
        assert (f"every port of transfer.port_range [{port}, {port}] is in use on replica1"
                in _flat(proc.stderr)), proc.stderr
    # The same range, free now: the plan passes and names the method it will use.
    proc = _clone(config, "--dry-run", "--transfer", "rsyncd")
    assert proc.returncode == 0, proc.stderr
    assert "transfer: rsyncd" in proc.stdout


def test_the_plan_goes_to_stdout_and_names_the_method_auto_picks(shard: SandboxInfo) -> None:
    proc = _clone(shard.config_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "record_position" in proc.stdout and "preflight: no problems found" in proc.stdout
    assert "record_position" not in proc.stderr
    assert "transfer: rsyncd" in proc.stdout  # zfs_send comes first, but this is btrfs
    document = json.loads(_clone(shard.config_path, "--dry-run", "--json").stdout)
    assert document["facts"]["transfer_method"] == "rsyncd"


def test_missing_journal_directory_is_refused_and_nothing_is_created(
        shard: SandboxInfo, tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "journal"
    config = _config_with(shard, tmp_path,
                          {_journal_line(shard): f'path = "{missing}/journal.sqlite"'})
    runs = [
        ("jobs", "--config", str(config)),
        ("show", "--config", str(config), "20260101-000000-abcd"),
        ("rollback", "--config", str(config), "20260101-000000-abcd"),
        ("clone", "--config", str(config), "--source", "replica1", "--target", "replica2",
         "--dry-run"),
        ("clone", "--config", str(config), "--source", "replica1", "--target", "replica2",
         "--dry-run", "--create-journal"),
        ("clone", "--config", str(config), "--source", "replica1", "--target", "replica2",
         "--yes"),
    ]
    for argv in runs:
        proc = hotcopy(*argv, env=WIDE, timeout=120)
        assert proc.returncode == 2, f"{argv}: exit {proc.returncode}\n{proc.stderr}"
        stderr = _flat(proc.stderr)
        assert f"the journal directory {missing} does not exist" in stderr, proc.stderr
        assert "--create-journal" in stderr, proc.stderr
        assert not (tmp_path / "typo").exists(), argv
    assert leftovers(shard) == []


def test_create_journal_makes_a_private_directory(shard: SandboxInfo, tmp_path: Path) -> None:
    missing = tmp_path / "new" / "journal"
    config = _config_with(shard, tmp_path,
                          {_journal_line(shard): f'path = "{missing}/journal.sqlite"'})
    # A rehearsal failure right after the preflight: a real job, nothing changed.
    proc = _clone(config, "--yes", "--create-journal",
                  env={"HOTCOPY_FAULT": "fail-before:lock_job"})
    assert proc.returncode in (1, 2), proc.stderr
    assert stat.S_IMODE(os.stat(missing).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(missing / "journal.sqlite").st_mode) == 0o600
    assert [j["source"] for j in _jobs(config)] == ["replica1"]


def test_read_only_commands_do_not_create_a_journal_file(shard: SandboxInfo,
                                                        tmp_path: Path) -> None:
    directory = tmp_path / "empty"
    directory.mkdir()
    config = _config_with(shard, tmp_path,
                          {_journal_line(shard): f'path = "{directory}/journal.sqlite"'})
    assert _jobs(config) == []
    proc = hotcopy("show", "--config", str(config), "20260101-000000-abcd", env=WIDE)
    assert proc.returncode == 2 and "no job" in proc.stderr, proc.stderr
    assert _clone(config, "--dry-run").returncode == 0
    assert list(directory.iterdir()) == []


# -- a running clone: plain progress lines, `show` of it live, SIGINT acknowledged ------


def _read_until(proc: subprocess.Popen[str], needle: str, seen: list[str],
                limit: int = 400) -> str:
    """Lines of stderr up to the first that contains needle (bounded: EOF or limit)."""
    assert proc.stderr is not None
    for _ in range(limit):
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line and not re.match(r"\S+ \S+ step ", line):  # not a step's own line
            return line
    raise AssertionError(f"{needle!r} never came; stderr so far:\n{''.join(seen)}")


def test_sigint_is_acknowledged_at_once_and_show_follows_the_copy(
        shard: SandboxInfo, tmp_path: Path) -> None:
    """Off a terminal: timestamped lines; SIGINT is answered before the step winds down."""
    # 80 MB at 4 MB/s: the copy is still under way when the test looks at it.
    config = _config_with(shard, tmp_path, {},
                          append="\n[transfer]\nmethod = \"rsyncd\"\nbwlimit_kbps = 4000\n")
    before = {j["job"] for j in _jobs(config)}
    env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
    proc = subprocess.Popen(
        [*_hotcopy_argv(), "clone", "--config", str(config), "--source", "replica1",
         "--target", "replica2", "--yes", "--progress-interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, **WIDE})
    seen: list[str] = []
    try:
        first = _read_until(proc, "pull: ", seen)  # the first reading of the copy
        assert " of " in first and "%" in first, first
        job = next(j["job"] for j in _jobs(config) if j["job"] not in before)
        live = json.loads(hotcopy("show", "--config", str(config), job, "--json").stdout)
        assert live["state"] == "running", live
        assert live["live"]["step"] == "pull" and live["live"]["bytes_done"] is not None, live
        text = hotcopy("show", "--config", str(config), job, env=WIDE).stdout
        assert "running: step pull since" in text and "copied" in text, text
        proc.send_signal(2)
        ack = _read_until(proc, "SIGINT received", seen)
        assert "stopping the current step (pull) safely, then rolling back" in ack, ack
        assert proc.stderr is not None
        rest = proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # the test failed: leave the shard as it was for the rest
            proc.kill()
            proc.wait(timeout=60)
            for row in _jobs(config):
                if row["job"] not in before:
                    hotcopy("rollback", "--config", str(config), row["job"])
    assert proc.returncode == 1, "".join(seen) + rest
    # The acknowledgement came before the step reported its end and before any undo.
    assert "step pull failed" in rest and "undone:" in rest, rest
    assert not any("step pull failed" in line for line in seen)
    row = next(j for j in _jobs(config) if j["job"] == job)
    assert row["state"] == "rolled-back" and "interrupted by SIGINT" in (row["error"] or ""), row
    assert leftovers(shard) == []


def _hotcopy_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "hotcopy"]


def test_a_committed_clone_reports_time_downtime_method_and_pauses(shard: SandboxInfo) -> None:
    proc = hotcopy("clone", "--config", str(shard.config_path), "--source", "replica1",
                   "--target", "replica2", "--yes", "--progress-interval", "0", env=WIDE)
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if " pull: " in line]
    assert progress and "(100%)" in progress[-1] and "MB/s" in progress[-1], proc.stderr
    assert "MiB" not in proc.stderr + proc.stdout  # one unit: decimal MB everywhere
    job = _jobs(shard.config_path)[0]["job"]
    report = json.loads(hotcopy("show", "--config", str(shard.config_path), job,
                                "--json").stdout)
    assert report["transfer_method"] == "rsyncd"
    assert report["verify_source_paused_ms"] is not None
    assert 0 < report["target_downtime_ms"] / 1000 < report["total_s"], report
    steps = {s["name"]: s for s in report["steps"]}
    # The downtime covers the new mysqld's start (the snapshot drop beside it is waited
    # for later, by finish_drop, and is no part of it).
    assert report["target_downtime_ms"] >= (steps["start_target"]["ms"] or 0) - 5, report
    assert report["snapshot_drop_waited_ms"] is not None
    assert report["snapshot_drop_waited_ms"] <= steps["finish_drop"]["ms"] + 1, report
    text = hotcopy("show", "--config", str(shard.config_path), job, env=WIDE).stdout
    for needle in ("total: ", "target downtime: ", "paused again for verify: ",
                   "with rsyncd", "took"):
        assert needle in text, text
    assert not re.search(r"\d{4,}(\.\d)? ms", text), text  # 1.2 s, never 1234.5 ms


def test_the_listener_uses_transfer_port_range(shard: SandboxInfo, tmp_path: Path) -> None:
    """One port allowed: the rsync daemon of a real clone listens on exactly that one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now; nothing else here binds ports by number
    config = _config_with(shard, tmp_path, {}, append=f"\n[transfer]\nmethod = \"rsyncd\"\n"
                                                      f"port_range = [{port}, {port}]\n")
    proc = _clone(config, "--yes", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    serve = next(s for s in report["steps"] if s["name"] == "serve")
    assert serve["detail"] == f"rsyncd on 127.0.0.1:{port}", serve


def test_warnings_are_plain_lines_not_logging_records(shard: SandboxInfo, tmp_path: Path) -> None:
    readable = tmp_path / "admin.cnf"
    readable.write_text(shard.admin_option_file.read_text())
    readable.chmod(0o644)
    text = shard.config_path.read_text().replace(str(shard.admin_option_file), str(readable))
    config = tmp_path / "hotcopy.toml"
    config.write_text(text)
    proc = hotcopy("jobs", "--config", str(config), env=WIDE)
    assert proc.returncode == 0, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"warning: mysql.option_file: {readable} holds a password"), first
    assert "WARNING" not in proc.stderr and "hotcopy.config" not in proc.stderr


# -- hooks around a clone -------------------------------------------------------------


def _hooks(tmp_path: Path, **hooks: list[str]) -> str:
    lines = ["", "[hooks]"] + [f"{name} = {json.dumps(argv)}" for name, argv in hooks.items()]
    return "\n".join(lines) + "\n"


def _env_dump(path: Path) -> list[str]:
    return ["sh", "-c", 'env | grep "^HOTCOPY_" | sort > "$0"', str(path)]


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_clone_hooks_get_the_job_in_their_environment(shard: SandboxInfo,
                                                      tmp_path: Path) -> None:
    dumps = {name: tmp_path / f"{name}.env"
             for name in ("pre_clone", "before_stop_target", "after_commit")}
    config = _config_with(shard, tmp_path, {}, append=_hooks(
        tmp_path, **{name: _env_dump(path) for name, path in dumps.items()}))
    proc = _clone(config, "--yes", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    names = [s["name"] for s in report["steps"]]
    # Journaled steps, each at its point: before the first change, just before the
    # target stops, after the commit.
    assert names.index("hook_pre_clone") < names.index("preflush")
    assert names.index("hook_before_stop_target") == names.index("stop_target") - 1
    assert names[-1] == "hook_after_commit"
    for name, path in dumps.items():
        env = _read_env(path)
        assert env["HOTCOPY_HOOK"] == name and env["HOTCOPY_JOB_ID"] == report["job"], env
        assert env["HOTCOPY_SOURCE"] == "replica1" and env["HOTCOPY_TARGET"] == "replica2"
        assert env["HOTCOPY_TARGET_HOST"] == "127.0.0.1"
        assert env["HOTCOPY_TARGET_PORT"] == str(config_module.load(config).server(
            "replica2").port)
        option_file = config_module.load(config).mysql.option_file
        assert option_file not in path.read_text()  # no secret, not even where it lives


def test_a_failing_pre_clone_hook_refuses_with_nothing_changed(shard: SandboxInfo,
                                                                tmp_path: Path) -> None:
    config = _config_with(shard, tmp_path, {}, append=_hooks(
        tmp_path, pre_clone=["sh", "-c", "echo not now >&2; exit 3"]))
    before = {j["job"] for j in _jobs(config)}
    proc = _clone(config, "--yes")
    assert proc.returncode == 2, proc.stderr
    assert "hook pre_clone failed: exit status 3: not now; nothing was changed" in _flat(
        proc.stderr), proc.stderr
    new = [j for j in _jobs(config) if j["job"] not in before]
    assert [j["state"] for j in new] == ["refused"], new
    with SqliteJournal(config_module.load(config).journal_path()) as journal:
        assert [s.name for s in journal.steps(new[0]["job"])] == [
            "preflight", "lock_job", "hook_pre_clone"]
        assert journal.undo_entries(new[0]["job"]) == []
    assert leftovers(shard) == []


def test_on_rollback_hook_runs_after_the_rollback(shard: SandboxInfo, tmp_path: Path) -> None:
    dump = tmp_path / "on_rollback.env"
    config = _config_with(shard, tmp_path, {}, append=_hooks(
        tmp_path, on_rollback=_env_dump(dump)))
    proc = _clone(config, "--yes", env={"HOTCOPY_FAULT": "fail-before:start_target"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    job = _jobs(config)[0]
    assert job["state"] == "rolled-back"
    env = _read_env(dump)
    assert env["HOTCOPY_HOOK"] == "on_rollback" and env["HOTCOPY_JOB_ID"] == job["job"]
    # It ran after every undo: the target was back on its old datadir by then.
    assert proc.stderr.rfind("undone:") < proc.stderr.find("hook on_rollback")
    assert leftovers(shard) == []
