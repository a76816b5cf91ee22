"""ZFS end to end on Debian's zfs-fuse: snapshots, rsyncd and zfs send/recv transfers.

The module takes a sandbox of its own whose datadirs are datasets' mountpoints (one
pool per server on a sparse file), clones under write load with each transfer that
fits a ZFS snapshot, kills the controller in the middle of a transfer and rolls back
from a fresh process, and sends incrementally from a snapshot both hosts share.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.hosts import LocalExecutor
from hotcopy.loadgen import WriteLoad
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.mysql.mysqld import MysqldControl
from hotcopy.saga import JobState, SqliteJournal
from hotcopy.sandbox import SandboxInfo
from hotcopy.sandbox.layout import load_state
from hotcopy.snapshot import zfs
from hotcopy.snapshot.zfs import BACKEND

from ..real_parts import needs
from .conftest import own_sandbox
from .helpers import (
    clone_json,
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    runtime,
    sql_thread_running,
    wait_replicating,
)
from .test_security import assert_method_kept_its_secrets

METHODS = ("rsyncd", "zfs_send")
#: Slow enough that dd reports progress (once a second) before the stream ends, so a
#: kill at half the transfer lands in the middle of it.
KILL_BWLIMIT_KBPS = 4000


def _zfs_missing() -> str | None:
    if shutil.which("zfs-fuse") is None or shutil.which("zfs") is None:
        return "zfs-fuse is not installed (apt-get install zfs-fuse)"
    if not Path("/dev/fuse").exists():
        return "zfs-fuse needs /dev/fuse"
    return None


pytestmark = needs(_zfs_missing())


def run(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check,
                          timeout=120).stdout


@pytest.fixture(scope="module")
def zfs_sandbox() -> Iterator[SandboxInfo]:
    with own_sandbox(filesystem="zfs") as info:
        yield info


def pools(info: SandboxInfo) -> list[str]:
    state = load_state(info.directory)
    assert state is not None
    return list(state.extra["zfs_pools"])


def dataset_at(path: Path) -> str:
    """The ZFS dataset mounted exactly at path ("" when none is)."""
    line = run("findmnt", "-n", "-o", "FSTYPE,SOURCE", "-M", str(path), check=False).split()
    return line[1] if len(line) == 2 and line[0] in ("zfs", "fuse.zfs") else ""


def zfs_leftovers(info: SandboxInfo) -> list[str]:
    """hotcopy's snapshots, clones, staging or old datasets, holds, zfs processes."""
    found = []
    for pool in pools(info):
        listing = run("zfs", "list", "-H", "-t", "all", "-o", "name,mountpoint", "-r", pool)
        snapshots = []
        for line in listing.splitlines():
            name, mountpoint = line.split("\t")
            if "@hotcopy-" in name or "hotcopy-snap-" in name or ".hotcopy-" in mountpoint:
                found.append(f"dataset {name} at {mountpoint}")
            if "@" in name:
                snapshots.append(name)
        if snapshots:
            holds = run("zfs", "get", "-H", "-o", "name,value", "userrefs", *snapshots)
            found += [f"hold on {line}" for line in holds.splitlines()
                      if line.split("\t")[1] != "0"]
    mounts = run("findmnt", "-rn", "-o", "TARGET").splitlines()
    found += [f"mount {m}" for m in mounts if str(info.directory) in m and ".hotcopy-" in m]
    processes = run("ps", "-eo", "args").splitlines()
    found += [f"process {p}" for p in processes
              if p.startswith(("zfs send", "zfs recv", "zfs receive"))
              or (p.startswith("socat") and any(pool in p for pool in pools(info)))]
    return found


def step_detail(report: dict[str, Any], name: str) -> str:
    return str(next(s["detail"] for s in report["steps"] if s["name"] == name))


def config_with(info: SandboxInfo, tmp_path: Path, transfer: str) -> Path:
    """The sandbox's config with a [transfer] section added."""
    path = tmp_path / "hotcopy.toml"
    path.write_text(info.config_path.read_text() + f"\n[transfer]\n{transfer}\n")
    return path


def test_backend_says_why_a_directory_off_zfs_cannot_be_snapshotted(tmp_path: Path) -> None:
    reason = BACKEND.unsupported_reason(LocalExecutor(), str(tmp_path))
    assert reason is not None and "not a ZFS dataset" in reason


@pytest.mark.parametrize("method", METHODS)
def test_clone_under_write_load_matches_master(zfs_sandbox: SandboxInfo, method: str) -> None:
    info = zfs_sandbox
    rt = runtime(info)
    master, source, target = (rt.server(n) for n in (info.master, "replica1", "replica2"))
    marker = f"only_on_old_replica2_{method}"
    mark_local(target, marker)
    with WriteLoad(info.address(info.master), rt.config.mysql.option_file) as load:
        proc, report = clone_json(info, "replica1", "replica2", "--transfer", method)
    assert proc.returncode == 0, proc.stderr
    assert load.commits > 50, "the master must have been written during the clone"
    assert report["state"] == "committed"
    assert report["snapshot"]["backend"] == "zfs"
    assert step_detail(report, "serve").startswith(method)
    assert report["bytes_transferred"] > 1_000_000
    assert report["outstanding_undo"] == []

    target.close()
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert not has_schema(target, marker), "the target must run on the new datadir"
    assert dataset_at(info.datadir("replica2")), "the new datadir must be a dataset again"
    assert leftovers(info) == []
    assert zfs_leftovers(info) == []
    rt.close()


@pytest.mark.parametrize("method", METHODS)
def test_kill_mid_transfer_then_rollback_cleans_up(zfs_sandbox: SandboxInfo, method: str,
                                                   tmp_path: Path) -> None:
    info = zfs_sandbox
    rt = runtime(info)
    master, source, target = (rt.server(n) for n in (info.master, "replica1", "replica2"))
    marker = f"kept_by_rollback_{method}"
    mark_local(target, marker)
    old_dataset = dataset_at(info.datadir("replica2"))
    config = config_with(info, tmp_path, f"bwlimit_kbps = {KILL_BWLIMIT_KBPS}")
    proc, _ = clone_json(info, "replica1", "replica2", "--transfer", method, config=config,
                         env={"HOTCOPY_FAULT": "kill-during:pull:0.5"})
    assert proc.returncode == -9, proc.stderr
    job = json.loads(hotcopy("jobs", "--config", str(config), "--json").stdout)[0]
    assert job["state"] == "running"
    assert zfs_leftovers(info), "snapshot, clone and staging stay until rolled back"

    back = hotcopy("rollback", "--config", str(config), job["job"], "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["state"] == "rolled-back"
    assert sql_thread_running(source)
    target.close()
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert has_schema(target, marker), "the target must be back on its own datadir"
    assert dataset_at(info.datadir("replica2")) == old_dataset
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert leftovers(info) == []
    assert zfs_leftovers(info) == []
    rt.close()


def marked_processes(job_id: str) -> dict[int, str]:
    """pid -> command line of the job's transfer processes (HOTCOPY_TRANSFER marker)."""
    needle = f"HOTCOPY_TRANSFER={job_id}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def running_job(journal: SqliteJournal) -> str | None:
    jobs = [job for job in journal.list_jobs() if job.state is JobState.RUNNING]
    return jobs[0].id if jobs else None


def test_zfs_send_sends_again_when_the_stream_breaks(zfs_sandbox: SandboxInfo,
                                                     tmp_path: Path) -> None:
    """The receiving socat dies mid-stream (as when the network drops): no resume token on
    zfs-fuse, so the stream starts over, and the clone still commits."""
    info = zfs_sandbox
    rt = runtime(info)
    master, target = rt.server(info.master), rt.server("replica2")
    config = config_with(info, tmp_path, f"bwlimit_kbps = {KILL_BWLIMIT_KBPS}")
    clone = subprocess.Popen(
        [sys.executable, "-m", "hotcopy", "clone", "--config", str(config), "--source",
         "replica1", "--target", "replica2", "--yes", "--json", "--transfer", "zfs_send"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"})
    journal = SqliteJournal(rt.config.journal_path())
    try:
        broken = None
        deadline = time.monotonic() + 120
        while broken is None and time.monotonic() < deadline and clone.poll() is None:
            job = running_job(journal)
            processes = marked_processes(job) if job else {}
            if any(cmd.startswith("pv ") for cmd in processes.values()):
                time.sleep(1.5)  # bytes are flowing; break the stream in the middle
                listeners = [pid for pid, cmd in marked_processes(str(job)).items()
                             if cmd.startswith("socat") and "-LISTEN:" in cmd]
                for pid in listeners:
                    os.kill(pid, signal.SIGKILL)
                broken = listeners
            time.sleep(0.1)
        out, err = clone.communicate(timeout=600)
    finally:
        if clone.poll() is None:
            clone.kill()
            clone.wait()
    assert broken, "the stream was never seen flowing"
    assert clone.returncode == 0, err
    assert "sending again from the start" in err
    assert json.loads(out)["state"] == "committed"
    target.close()
    wait_replicating(target, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert leftovers(info) == []
    assert zfs_leftovers(info) == []
    rt.close()


def send_and_receive(snapshot: str, dataset: str) -> None:
    """What replication tools (syncoid, zrepl) do: a new dataset from the source's snapshot.

    Into a new name: zfs-fuse often fails a forced receive over an existing dataset.
    """
    sender = subprocess.Popen(["zfs", "send", snapshot], stdout=subprocess.PIPE)
    assert sender.stdout is not None
    try:
        subprocess.run(["zfs", "recv", dataset], stdin=sender.stdout, check=True,
                       timeout=300)
    finally:
        sender.stdout.close()
        assert sender.wait(timeout=60) == 0


def _referenced(snapshot: str) -> int:
    return int(run("zfs", "get", "-Hp", "-o", "value", "referenced", snapshot).strip())


def test_zfs_send_is_incremental_from_a_shared_snapshot(
        zfs_sandbox: SandboxInfo,
        mysqld_control: Callable[[SandboxInfo, str], MysqldControl]) -> None:
    """replica2 was seeded from replica1's @base (as zfs replication tools do); only the
    difference travels, and a failed attempt leaves replica2's dataset as it was."""
    info = zfs_sandbox
    rt = runtime(info)
    master, target = rt.server(info.master), rt.server("replica2")
    source_dataset = dataset_at(info.datadir("replica1"))
    base = f"{source_dataset}@hc-test-base"
    target_ctl = mysqld_control(info, "replica2")
    target.close()
    target_ctl.stop()
    old_dataset = dataset_at(info.datadir("replica2"))
    seeded = f"{old_dataset.split('/')[0]}/seeded"
    made = [base]
    try:
        run("zfs", "snapshot", base)
        send_and_receive(base, seeded)
        made.append(f"{seeded}@hc-test-base")
        zfs.destroy_dataset(LocalExecutor(), old_dataset)  # replica2 lives on the copy now
        run("zfs", "set", f"mountpoint={info.datadir('replica2')}", seeded)
        assert dataset_at(info.datadir("replica2")) == seeded

        proc, report = clone_json(info, "replica1", "replica2", "--transfer", "zfs_send",
                                  env={"HOTCOPY_FAULT": "fail-before:swap_datadir"})
        assert proc.returncode == 1, proc.stderr
        assert report["state"] == "rolled-back"
        assert dataset_at(info.datadir("replica2")) == seeded
        assert run("zfs", "get", "-H", "-o", "value", "origin", seeded).strip() == "-"
        assert zfs_leftovers(info) == []

        proc, report = clone_json(info, "replica1", "replica2", "--transfer", "zfs_send")
        assert proc.returncode == 0, proc.stderr
        assert report["state"] == "committed"
        new_dataset = dataset_at(info.datadir("replica2"))
        assert new_dataset and new_dataset != seeded
        shared = f"{new_dataset}@hc-test-base"
        made[1] = shared
        assert run("zfs", "list", "-H", "-o", "name", shared).strip() == shared, \
            "the new datadir grew from the shared snapshot"
        assert 0 < report["bytes_transferred"] < _referenced(base) / 2
        target.close()
        wait_replicating(target, master)
        assert differing_tables(table_checksums(master), table_checksums(target)) == []
        assert leftovers(info) == []
        assert zfs_leftovers(info) == []
    finally:
        for snapshot in made:
            run("zfs", "destroy", snapshot, check=False)
        if not target_ctl.is_running():
            target_ctl.start(timeout=120)
        rt.close()


def test_zfs_send_keeps_every_secret(zfs_sandbox: SandboxInfo) -> None:
    """zfs_send's token, the admin and replication passwords: in no argv or environment
    sampled every 50 ms, nor in the output at -vv, the journal or the servers' logs."""
    assert_method_kept_its_secrets(zfs_sandbox, "zfs_send")
    assert zfs_leftovers(zfs_sandbox) == []
