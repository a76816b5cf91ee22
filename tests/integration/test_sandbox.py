"""The sandbox is a real shard: servers, btrfs subvolumes, replication, clean teardown."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from hotcopy import config as config_module
from hotcopy.errors import HotcopyError, RefusedError
from hotcopy.hosts import LocalExecutor
from hotcopy.mysql.connection import connect
from hotcopy.mysql.mysqld import MysqldControl, read_layout
from hotcopy.sandbox import SandboxInfo, down, status, up

Control = Callable[[SandboxInfo, str], MysqldControl]
SRC = Path(__file__).resolve().parents[2] / "src"


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) of every mount."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        found.append((fields[4], fields[sep + 1], fields[sep + 2]))
    return found


def _loops_of(image: Path) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                         check=False).stdout
    return [line.split(":", 1)[0] for line in out.splitlines()]


def _processes_with(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines()
            if text in line and " Z" not in line[:16] and "pytest" not in line]


def _passwords(info: SandboxInfo) -> list[str]:
    found = []
    for path in (info.admin_option_file, info.repl_option_file):
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "password":
                found.append(value.strip())
    assert len(found) == 2 and all(len(p) >= 16 for p in found)
    return found


def _leftovers(directory: Path, images: list[Path]) -> list[str]:
    prefix = str(directory) + "/"
    found = [point for point, _, _ in _mounts() if point.startswith(prefix)]
    found += [loop for image in images for loop in _loops_of(image)]
    found += _processes_with(str(directory) + "/")
    return found


# -- the session sandbox ----------------------------------------------------------------


def test_up_gives_three_running_servers_replicating(sandbox: SandboxInfo) -> None:
    rows = {row["name"]: row for row in status(sandbox.directory)}
    assert set(rows) == {"master", "replica1", "replica2"} == set(sandbox.servers)
    assert all(row["running"] for row in rows.values())
    assert rows["master"]["role"] == "master"
    for name in sandbox.replicas:
        assert rows[name]["role"] == "replica"
        assert (rows[name]["io_running"], rows[name]["sql_running"]) == ("Yes", "Yes")
        assert rows[name]["error"] is None
    assert len({row["port"] for row in rows.values()}) == 3


def test_replicas_replicate_a_write_on_the_master(sandbox: SandboxInfo) -> None:
    admin = str(sandbox.admin_option_file)
    marker = f"probe-{os.getpid()}-{time.monotonic_ns()}"
    master = connect(sandbox.address(sandbox.master), admin)
    try:
        master.execute("INSERT INTO app.customers (name, email) VALUES (%s, 'x@example.com')",
                       (marker,))
        position = master.scalar("SELECT @@GLOBAL.gtid_binlog_pos")
    finally:
        master.close()
    for name in sandbox.replicas:
        replica = connect(sandbox.address(name), admin)
        try:
            assert replica.scalar("SELECT MASTER_GTID_WAIT(%s, 30)", (position,)) == 0
            assert replica.scalar("SELECT COUNT(*) FROM app.customers WHERE name = %s",
                                  (marker,)) == 1
            assert replica.scalar("SELECT @@read_only") == 1
        finally:
            replica.close()


def test_each_datadir_is_a_subvolume_on_its_own_loop_mount(sandbox: SandboxInfo) -> None:
    mounts = {point: (fstype, source) for point, fstype, source in _mounts()}
    sources = set()
    for name in sandbox.servers:
        datadir = sandbox.datadir(name)
        assert datadir == sandbox.directory / name / "mnt" / "data"
        assert datadir.stat().st_ino == 256, "a btrfs subvolume root has inode 256"
        fstype, source = mounts[str(datadir.parent)]
        assert fstype == "btrfs"
        assert source.startswith("/dev/loop")
        assert _loops_of(sandbox.directory / name / "disk.img") == [source]
        sources.add(source)
        st = datadir.stat()
        assert (st.st_uid, st.st_gid) == _mysql_ids()
        image = sandbox.directory / name / "disk.img"
        assert image.stat().st_blocks * 512 < image.stat().st_size, "image is sparse"
    assert len(sources) == 3


def _mysql_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("mysql")
    return entry.pw_uid, entry.pw_gid


def test_runtime_files_live_outside_the_datadir(sandbox: SandboxInfo) -> None:
    for name in sandbox.servers:
        layout = read_layout(LocalExecutor(), str(sandbox.defaults_file(name)))
        root = sandbox.directory / name
        assert layout.datadir == str(sandbox.datadir(name))
        assert layout.port == sandbox.ports[name]
        assert layout.socket == str(root / "run" / "mysqld.sock")
        assert layout.pid_file == str(root / "run" / "mysqld.pid")
        assert layout.log_error == str(root / "mysqld.err")
        assert layout.log_bin == str(sandbox.datadir(name) / "mysql-bin")
        assert layout.relay_log == str(sandbox.datadir(name) / "relay-bin")
        assert layout.user == "mysql"
        assert layout.innodb_data_home_dir is None


def test_option_files_are_private(sandbox: SandboxInfo) -> None:
    for path, user in ((sandbox.admin_option_file, "hotcopy"), (sandbox.repl_option_file, "repl")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        assert text.startswith("[client]")
        assert f"user = {user}" in text


def test_no_password_in_argv_logs_or_records(sandbox: SandboxInfo) -> None:
    passwords = _passwords(sandbox)
    args = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                          check=True).stdout
    public = [sandbox.config_path, sandbox.directory / "sandbox.json"]
    public += [sandbox.directory / name / "mysqld.err" for name in sandbox.servers]
    public += [sandbox.defaults_file(name) for name in sandbox.servers]
    binlog = (sandbox.datadir(sandbox.master) / "mysql-bin.000001").read_bytes()
    for password in passwords:
        assert password not in args
        for path in public:
            assert password not in path.read_text(), path
        assert password.encode() not in binlog


def test_config_has_the_documented_shape(sandbox: SandboxInfo) -> None:
    raw = tomllib.loads(sandbox.config_path.read_text())
    assert raw["shard"] == {"name": "sandbox"}
    assert raw["mysql"] == {"option_file": str(sandbox.admin_option_file)}
    assert raw["replication"] == {"option_file": str(sandbox.repl_option_file)}
    assert raw["journal"] == {"path": str(sandbox.directory / "journal.sqlite")}
    assert list(raw["servers"]) == ["master", "replica1", "replica2"]
    for name, server in raw["servers"].items():
        assert server == {
            "host": "127.0.0.1",
            "port": sandbox.ports[name],
            "ssh": "local",
            "datadir": str(sandbox.datadir(name)),
            "defaults_file": str(sandbox.defaults_file(name)),
            "snapshot": "auto",
        }
    loaded = config_module.load(sandbox.config_path)
    assert set(loaded.servers) == set(sandbox.servers)


def test_second_up_of_a_healthy_sandbox_reports_it(sandbox: SandboxInfo) -> None:
    again = up(sandbox.directory)
    assert again.already_up
    assert again.ports == sandbox.ports
    assert again.config_path == sandbox.config_path


def test_mysqld_control_stops_and_starts_a_replica(healthy_sandbox: SandboxInfo,
                                                   mysqld_control: Control) -> None:
    ctl = mysqld_control(healthy_sandbox, "replica2")
    assert ctl.is_running()
    started = time.monotonic()
    ctl.stop(timeout=60)
    assert time.monotonic() - started < 30
    assert not ctl.is_running()
    assert _processes_with(str(healthy_sandbox.defaults_file("replica2"))) == []
    ctl.stop(timeout=10)  # idempotent
    ctl.start(timeout=60)
    assert ctl.is_running()
    assert "ready for connections" in ctl.error_log_tail(100)


def test_mysqld_control_start_failure_shows_the_error_log(
        healthy_sandbox: SandboxInfo, mysqld_control: Control) -> None:
    ctl = mysqld_control(healthy_sandbox, "replica2")
    ctl.stop(timeout=60)
    broken = healthy_sandbox.directory / "replica2" / "broken.cnf"
    broken.write_text(healthy_sandbox.defaults_file("replica2").read_text()
                      .replace("[mysqld]", "[mysqld]\nno-such-option-hotcopy = 1", 1))
    try:
        bad = mysqld_control(healthy_sandbox, "replica2")
        bad.defaults_file = str(broken)
        started = time.monotonic()
        with pytest.raises(HotcopyError) as caught:
            bad.start(timeout=30)
        assert time.monotonic() - started < 25, "an early exit must be noticed at once"
        assert "no-such-option-hotcopy" in str(caught.value)
        assert "exited" in str(caught.value)
    finally:
        broken.unlink()
    assert not ctl.is_running()


# -- sandboxes of their own ---------------------------------------------------------------


def test_down_removes_everything_and_keeps_a_preexisting_dir(
        sandbox_parent: Path, mysqld_control: Control) -> None:
    directory = sandbox_parent / "keep"
    directory.mkdir()
    (directory / "notes.txt").write_text("mine")
    info = up(directory, replicas=1, image_size=1024**3)
    assert info.servers == ("master", "replica1")
    images = [directory / name / "disk.img" for name in info.servers]
    assert all(_loops_of(image) for image in images)

    # An unhealthy sandbox is refused, not reported as up.
    mysqld_control(info, "replica1").stop(timeout=60)
    with pytest.raises(RefusedError, match="not healthy"):
        up(directory, replicas=1)

    started = time.monotonic()
    down(directory)
    assert time.monotonic() - started < 30
    assert _leftovers(directory, images) == []
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]
    down(directory)  # idempotent


def test_up_refuses_a_directory_holding_other_files(sandbox_parent: Path) -> None:
    directory = sandbox_parent / "clash"
    directory.mkdir()
    (directory / "admin.cnf").write_text("[client]\n")
    with pytest.raises(RefusedError, match="already holds"):
        up(directory)
    assert sorted(p.name for p in directory.iterdir()) == ["admin.cnf"]


def test_down_cleans_up_after_a_killed_up(sandbox_parent: Path) -> None:
    directory = sandbox_parent / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from hotcopy.sandbox import up; up(Path(sys.argv[1]))", str(directory)],
        env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        # Kill it once servers run, i.e. with mounts, loop devices and processes to undo.
        pid_file = directory / "master" / "run" / "mysqld.pid"
        deadline = time.monotonic() + 60
        while not pid_file.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_file.exists(), child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    images = [directory / name / "disk.img" for name in ("master", "replica1", "replica2")]
    assert _leftovers(directory, images), "the killed up should have left things to undo"

    down(directory)
    assert _leftovers(directory, images) == []
    assert not directory.exists(), "up created the directory, so down removes it"


def test_up_failing_midway_removes_what_it_made(sandbox_parent: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from hotcopy.sandbox import build

    def broken_seed(*args: object) -> None:
        raise RuntimeError("injected failure while seeding the master")

    monkeypatch.setattr(build, "seed_master", broken_seed)
    directory = sandbox_parent / "failing"
    with pytest.raises(HotcopyError, match="injected failure") as caught:
        up(directory, replicas=1)
    assert "removed" in str(caught.value)
    images = [directory / name / "disk.img" for name in ("master", "replica1")]
    assert _leftovers(directory, images) == []
    assert not directory.exists()
