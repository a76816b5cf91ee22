"""The clone across hosts: every server in a network namespace of its own, reached by ssh.

hotcopy runs here, in the root namespace, and reaches each host only through its
sshd (multiplexed, BatchMode, strict host keys against the sandbox's known_hosts),
exactly as in production. These tests prove what a single-host shard cannot: that
the data goes from the source host to the target host directly, and that a cut
network is retried, then rolled back, on every host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.loadgen import WriteLoad
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo
from hotcopy.sandbox import netns as sandbox_netns

from ..real_parts import missing_tools, needs
from .conftest import own_sandbox
from .helpers import (
    clone_json,
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    no_backup_lock,
    runtime,
    sql_thread_running,
    wait_for,
    wait_replicating,
)

NETNS_TOOLS = ("ip", "nsenter", "ssh", "ssh-keygen", "/usr/sbin/sshd", "ss")
pytestmark = needs(missing_tools(NETNS_TOOLS, "multi-host tests"))

SOURCE, TARGET = "replica1", "replica2"
PORT_RANGE = (28700, 28799)  # TransferConfig's default, where the rsync daemon listens
MID_TRANSFER_BYTES = 8_000_000
#: Transfer knobs of the cut tests: a stalled stream is given up after IO_TIMEOUT_S, a
#: reconnect after CONNECT_TIMEOUT_S; the first retry waits 2 s.
IO_TIMEOUT_S, CONNECT_TIMEOUT_S = 10, 3
#: How long a cut may take to be noticed, retried and given up: the timeouts above, the
#: back-off, and ssh round trips on a busy machine.
CUT_TIMEOUT_S = IO_TIMEOUT_S + 2 + CONNECT_TIMEOUT_S + 45


@pytest.fixture(scope="module")
def hosts() -> Iterator[SandboxInfo]:
    """A master and two replicas, each on a host (network namespace) of its own."""
    with own_sandbox(topology="netns") as info:
        yield info


def in_host(info: SandboxInfo, name: str, argv: list[str]) -> str:
    """Run argv inside a host's network namespace (as its own processes see the network)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{info.namespaces[name]}", "--", *argv],
                          capture_output=True, text=True, check=True, timeout=30).stdout


def transfer_connection(info: SandboxInfo) -> str | None:
    """The rsync client's connection, seen from the target host: target -> source direct."""
    source_ip, target_ip = info.hosts[SOURCE], info.hosts[TARGET]
    for line in in_host(info, TARGET, ["ss", "-Htnp", "state", "established"]).splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        local, peer = fields[2], fields[3]
        peer_ip, _, peer_port = peer.rpartition(":")
        if (local.rpartition(":")[0] == target_ip and peer_ip == source_ip
                and PORT_RANGE[0] <= int(peer_port) <= PORT_RANGE[1] and '"rsync"' in line):
            return line
    return None


def controller_ports_at(address: str) -> set[int]:
    """The ports of address that the root namespace (the controller) has connections to."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "dst", address],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return {int(line.split()[3].rpartition(":")[2]) for line in out.splitlines()
            if len(line.split()) > 3}


def faulty_network_config(info: SandboxInfo, name: str, **transfer: Any) -> Path:
    """The sandbox config with a bounded transfer: few retries, short timeouts, a bwlimit."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in transfer.items()]
    path = info.directory / f"{name}.toml"
    path.write_text(info.config_path.read_text() + "\n[transfer]\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def start_clone(config: Path, stderr_path: Path) -> subprocess.Popen[str]:
    with stderr_path.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "hotcopy", "clone", "--config", str(config), "--source",
             SOURCE, "--target", TARGET, "--yes", "--json"],
            stdout=subprocess.PIPE, stderr=stderr, text=True)


def newest_job(info: SandboxInfo, since: float) -> str | None:
    journal = SqliteJournal(str(info.directory / "journal.sqlite"))
    try:
        jobs = [job for job in journal.list_jobs(limit=5) if job.created >= since]
        return jobs[0].id if jobs else None
    finally:
        journal.close()


def step_outcome(info: SandboxInfo, job: str, step: str) -> str | None:
    journal = SqliteJournal(str(info.directory / "journal.sqlite"))
    try:
        return next((s.outcome for s in journal.steps(job) if s.name == step), None)
    finally:
        journal.close()


def step_outputs(info: SandboxInfo, job: str, step: str) -> dict[str, Any]:
    journal = SqliteJournal(str(info.directory / "journal.sqlite"))
    try:
        return next(s.outputs for s in journal.steps(job) if s.name == step)
    finally:
        journal.close()


def host_programs(info: SandboxInfo) -> set[str]:
    """What runs inside the hosts' namespaces, by program name."""
    names = set()
    for netns in info.namespaces.values():
        for pid in sandbox_netns.namespace_pids(netns):
            try:
                names.add(Path(f"/proc/{pid}/comm").read_text().strip())
            except OSError:
                continue  # gone meanwhile
    return names


def assert_every_host_restored(info: SandboxInfo, marker: str) -> None:
    rt = runtime(info)
    master, source, target = (rt.server(n) for n in (info.master, SOURCE, TARGET))
    assert sql_thread_running(source)
    assert no_backup_lock(source)
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert has_schema(target, marker), "the target must be back on its own datadir"
    assert leftovers(info) == []
    assert host_programs(info) <= {"sshd", "mariadbd"}, "no daemon or client left running"
    rt.close()


def test_sandbox_hosts_are_separate_and_reached_over_ssh(hosts: SandboxInfo) -> None:
    config = runtime(hosts).config
    assert config.ssh.known_hosts and config.ssh.identity_file
    for name in hosts.servers:
        server = config.server(name)
        assert server.ssh == f"root@{hosts.hosts[name]}" and server.host == hosts.hosts[name]
        # mariadbd listens in its host's namespace on the host's address only.
        listening = in_host(hosts, name, ["ss", "-Htlnp", "sport", "=", ":3306"])
        assert f"{hosts.hosts[name]}:3306" in listening and "mariadbd" in listening
    root_listeners = subprocess.run(["ss", "-Htln", "sport", "=", ":3306"], capture_output=True,
                                    text=True, check=True).stdout
    assert not any(hosts.hosts[n] in root_listeners for n in hosts.servers)


def test_clone_across_hosts_under_load_goes_directly_source_to_target(
        hosts: SandboxInfo) -> None:
    rt = runtime(hosts)
    master, source, target = (rt.server(n) for n in (hosts.master, SOURCE, TARGET))
    mark_local(target, "only_on_old_replica2")
    assert hosts.bridge is not None
    bridge_before = sandbox_netns.link_bytes(hosts.bridge)
    # Bridge-side veth counters: tx is what went into the host, rx what came out of it.
    target_before = sandbox_netns.link_bytes(hosts.veths[TARGET])
    source_before = sandbox_netns.link_bytes(hosts.veths[SOURCE])
    with WriteLoad(hosts.address(hosts.master), rt.config.mysql.option_file) as load:
        proc, report = clone_json(hosts, SOURCE, TARGET)
    assert proc.returncode == 0, proc.stderr
    assert load.commits > 50, "the master must have been written during the clone"
    assert report["state"] == "committed"
    shipped = report["bytes_transferred"]
    assert shipped > 10_000_000

    bridge_rx, bridge_tx = (a - b for a, b in zip(sandbox_netns.link_bytes(hosts.bridge),
                                                   bridge_before, strict=True))
    target_in = sandbox_netns.link_bytes(hosts.veths[TARGET])[1] - target_before[1]
    source_out = sandbox_netns.link_bytes(hosts.veths[SOURCE])[0] - source_before[0]
    # The data left the source host and entered the target host...
    assert source_out >= shipped and target_in >= shipped
    # ...without passing the controller's address: what reached or left it (ssh
    # commands, SQL, the write load) is a small fraction of what was shipped.
    assert bridge_rx + bridge_tx < shipped / 4, (bridge_rx, bridge_tx, shipped)

    target.close()
    wait_replicating(target, master)
    wait_replicating(source, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert not has_schema(target, "only_on_old_replica2"), "target must run on the new datadir"
    assert no_backup_lock(source)
    assert leftovers(hosts) == []
    assert host_programs(hosts) <= {"sshd", "mariadbd"}, "no daemon or client left running"
    rt.close()


def test_sigkill_after_snapshot_then_rollback_restores_every_host(hosts: SandboxInfo) -> None:
    rt = runtime(hosts)
    mark_local(rt.server(TARGET), "marker_multihost_kill")
    rt.close()
    proc, _ = clone_json(hosts, SOURCE, TARGET, env={"HOTCOPY_FAULT": "kill-after:snapshot"})
    assert proc.returncode == -9, proc.stderr
    job = json.loads(hotcopy("jobs", "--config", str(hosts.config_path), "--json").stdout)[0]
    assert job["state"] == "running"
    assert leftovers(hosts), "the snapshot on the source host is there until rolled back"

    back = hotcopy("rollback", "--config", str(hosts.config_path), job["job"], "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["state"] == "rolled-back"
    assert_every_host_restored(hosts, "marker_multihost_kill")


def _cut_during_pull(hosts: SandboxInfo, config: Path, tmp_path: Path,
                     keep_down_until: Callable[[str, float], bool],
                     ) -> tuple[subprocess.Popen[str], str]:
    """Start a clone, cut the source host's link while rsync pulls from it directly.

    The cut comes once some data has arrived, in the middle of the transfer. The link
    stays down until keep_down_until(job, cut_at) holds (cut_at: time.monotonic() of
    the cut), and is always up again when this returns, also after a failed assertion.
    """
    veth = hosts.veths[SOURCE]
    started = time.time()
    received_before = sandbox_netns.link_bytes(hosts.veths[TARGET])[1]

    def pulling() -> bool:
        arrived = sandbox_netns.link_bytes(hosts.veths[TARGET])[1] - received_before
        return arrived > MID_TRANSFER_BYTES and transfer_connection(hosts) is not None

    clone = start_clone(config, tmp_path / "clone.stderr")
    try:
        assert wait_for(pulling, timeout=120, interval=0.1), \
            "the pull never got going from target to source"
        # Nothing in the root namespace talks to the daemon: the controller only drives.
        assert controller_ports_at(hosts.hosts[SOURCE]) <= {22, 3306}
        job = newest_job(hosts, started)
        assert job is not None
        sandbox_netns.set_link(veth, up=False)
        cut_at = time.monotonic()
        try:
            assert wait_for(lambda: keep_down_until(job, cut_at), timeout=CUT_TIMEOUT_S,
                            interval=0.2), "hotcopy did not notice the cut network in time"
        finally:
            sandbox_netns.set_link(veth, up=True)
    except BaseException:
        stop_clone(clone, config, newest_job(hosts, started))
        raise
    return clone, job


def stop_clone(clone: subprocess.Popen[str], config: Path, job: str | None) -> None:
    """After a failed check: let the clone roll back (SIGTERM), so later tests start clean."""
    clone.terminate()
    try:
        clone.wait(timeout=120)
    except subprocess.TimeoutExpired:
        clone.kill()
        clone.wait()
    if job is not None:
        hotcopy("rollback", "--config", str(config), job)


def finish(clone: subprocess.Popen[str], config: Path, job: str,
           tmp_path: Path) -> tuple[str, str]:
    """The clone's stdout and stderr once it ended by itself (bounded)."""
    try:
        stdout, _ = clone.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        stop_clone(clone, config, job)
        raise
    return stdout, (tmp_path / "clone.stderr").read_text()


def test_network_cut_longer_than_retries_rolls_back_every_host(
        hosts: SandboxInfo, tmp_path: Path) -> None:
    rt = runtime(hosts)
    mark_local(rt.server(TARGET), "marker_network_cut")
    rt.close()
    config = faulty_network_config(hosts, "cut-long", retries=1, io_timeout_s=IO_TIMEOUT_S,
                                   connect_timeout_s=CONNECT_TIMEOUT_S, bwlimit_kbps=8000)
    # The link stays down through the first attempt's timeout, the back-off and the
    # retry's failed connect, i.e. until the pull step has failed for good.
    clone, job = _cut_during_pull(hosts, config, tmp_path,
                                  lambda job, _: step_outcome(hosts, job, "pull") == "failed")
    stdout, stderr = finish(clone, config, job, tmp_path)
    assert clone.returncode == 1, stderr
    report = json.loads(stdout)
    assert report["state"] == "rolled-back" and report["outstanding_undo"] == []
    assert "retry 1 of 1" in stderr, "the interrupted transfer must have been retried"
    assert "pull" in (report["error"] or "") or "rsync" in (report["error"] or "")
    for option_file in (hosts.admin_option_file, hosts.repl_option_file):
        password = option_file.read_text().split("password = ", 1)[1].split()[0]
        assert password not in stderr and password not in stdout
    assert_every_host_restored(hosts, "marker_network_cut")


def test_short_network_cut_is_retried_and_commits(hosts: SandboxInfo, tmp_path: Path) -> None:
    rt = runtime(hosts)
    master, target = rt.server(hosts.master), rt.server(TARGET)
    config = faulty_network_config(hosts, "cut-short", retries=3, io_timeout_s=IO_TIMEOUT_S,
                                   connect_timeout_s=CONNECT_TIMEOUT_S, bwlimit_kbps=8000)
    # Down longer than rsync's I/O timeout, so the first attempt breaks; far shorter than
    # the retries with their back-off, so a later attempt finds the network back.
    clone, job = _cut_during_pull(hosts, config, tmp_path,
                                  lambda _, cut_at: time.monotonic() - cut_at
                                  >= IO_TIMEOUT_S + 2)
    stdout, stderr = finish(clone, config, job, tmp_path)
    assert clone.returncode == 0, stderr
    assert json.loads(stdout)["state"] == "committed"
    assert step_outputs(hosts, job, "pull")["transfer_attempts"] >= 2
    target.close()
    wait_replicating(target, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert leftovers(hosts) == []
    rt.close()
