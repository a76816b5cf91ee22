"""The transfer methods for real: socat streams, rsync over a real sshd, parallel streams.

The first tests drive one method at a time between two directories of this host (no
MariaDB needed); the last ones clone the session sandbox with ``--transfer METHOD``
under write load, and kill the controller in the middle of a transfer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.config import Config
from hotcopy.hosts import LocalExecutor
from hotcopy.loadgen import WriteLoad, seed
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.runtime import Runtime
from hotcopy.sandbox import SandboxInfo, sshd
from hotcopy.transfer.base import (
    MARKER_VARIABLE,
    STATIC_EXCLUDES,
    TransferRequest,
    TransferResult,
    kill_marked,
    list_tree,
    load_method,
    log_excludes,
    shippable,
)

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

EXCLUDES = [*STATIC_EXCLUDES, *log_excludes("/data", ["mysql-bin", "relay-bin"])]
TREE = {"ibdata1": 3_000_000, "ib_logfile0": 1_000_000, "app/orders.ibd": 2_000_000,
        "app/orders.frm": 1_000, "app/db.opt": 60, "mysql/user.MAD": 10_000,
        "mysql/empty.MAI": 0, "deep/a/b/c.ibd": 50_000}
NOT_SHIPPED = ["auto.cnf", "mysql-bin.000001", "mysql-bin.index", "relay-bin.000003",
               "master.info", "db.pid"]


def marked(job_id: str) -> list[str]:
    """The job's transfer processes: listeners, senders, rsync clients and servers.

    By the marker in their environment, and, in case the marker went wrong, by the job
    id in their command line (their work directories and the staging path carry it).
    """
    needle = f"{MARKER_VARIABLE}={job_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if needle in environ.split(b"\0") or job_id.encode() in cmdline:
            found.append(f"{proc.name}: {cmdline.decode(errors='replace')}")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ssh_access(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real sshd on 127.0.0.1 (the sandbox's address); [transfer] settings to reach it."""
    directory = tmp_path_factory.mktemp("sshd")
    key = sshd.client_key(directory / "id_ed25519")
    server = sshd.start(directory / "server", "127.0.0.1", port=free_port(),
                        authorized_key=key)
    known_hosts = sshd.write_known_hosts(directory / "known_hosts", [server])
    try:
        yield {"ssh_port": server.port, "ssh_identity_file": str(key),
               "ssh_known_hosts": str(known_hosts)}
    finally:
        sshd.stop(server.directory)


def make_tree(root: Path) -> Path:
    rng = random.Random(7)
    for name, size in TREE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        half = size // 2  # half random, half zeros: compressible, but not trivially
        path.write_bytes(rng.randbytes(half) + bytes(size - half))
    for name in NOT_SHIPPED:
        (root / name).write_text("must not travel\n")
    (root / "emptydb").mkdir()
    (root / "app").chmod(0o750)
    return root


def digest(root: Path) -> dict[str, str]:
    """Path -> mode and content hash, of everything that should have travelled."""
    found = {}
    for entry in shippable(list_tree(LocalExecutor(), str(root)), EXCLUDES):
        path = root / entry.path
        content = "dir" if entry.is_dir else hashlib.sha256(path.read_bytes()).hexdigest()
        stat = path.stat()
        found[entry.path] = f"{stat.st_mode:o} {stat.st_uid}:{stat.st_gid} {content}"
    return found


def local_runtime(tmp: Path, **transfer: Any) -> Runtime:
    servers = {name: {"host": "127.0.0.1", "port": port, "datadir": "/nonexistent",
                      "defaults_file": "/nonexistent"} for name, port in (("src", 1), ("dst", 2))}
    return Runtime(Config.model_validate({
        "shard": {"name": "t"}, "mysql": {"option_file": "/nonexistent"},
        "transfer": {"state_dir": str(tmp / "state"), **transfer}, "servers": servers}))


def request_for(job: str, source: Path, staging: Path, *, bwlimit: int | None = None,
                retries: int = 1) -> TransferRequest:
    return TransferRequest(job, "src", "dst", "127.0.0.1", "127.0.0.1", str(source),
                           str(staging), EXCLUDES, None, bwlimit, 120, retries)


def transfer(rt: Runtime, name: str, request: TransferRequest,
             on_progress: Callable[[int, int | None, float | None], None] | None = None,
             ) -> TransferResult:
    method = load_method(name)
    assert method.unsupported_reason(rt, request, "btrfs") is None
    handle = method.prepare(rt, request)
    try:
        method.serve(rt, request, handle)
        return method.pull(rt, request, handle, on_progress or (lambda *_: None))
    finally:
        method.stop(rt, handle)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "source")


@pytest.mark.parametrize(("name", "parallel"), [("stream", 1), ("stream", 4), ("rsyncd", 4),
                                                ("rsync_ssh", 1), ("rsync_ssh", 4)])
def test_method_ships_exactly_the_files_that_should_travel(
        tmp_path: Path, tree: Path, ssh_access: dict[str, Any], name: str,
        parallel: int) -> None:
    # Compression is off by default; the four-stream case ships compressed.
    compressed = {"zstd_level": 3} if (name, parallel) == ("stream", 4) else {}
    rt = local_runtime(tmp_path, parallel=parallel, **ssh_access, **compressed)
    staging = tmp_path / "staging"
    staging.mkdir()
    job = f"t{name}{parallel}"
    progress: list[int] = []
    result = transfer(rt, name, request_for(job, tree, staging), lambda d, t, r: progress.append(d))
    assert digest(staging) == digest(tree)
    assert not any((staging / n).exists() for n in NOT_SHIPPED)
    assert result.files_transferred == len(TREE)
    assert result.literal_bytes >= sum(TREE.values())
    assert progress and progress[-1] >= sum(TREE.values())
    assert marked(job) == []
    assert list((tmp_path / "state").iterdir()) == [], "no token, list or secret left"


def _send(port: int, data: bytes, bind: str) -> str:
    out = subprocess.run(["socat", "-t", "5", "-T", "10", "-",
                          f"TCP4:127.0.0.1:{port},bind={bind}"],
                         input=data, capture_output=True, timeout=30, check=False)
    return out.stdout.decode(errors="replace")


def test_stream_listener_rejects_other_addresses_wrong_tokens_and_replays(
        tmp_path: Path, tree: Path) -> None:
    rt = local_runtime(tmp_path)
    staging, evil = tmp_path / "staging", tmp_path / "evil"
    staging.mkdir()
    evil.mkdir()
    (evil / "injected.ibd").write_text("not from the source\n")
    payload = subprocess.run(["sh", "-c", f"tar -c -C {evil} injected.ibd | zstd -q -c"],
                             capture_output=True, check=True).stdout
    request = request_for("tstrangers", tree, staging)
    method = load_method("stream")
    handle = method.prepare(rt, request)
    workdir = Path(handle.params["workdir"])
    try:
        method.serve(rt, request, handle)
        port = int(handle.params["port"])
        token = (workdir / "token").read_text()
        # The right token from another address: socat's range= drops it before any script.
        assert "HOTCOPY-OK" not in _send(port, f"0 zstd {token}\n".encode() + payload,
                                         "127.0.0.2")
        assert "HOTCOPY-OK" not in _send(port, b"0 zstd " + b"0" * 64 + b"\n" + payload,
                                         "127.0.0.1")
        assert list(staging.iterdir()) == []
        assert "refusing connection from AF=2 127.0.0.2" in (workdir / "socat.log").read_text()
        assert "127.0.0.1 bad token" in (workdir / "refused").read_text()

        result = method.pull(rt, request, handle, lambda *_: None)
        assert result.attempts == 1
        assert "HOTCOPY-OK" not in _send(port, f"0 zstd {token}\n".encode() + payload,
                                         "127.0.0.1")
        assert "stream 0 was already received" in (workdir / "refused").read_text()
        assert digest(staging) == digest(tree)
    finally:
        method.stop(rt, handle)
    assert marked("tstrangers") == []
    assert not workdir.exists()


def test_stream_retry_starts_over_with_a_new_listener_and_an_emptied_staging(
        tmp_path: Path, tree: Path) -> None:
    rt = local_runtime(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "stale.ibd").write_text("left by an earlier attempt\n")
    request = request_for("tretry", tree, staging, retries=1)
    method = load_method("stream")
    handle = method.prepare(rt, request)
    try:
        method.serve(rt, request, handle)
        kill_marked(LocalExecutor(), "tretry")  # the listener dies before anything is sent
        result = method.pull(rt, request, handle, lambda *_: None)
    finally:
        method.stop(rt, handle)
    assert result.attempts == 2
    assert digest(staging) == digest(tree)
    assert marked("tretry") == []


def test_stream_answer_that_comes_seconds_after_the_last_byte_still_arrives(
        tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a slow disk tar ends well after the socket's EOF; the OK must still get back.

    A tar ahead on the PATH sleeps 2 s after every extraction, so the receiver answers
    2 s after the sender's last byte, whatever the speed of this machine. socat's own
    default would have closed the connection 0.5 s after that byte.
    """
    slow = tmp_path / "slowbin"
    slow.mkdir()
    real_tar = subprocess.run(["sh", "-c", "command -v tar"], capture_output=True, text=True,
                              check=True).stdout.strip()
    (slow / "tar").write_text(f'#!/bin/sh\n{real_tar} "$@"; rc=$?\n'
                              'case " $* " in *" -x "*) sleep 2 ;; esac\nexit $rc\n')
    (slow / "tar").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}:{os.environ['PATH']}")
    rt = local_runtime(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    result = transfer(rt, "stream", request_for("tslowtar", tree, staging, retries=0))
    assert result.attempts == 1
    assert digest(staging) == digest(tree)
    assert marked("tslowtar") == []


def test_a_running_stream_slows_down_when_the_throttle_says_so(tmp_path: Path) -> None:
    """set_rate reaches the pacing pv of every stream while they run (pv --remote).

    The copy starts paced at 4 MiB/s (so most of it is still to come when the first
    progress arrives, whatever this machine's speed) and is then told 1.5 MiB/s. Only
    the bytes the pacing pv let through before that (what the progress counted, plus
    the pipe buffers upstream of it) can go faster: the rest needs its time at the new
    pace. At the old pace, it would have been over in a third of it.
    """
    root = tmp_path / "source"
    rng = random.Random(11)
    for index in range(3):
        path = root / f"db/t{index}.ibd"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(4 * 2**20))  # incompressible: bytes are bytes
    total = 12 * 2**20
    rt = local_runtime(tmp_path, parallel=2, zstd_level=0, max_source_latency_factor=2)
    staging = tmp_path / "staging"
    staging.mkdir()
    request = request_for("tpace", root, staging, bwlimit=4096)
    method = load_method("stream")
    handle = method.prepare(rt, request)
    told: list[tuple[float, int]] = []

    def on_progress(done: int, total_: int | None, rate: float | None) -> None:
        if not told and done > 0:
            method.set_rate(rt, handle, 1.5 * 2**20)  # type: ignore[attr-defined]
            told.append((time.monotonic(), done))

    try:
        method.serve(rt, request, handle)
        method.pull(rt, request, handle, on_progress)
    finally:
        method.stop(rt, handle)
    ended = time.monotonic()
    assert told, "no progress was reported"
    at, done = told[0]
    still_to_come = total - done - 2**20  # the pipes ahead of the pacing pv hold less
    assert still_to_come > 4 * 2**20, f"only {still_to_come} bytes left to pace"
    assert ended - at >= still_to_come / (1.5 * 2**20), (ended - at, done)
    assert digest(staging) == digest(root)
    assert marked("tpace") == []


@pytest.mark.parametrize("name", ["stream", "rsyncd", "rsync_ssh"])
def test_bandwidth_limit_reaches_the_processes_that_pace_the_data(
        tmp_path: Path, tree: Path, ssh_access: dict[str, Any], name: str) -> None:
    rt = local_runtime(tmp_path, parallel=2, **ssh_access)
    staging = tmp_path / "staging"
    staging.mkdir()
    job = f"tbw{name}"
    seen: set[str] = set()
    secrets: set[str] = set()

    def on_progress(done: int, total: int | None, rate: float | None) -> None:
        seen.update(marked(job))
        for secret in (tmp_path / "state").glob("*/token"):
            secrets.add(secret.read_text())

    transfer(rt, name, request_for(job, tree, staging, bwlimit=2000), on_progress)
    expected = "-L 1024000" if name == "stream" else "--bwlimit=1000"
    assert [p for p in seen if expected in p], seen
    assert digest(staging) == digest(tree)
    assert bool(secrets) == (name == "stream")
    assert not [p for p in seen for secret in secrets if secret in p], "a token in argv"


# -- end to end: clones of the sandbox with each method ----------------------------------


@pytest.fixture(scope="module")
def seeded(sandbox: SandboxInfo) -> SandboxInfo:
    rt = runtime(sandbox)
    seed(sandbox.address(sandbox.master), rt.config.mysql.option_file, 20_000)
    for name in sandbox.replicas:
        wait_replicating(rt.server(name), rt.server(sandbox.master))
    rt.close()
    return sandbox


def with_transfer(info: SandboxInfo, path: Path, **settings: Any) -> Path:
    """The sandbox's config with [transfer] settings added (same journal, same servers)."""
    text = info.config_path.read_text()
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
    if "\n[transfer]\n" in text:
        text = text.replace("\n[transfer]\n", f"\n[transfer]\n{lines}\n", 1)
    else:
        text = text.replace("\n[servers.", f"\n[transfer]\n{lines}\n\n[servers.", 1)
    path.write_text(text)
    return path


def ship_bytes(info: SandboxInfo, name: str) -> int:
    datadir = info.datadir(name)
    excludes = [*STATIC_EXCLUDES, *log_excludes(str(datadir), ["mysql-bin", "relay-bin"])]
    return sum(e.size for e in shippable(list_tree(LocalExecutor(), str(datadir)), excludes))


@pytest.mark.parametrize(("method", "parallel"), [("stream", 1), ("stream", 4),
                                                  ("rsync_ssh", 1), ("rsync_ssh", 4)])
def test_clone_under_write_load_with_method(seeded: SandboxInfo, ssh_access: dict[str, Any],
                                            tmp_path: Path, method: str, parallel: int) -> None:
    config = with_transfer(seeded, tmp_path / "hotcopy.toml", parallel=parallel, **ssh_access)
    rt = runtime(seeded)
    master, source, target = (rt.server(n) for n in (seeded.master, "replica1", "replica2"))
    mark_local(target, "only_on_old_target")
    with WriteLoad(seeded.address(seeded.master), rt.config.mysql.option_file) as load:
        proc, report = clone_json(seeded, "replica1", "replica2", "--transfer", method,
                                  config=config)
    assert proc.returncode == 0, proc.stderr
    assert load.commits > 50, "the master must have been written during the clone"
    assert report["state"] == "committed"
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["serve"]["detail"].startswith(method)
    assert report["outstanding_undo"] == []
    assert report["bytes_transferred"] > 1_000_000
    target.close()
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert not has_schema(target, "only_on_old_target"), "target must run on the new datadir"
    assert leftovers(seeded) == []
    assert marked(report["job"]) == []
    print(f"\n{method} x{parallel}: {report['literal_bytes'] / 1e6:.1f} MB, pull "
          f"{steps['pull']['ms']:.0f} ms, {steps['pull']['detail']}")
    rt.close()


@pytest.mark.parametrize("method", ["stream", "rsync_ssh", "rsyncd"])
def test_four_streams_copy_the_snapshot_byte_for_byte(
        seeded: SandboxInfo, ssh_access: dict[str, Any], tmp_path: Path, method: str) -> None:
    config = with_transfer(seeded, tmp_path / "hotcopy.toml", parallel=4, **ssh_access)
    proc, _ = clone_json(seeded, "replica1", "replica2", "--transfer", method, config=config,
                         env={"HOTCOPY_FAULT": "kill-after:pull"})
    assert proc.returncode == -9, proc.stderr
    job = json.loads(hotcopy("jobs", "--config", str(config), "--json").stdout)[0]["job"]
    shown = json.loads(hotcopy("show", "--config", str(config), job, "--json").stdout)
    snapshot = Path(shown["snapshot"]["exposed_datadir"])
    staging = Path(f"{seeded.datadir('replica2')}.hotcopy-new-{job}")
    assert len(digest(snapshot)) > 100
    assert digest(staging) == digest(snapshot)

    back = hotcopy("rollback", "--config", str(config), job, "--json")
    assert back.returncode == 0, back.stderr
    assert marked(job) == []
    assert leftovers(seeded) == []


@pytest.mark.parametrize("method", ["stream", "rsync_ssh"])
def test_kill_mid_transfer_then_resume_finishes_from_a_clean_state(
        seeded: SandboxInfo, ssh_access: dict[str, Any], tmp_path: Path, method: str) -> None:
    bwlimit = max(64, ship_bytes(seeded, "replica1") // 6 // 1024)
    config = with_transfer(seeded, tmp_path / "hotcopy.toml", parallel=2,
                           bwlimit_kbps=bwlimit, **ssh_access)
    rt = runtime(seeded)
    master, target = rt.server(seeded.master), rt.server("replica2")
    proc, _ = clone_json(seeded, "replica1", "replica2", "--transfer", method, config=config,
                         env={"HOTCOPY_FAULT": "kill-during:pull:0.5"})
    assert proc.returncode == -9, proc.stderr
    job = json.loads(hotcopy("jobs", "--config", str(config), "--json").stdout)[0]["job"]
    resumed = hotcopy("resume", "--config", str(config), job, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["state"] == "committed"
    target.close()
    wait_replicating(target, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert marked(job) == []
    assert leftovers(seeded) == []
    rt.close()


@pytest.mark.parametrize("method", ["stream", "rsync_ssh"])
def test_kill_mid_transfer_then_rollback_leaves_nothing(
        seeded: SandboxInfo, ssh_access: dict[str, Any], tmp_path: Path, method: str) -> None:
    # Paced to take about ten seconds, so the controller dies with the transfer running.
    bwlimit = max(64, ship_bytes(seeded, "replica1") // 10 // 1024)
    config = with_transfer(seeded, tmp_path / "hotcopy.toml", parallel=2,
                           bwlimit_kbps=bwlimit, **ssh_access)
    rt = runtime(seeded)
    master, source, target = (rt.server(n) for n in (seeded.master, "replica1", "replica2"))
    mark_local(target, f"marker_kill_{method}")
    proc, _ = clone_json(seeded, "replica1", "replica2", "--transfer", method, config=config,
                         env={"HOTCOPY_FAULT": "kill-during:pull:0.5"})
    assert proc.returncode == -9, proc.stderr
    job = json.loads(hotcopy("jobs", "--config", str(config), "--json").stdout)[0]["job"]
    assert marked(job), "the transfer's processes outlive the controller until rolled back"
    assert leftovers(seeded)

    back = hotcopy("rollback", "--config", str(config), job, "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["state"] == "rolled-back"
    assert marked(job) == []
    assert leftovers(seeded) == []
    assert sql_thread_running(source)
    target.close()
    wait_replicating(target, master)
    assert has_schema(target, f"marker_kill_{method}"), "target must be back on its old datadir"
    rt.close()

