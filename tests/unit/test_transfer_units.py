"""The transfer methods' pure parts: file lists, balancing, progress, addresses, argv."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotcopy import config as config_module
from hotcopy.config import TransferConfig
from hotcopy.errors import ConfigError
from hotcopy.hosts import LocalExecutor
from hotcopy.transfer import rsync_ssh, stream
from hotcopy.transfer.base import (
    STATIC_EXCLUDES,
    FileEntry,
    ProgressMeter,
    TransferRequest,
    encode_list,
    list_tree,
    log_excludes,
    run_parallel,
    shippable,
    split_balanced,
)
from hotcopy.transfer.rsyncd import client_commands

sizes = st.lists(st.integers(min_value=0, max_value=10_000_000), min_size=0, max_size=60)


def _files(values: list[int]) -> list[FileEntry]:
    return [FileEntry(f"db/t{i}.ibd", size, False) for i, size in enumerate(values)]


@given(sizes, st.integers(min_value=1, max_value=8))
@settings(max_examples=200, deadline=None)
def test_split_keeps_every_file_once_and_balances_within_the_largest_file(
        values: list[int], groups: int) -> None:
    entries = [FileEntry("db", 0, True), *_files(values)]
    lists = split_balanced(entries, groups)
    flat = [e for group in lists for e in group]
    assert sorted(e.path for e in flat) == sorted(e.path for e in entries)
    assert len(lists) <= groups and all(lists)
    assert lists[0][0] == FileEntry("db", 0, True), "directories travel first, in list 0"
    totals = [sum(e.size for e in group) for group in lists]
    if len(lists) == groups and values:
        assert max(totals) - min(totals) <= max(values)


def test_split_uses_fewer_streams_than_asked_when_there_are_few_files() -> None:
    lists = split_balanced(_files([5, 7]), 4)
    assert len(lists) == 2
    assert {e.size for e in lists[0]} == {7} and {e.size for e in lists[1]} == {5}


def test_shippable_drops_excluded_files_and_everything_below_an_excluded_directory() -> None:
    excludes = [*STATIC_EXCLUDES, *log_excludes("/var/lib/mysql", ["mysql-bin", "relay-bin"])]
    entries = [FileEntry(p, 1, d) for p, d in [
        ("auto.cnf", False), ("mysql-bin.000001", False), ("mysql-bin.index", False),
        ("relay-bin.000002", False), ("ibdata1", False), ("app", True),
        ("app/auto.cnf", False), (".hotcopy-x", True), (".hotcopy-x/file", False),
        ("mysqld.pid", False), ("app/t.ibd", False)]]
    kept = [e.path for e in shippable(entries, excludes)]
    assert kept == ["ibdata1", "app", "app/auto.cnf", "app/t.ibd"]


def test_list_tree_reads_names_sizes_and_kinds(tmp_path: Path) -> None:
    (tmp_path / "d e").mkdir()
    (tmp_path / "d e" / "odd\tname").write_bytes(b"x" * 10)
    (tmp_path / "f").write_bytes(b"")
    found = sorted(list_tree(LocalExecutor(), str(tmp_path)), key=lambda e: e.path)
    assert found == [FileEntry("d e", 0, True), FileEntry("d e/odd\tname", 10, False),
                     FileEntry("f", 0, False)]
    assert encode_list(found[:2]) == b"d e\0d e/odd\tname\0"


@pytest.mark.parametrize("names", [["a"], ["x" * 120, "d/" + "y" * 200]])
def test_tar_size_is_what_gnu_tar_writes(tmp_path: Path, names: list[str]) -> None:
    entries = [FileEntry("d", 0, True)]
    for index, name in enumerate(names):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"z" * (index * 1000 + 1))
        entries.append(FileEntry(name, index * 1000 + 1, False))
    (tmp_path / "d").mkdir(exist_ok=True)
    (tmp_path / "list").write_bytes(encode_list(entries))
    out = LocalExecutor().run(["sh", "-c", f"tar -c -b {stream.RECORD_BLOCKS} -f - -C {tmp_path} "
                                           "--no-recursion --null "
                                           f"-T {tmp_path}/list | wc -c"]).stdout
    assert stream.tar_size(entries) == int(out)


def test_meter_sums_streams_and_derives_one_rate() -> None:
    now = [100.0]
    seen: list[tuple[int, int | None, float | None]] = []
    meter = ProgressMeter(lambda d, t, r: seen.append((d, t, r)), 1000, clock=lambda: now[0])
    meter.update(0, 100)
    now[0] += 1
    meter.update(1, 300)
    now[0] += 1
    meter.update(0, 200)
    assert [s[0] for s in seen] == [100, 400, 500]
    assert seen[0][2] is None
    assert seen[1][2] == pytest.approx(300.0)
    assert seen[2][2] == pytest.approx(200.0)
    assert meter.done == 500 and seen[-1][1] == 1000
    meter.reset()
    meter.update(0, 10)
    assert meter.done == 10 and seen[-1][2] is None


def test_run_parallel_returns_results_in_task_order() -> None:
    def task(value: int, cancelled: threading.Event) -> int:
        time.sleep(0.01 * (3 - value))
        return value * 10

    tasks = [lambda c, v=v: task(v, c) for v in range(3)]
    assert run_parallel(tasks, abort=lambda: None) == [0, 10, 20]


def test_run_parallel_aborts_the_others_on_the_first_failure() -> None:
    release = threading.Event()
    aborted: list[bool] = []

    def slow(cancelled: threading.Event) -> str:
        assert release.wait(10), "abort never released the slow stream"
        return "stopped" if cancelled.is_set() else "finished"

    def failing(cancelled: threading.Event) -> str:
        raise RuntimeError("stream 2 broke")

    def abort() -> None:
        aborted.append(True)
        release.set()

    with pytest.raises(RuntimeError, match="stream 2 broke"):
        run_parallel([slow, failing], abort)
    assert aborted == [True]


def test_run_parallel_single_task_aborts_too() -> None:
    aborted: list[bool] = []

    def failing(cancelled: threading.Event) -> None:
        raise ValueError("x")

    with pytest.raises(ValueError):
        run_parallel([failing], lambda: aborted.append(True))
    assert aborted == [True]


def test_listener_accepts_only_the_source_and_the_sender_binds_to_it() -> None:
    listen = stream.listen_address("10.0.0.2", "10.0.0.1", 28710, 5)
    assert listen == ("TCP4-LISTEN:28710,bind=10.0.0.2,range=10.0.0.1/32,reuseaddr,fork,"
                      "max-children=5")
    assert stream.connect_address("10.0.0.2", "10.0.0.1", 28710, 20) == \
        "TCP4:10.0.0.2:28710,bind=10.0.0.1,connect-timeout=20"
    assert stream.listen_address("fd00::2", "fd00::1", 28710, 5).startswith(
        "TCP6-LISTEN:28710,bind=[fd00::2],range=[fd00::1]/128,")
    assert stream.connect_address("fd00::2", "fd00::1", 1, 3).startswith("TCP6:[fd00::2]:1,")


def _request(bwlimit: int | None) -> TransferRequest:
    return TransferRequest("j1", "a", "b", "10.0.0.1", "10.0.0.2", "/snap/data", "/stage/",
                           ["/auto.cnf"], 100, bwlimit, 60, 1)


def test_client_commands_share_the_bandwidth_limit_among_streams() -> None:
    single = client_commands(["rsync", "-a"], _request(1000), "src/", None)
    assert single == [["rsync", "-a", "--bwlimit=1000", "--delete", "--no-inc-recursive",
                       "src/", "/stage/"]]
    many = client_commands(["rsync", "-a"], _request(1000), "src/", ["/l/0", "/l/1", "/l/2"])
    assert [c[2] for c in many] == ["--bwlimit=333"] * 3
    assert [c[-3] for c in many] == ["--files-from=/l/0", "--files-from=/l/1", "--files-from=/l/2"]
    assert all("--delete" not in c for c in many)
    assert client_commands(["rsync"], _request(None), "s/", None)[0][1] == "--delete"


def test_ssh_argv_for_rsync_ssh_has_strict_host_keys_and_no_prompt() -> None:
    transfer = TransferConfig(ssh_port=2222, ssh_identity_file="/etc/hotcopy/id_ed25519",
                              ssh_known_hosts="/etc/hotcopy/known_hosts",
                              ssh_options=("Ciphers=aes128-gcm@openssh.com",))
    argv = rsync_ssh.ssh_argv(transfer)
    joined = " ".join(argv)
    assert "BatchMode=yes" in joined and "StrictHostKeyChecking=yes" in joined
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-i") + 1] == "/etc/hotcopy/id_ed25519"
    assert all(" " not in word for word in argv)
    assert rsync_ssh.remote(transfer, "fd00::1") == "root@[fd00::1]"
    assert "StrictHostKeyChecking" not in " ".join(rsync_ssh.ssh_argv(TransferConfig()))


@pytest.mark.parametrize("transfer", [
    {"ssh_options": ["Port=22 -oProxyCommand=x"]},
    {"ssh_identity_file": "/etc/my key"},
    {"ssh_user": "root; rm"},
    {"parallel": 0},
    {"parallel": 9},
    {"zstd_level": 20},
])
def test_transfer_settings_that_could_break_argv_or_make_no_sense_are_refused(
        tmp_path: Path, transfer: dict[str, object]) -> None:
    option = tmp_path / "admin.cnf"
    option.write_text("[client]\nuser=a\npassword=b\n")
    option.chmod(0o600)
    lines = ["[shard]", 'name = "s"', "[mysql]", f'option_file = "{option}"', "[transfer]"]
    for key, value in transfer.items():
        lines.append(f"{key} = {value!r}".replace("'", '"'))
    lines += ["[servers.a]", 'host = "10.0.0.1"', 'datadir = "/d"', 'defaults_file = "/f"']
    path = tmp_path / "hotcopy.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="transfer"):
        config_module.load(path)
