"""Issue 10's "controller cut off from etcd during the transfer", on real links.

Controller A runs ``hotcopy clone`` in a network namespace of its own with two links:
eth0 on the netns sandbox's bridge (ssh and SQL to the shard's hosts, the data path) and
eth1 on a second bridge whose only other host runs a single etcd member. The fault is
the bridge-side veth of eth1 set down: A keeps every path to the shard's hosts and loses
etcd, the partition the fencing is for (a TCP proxy in front of etcd only imitates it).
Controller B is the root namespace, another host as far as the network goes: it reaches
the shard's hosts through the sandbox bridge and etcd through the etcd bridge.

The cut lands at a known point whatever the machine's speed: A runs with
``HOTCOPY_FAULT=pause-before:pull``, so it SIGSTOPs itself once the transfer server runs
on the source and before the copy; the test cuts the link while A is stopped, then lets
it go on. What A does next is journal the start of the pull, a fenced etcd write that
cannot get through: A retries it (``retry_rounds``) and makes no change on any host. B is
refused, naming A, while A's lease lives; after the TTL it rolls the job back or resumes
it. When A's link comes back, A's pending write is rejected by its ownership compare and
A exits 3 naming the job, having changed nothing, in the journal or on a host.

A's retries are bounded, B's resume takes as long as the machine makes it: so that A is
still in its write when its link returns whatever the speed, the test holds A (SIGSTOP)
from the moment B's claim of the job is in etcd until the link is back (``attempt_b``).
Until then A runs, cut off, through its lease's expiry and B's takeover.

The same network also has A's host die (issue 10's "controller's host killed after the
snapshot"): both its links down, then SIGKILL of everything in its namespace, while it
holds the source's backup lock; once its lease expired, a rollback is started on A's
host (back up) and on B's at once, and exactly one of them runs the undos.

The TTL is 10 s rather than the suite's usual 3-6 s so that B's first attempt, started
right after the cut, is inside A's lease with a wide margin even on a loaded machine
(A renewed it last at most TTL/3 before it stopped itself).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.runtime import Runtime
from hotcopy.saga import JobState
from hotcopy.saga.etcd_client import EtcdClient
from hotcopy.saga.etcd_journal import EtcdJournal
from hotcopy.sandbox import SandboxInfo, netns
from hotcopy.sandbox.sshd import netns_argv

from ..etcd_cluster import etcd_status, require_etcd, unique_prefix
from ..real_parts import missing_tools, needs
from .conftest import own_sandbox
from .helpers import (
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    no_backup_lock,
    runtime,
    sql_thread_running,
    wait_for,
    wait_replicating,
    with_etcd_journal,
)

pytestmark = [pytest.mark.etcd,
              needs(missing_tools(("ip", "nsenter", "ssh", "ssh-keygen", "/usr/sbin/sshd"),
                                  "the etcd cut-off tests on network namespaces"))]

SOURCE, TARGET = "replica1", "replica2"
TTL_S = 10
#: A's journal client: 2 s per request, 20 rounds (the most the config allows); with the
#: back-off between rounds one write keeps trying for about 70 s once etcd is cut off.
TIMEOUT_S, RETRY_ROUNDS = 2, 20
FAULT = "pause-before:pull"
#: Controller A's address on both /24s (the shard's hosts are .10-.12, etcd is .10).
CONTROLLER_HOST = 60
#: Bridge-side veth index of A's eth0 on the sandbox bridge (the shard's are 0-2).
CONTROLLER_VETH = 5
ETCD_HOST = 10
ETCD_IFACE = "eth1"
TRANSFER_MARKER = "HOTCOPY_TRANSFER"


@dataclass
class Net:
    """The sandbox, the etcd network, and controller A's namespace on both."""

    info: SandboxInfo
    work: Path
    controller_ns: str
    data_veth: str
    etcd_veth: str  # the bridge-side end of A's eth1: the link the tests cut
    etcd_ip: str
    rt: Runtime
    etcd: subprocess.Popen[bytes] | None = None

    @property
    def etcd_url(self) -> str:
        return f"http://{self.etcd_ip}:2379"


def _etcd_leader(url: str) -> bool:
    status = etcd_status(url)
    try:
        return status is not None and int(str(status.get("leader", 0))) != 0
    except ValueError:
        return False


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    etcd = require_etcd()
    work = tmp_path_factory.mktemp("netns-cutoff")
    with own_sandbox(topology="netns", replicas=2) as info:
        assert info.bridge is not None
        sandbox_subnet = int(info.hosts[info.master].split(".")[2])
        tag = netns.tag_for(info.directory)
        etcd_tag = netns.tag_for(info.directory / "etcd-network")
        bridge = netns.bridge_name(etcd_tag)
        etcd_ns = netns.namespace_name(etcd_tag, "etcd")
        etcd_host_veth = netns.veth_name(etcd_tag, 0)
        controller_ns = netns.namespace_name(tag, "ctla")
        n = Net(info, work, controller_ns, netns.veth_name(tag, CONTROLLER_VETH),
                netns.veth_name(etcd_tag, 1), "", runtime(info))
        try:
            with netns.subnet_lock():  # held until the bridge has its address
                etcd_subnet = netns.pick_subnet(etcd_tag)
                netns.create_bridge(bridge, etcd_subnet)
            n.etcd_ip = netns.address(etcd_subnet, ETCD_HOST)
            netns.create_host(etcd_ns, etcd_host_veth, bridge, n.etcd_ip)
            netns.create_host(controller_ns, n.data_veth, info.bridge,
                              netns.address(sandbox_subnet, CONTROLLER_HOST))
            netns.add_interface(controller_ns, n.etcd_veth, bridge,
                                netns.address(etcd_subnet, CONTROLLER_HOST), ETCD_IFACE)
            peer = f"http://{n.etcd_ip}:2380"
            with (work / "etcd.log").open("wb") as log:
                n.etcd = subprocess.Popen(
                    [*netns_argv(etcd_ns), etcd, "--name", "e0",
                     "--data-dir", str(work / "etcd-data"),
                     "--listen-client-urls", n.etcd_url, "--advertise-client-urls", n.etcd_url,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", f"e0={peer}", "--initial-cluster-state", "new",
                     "--initial-cluster-token", f"cut-{etcd_tag}",
                     "--heartbeat-interval", "100", "--election-timeout", "1000"],
                    stdout=log, stderr=subprocess.STDOUT)
            assert wait_for(lambda: _etcd_leader(n.etcd_url), 30), \
                f"etcd in {etcd_ns} did not come up: {(work / 'etcd.log').read_text()[-2000:]}"
            yield n
        finally:
            if n.etcd is not None and n.etcd.poll() is None:
                n.etcd.kill()
                n.etcd.wait(timeout=10)
            n.rt.close()
            netns.remove_interface(n.etcd_veth)
            netns.remove_host(controller_ns, n.data_veth)
            netns.remove_host(etcd_ns, etcd_host_veth)
            netns.remove_bridge(bridge)
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class Case:
    net: Net
    config: Path
    reader: EtcdJournal
    controller: subprocess.Popen[bytes] | None = None
    err: IO[bytes] | None = None
    markers: list[str] = field(default_factory=list)
    held: bool = False

    def hold(self, proc: subprocess.Popen[bytes]) -> None:
        if not self.held and proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)
            assert wait_for(lambda: stopped(proc.pid), 10, 0.02)
        self.held = True

    def stderr(self) -> str:
        if self.err is None:
            return ""
        self.err.flush()
        return Path(self.err.name).read_text(errors="replace")


def _config(n: Net, prefix: str, path: Path) -> Path:
    """The sandbox's config with the etcd journal under this test's prefix."""
    path.write_text(with_etcd_journal(n.info, [n.etcd_url], prefix, lease_ttl_s=TTL_S,
                                      timeout_s=TIMEOUT_S, retry_rounds=RETRY_ROUNDS))
    path.chmod(0o600)
    return path


@pytest.fixture
def case(net: Net, tmp_path: Path) -> Iterator[Case]:
    prefix = unique_prefix()
    reader = EtcdJournal(EtcdClient([net.etcd_url], timeout_s=2, rounds=5), "sandbox",
                         prefix=prefix, lease_ttl_s=TTL_S)
    c = Case(net, _config(net, prefix, tmp_path / "etcd.toml"), reader)
    try:
        yield c
    finally:
        netns.set_link(net.etcd_veth, up=True)
        proc = c.controller
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if c.err is not None:
            c.err.close()
        netns.kill_namespace_processes(net.controller_ns)  # A's ssh masters
        for job in reader.list_jobs():  # what a failed test left: rolled back, bounded
            if not job.terminal:
                wait_for(lambda job=job: hotcopy("rollback", "--config", str(c.config), job.id,
                                                 timeout=300).returncode != 2, 4 * TTL_S, 1)
        rt = net.rt
        for name in net.info.servers:  # a resumed target was restarted under its session
            rt.server(name).close()
        for name in c.markers:
            session = rt.server(TARGET).new_session()
            try:
                session.execute("SET SESSION sql_log_bin = 0")
                session.execute(f"DROP DATABASE IF EXISTS {name}")
            finally:
                session.close()
        for name in net.info.replicas:
            wait_replicating(rt.server(name), rt.server(net.info.master), timeout=120)


def start_controller(c: Case, fault: str = FAULT) -> subprocess.Popen[bytes]:
    """`hotcopy clone` inside A's namespace, in a session of its own (nsenter execs it,
    so the pid is the clone's)."""
    env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
    env["HOTCOPY_FAULT"] = fault
    c.err = (c.config.parent / "controller-a.err").open("w+b")
    c.controller = subprocess.Popen(
        [*netns_argv(c.net.controller_ns), sys.executable, "-m", "hotcopy", "clone",
         "--config", str(c.config), "--source", SOURCE, "--target", TARGET, "--yes", "--json"],
        stdout=subprocess.DEVNULL, stderr=c.err, env=env, start_new_session=True)
    return c.controller


def stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (state T): the fault paused it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] == "T"


def can_connect(ns: str, host: str, port: int, timeout_s: float = 1.5) -> bool:
    """A TCP connection from inside a namespace (the controller host's own view)."""
    probe = ("import socket, sys\n"
             "socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]))")
    return subprocess.run([*netns_argv(ns), sys.executable, "-c", probe, host, str(port),
                           str(timeout_s)], capture_output=True, timeout=30,
                          check=False).returncode == 0


def marked_processes(info: SandboxInfo, job_id: str) -> list[str]:
    """Processes in the shard's hosts carrying the job's transfer marker (every process a
    transfer method starts for a job inherits it), as 'host: pid comm'."""
    needle = f"{TRANSFER_MARKER}={job_id}".encode()
    found = []
    for host, ns in info.namespaces.items():
        for pid in netns.namespace_pids(ns):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue  # gone meanwhile
            if needle in environ.split(b"\0"):
                found.append(f"{host}: {pid} {comm}")
    return found


def job_leftovers(info: SandboxInfo, job_id: str) -> list[str]:
    """helpers.leftovers (staging and old datadirs, snapshots) plus what it cannot see for
    a job journaled in etcd: its processes, state files and mounts."""
    found = leftovers(info)
    state_dir = Path("/run/hotcopy")
    if state_dir.exists():
        found += [str(e) for e in state_dir.iterdir() if job_id in e.name]
    processes = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True,
                               text=True, check=True, timeout=30).stdout
    found += [f"process {line}" for line in processes.splitlines()
              if job_id in line and "ps -ww" not in line]
    found += [f"mount {line}" for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if job_id in line]
    found += [f"marked {p}" for p in marked_processes(info, job_id)]
    return found


def host_programs(info: SandboxInfo) -> set[str]:
    """What runs inside the shard's hosts, by program name."""
    names = set()
    for ns in info.namespaces.values():
        for pid in netns.namespace_pids(ns):
            try:
                names.add(Path(f"/proc/{pid}/comm").read_text().strip())
            except OSError:
                continue
    return names


def attempt_b(c: Case, action: str, job_id: str,
              a: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[str]:
    """`hotcopy rollback|resume JOB` from the root namespace (controller B), with its
    output (stdout and stderr together).

    A's write is retried for a bounded time only (``RETRY_ROUNDS``: 50-70 s, as a fast
    "no route to host" or a 2 s timeout ends each try), while B's resume is a clone's
    second half, whose length depends on the machine. So A is held (SIGSTOP) from the
    moment B's claim of the job is in etcd until A's link is back: the claim is what
    makes A's pending write fail, and a held process changes nothing either; up to that
    moment A runs, cut off, through its own lease's expiry.
    """
    env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hotcopy", action, "--config",
                                 str(c.config), job_id], stdout=out,
                                stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + 300
        try:
            while proc.poll() is None:
                if not c.held and c.reader.get_job(job_id).owner_pid == proc.pid:
                    c.hold(a)
                assert time.monotonic() < deadline, f"`hotcopy {action}` did not end"
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        if proc.returncode != 2:
            c.hold(a)  # its claim may have come and gone between two looks
        out.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), "")


def journal_view(reader: EtcdJournal, job_id: str) -> dict[str, Any]:
    """Everything a controller's write could change about the job, for comparing."""
    job = reader.get_job(job_id)
    return {"state": job.state, "owner_pid": job.owner_pid, "updated": job.updated,
            "info": job.info,
            "undo": [(e.seq, e.action, e.state, e.attempts) for e in reader.undo_entries(job_id)],
            "steps": [(s.name, s.attempt, s.outcome, s.started, s.ended)
                      for s in reader.steps(job_id)]}


@pytest.mark.parametrize("action", ["rollback", "resume"])
def test_controller_cut_off_from_etcd_is_taken_over_and_its_late_writes_are_rejected(
    case: Case, action: str,
) -> None:
    c, n = case, case.net
    info, rt = n.info, n.rt
    master, source, target = rt.server(info.master), rt.server(SOURCE), rt.server(TARGET)
    marker = f"cutoff_{action}"  # on the target's current datadir only (no binlog)
    c.markers.append(marker)
    mark_local(target, marker)

    a = start_controller(c)
    found: list[str] = []

    def journaled() -> bool:
        found[:] = [j.id for j in c.reader.list_jobs()]
        return bool(found)

    assert wait_for(journaled, 120, 0.1), f"A journaled no job: {c.stderr()[-3000:]}"
    job_id = found[0]
    assert wait_for(lambda: stopped(a.pid) or a.poll() is not None, 300, 0.05)
    assert a.poll() is None, f"A ended before the pull: {c.stderr()[-3000:]}"
    steps = {s.name: s.outcome for s in c.reader.steps(job_id)}
    assert steps.get("serve") == "done" and "pull" not in steps, steps
    staging = Path(f"{info.datadir(TARGET)}.hotcopy-new-{job_id}")
    assert staging.is_dir() and not any(staging.iterdir())
    at_cut = journal_view(c.reader, job_id)
    assert at_cut["state"] is JobState.RUNNING and at_cut["owner_pid"] == a.pid

    netns.set_link(n.etcd_veth, up=False)  # A's link to etcd; its eth0 stays up
    os.kill(a.pid, signal.SIGCONT)

    refused = attempt_b(c, action, job_id, a)
    assert refused.returncode == 2, refused.stdout[-3000:]
    assert f"job {job_id} is owned by pid {a.pid} on " in refused.stdout, refused.stdout
    assert "lease expires in" in refused.stdout
    # The cut is exactly A's etcd link: A still reaches the target's sshd and mariadbd.
    target_ip = info.hosts[TARGET]
    assert can_connect(n.controller_ns, target_ip, 22)
    assert can_connect(n.controller_ns, target_ip, info.ports[TARGET])
    assert not can_connect(n.controller_ns, n.etcd_ip, 2379)

    def a_made_no_change() -> None:
        assert a.poll() is None, f"A gave up early: {c.stderr()[-3000:]}"
        assert not any(staging.iterdir()), "A copied into the staging directory"
        on_target = [p for p in marked_processes(info, job_id) if p.startswith(f"{TARGET}:")]
        assert on_target == [], "A started a transfer client on the target"
        assert journal_view(c.reader, job_id) == at_cut

    results = [refused]

    def b_acted() -> bool:
        a_made_no_change()
        results.append(attempt_b(c, action, job_id, a))
        if results[-1].returncode == 2:
            assert f"is owned by pid {a.pid} on " in results[-1].stdout, results[-1].stdout
            return False
        return True

    first_refusal = time.monotonic()
    assert wait_for(b_acted, 6 * TTL_S, 0.5), "B was refused past A's lease"
    b = results[-1]
    assert b.returncode == 0, b.stdout[-3000:]
    b_s = time.monotonic() - first_refusal
    expected = JobState.ROLLED_BACK if action == "rollback" else JobState.COMMITTED
    after_b = journal_view(c.reader, job_id)
    assert after_b["state"] is expected and after_b["owner_pid"] != a.pid, after_b
    assert c.held and stopped(a.pid), "A was not held once B had taken the job over"
    assert job_leftovers(info, job_id) == []
    assert not staging.exists()

    netns.set_link(n.etcd_veth, up=True)
    os.kill(a.pid, signal.SIGCONT)  # still inside its one retried write (see attempt_b)
    code = a.wait(timeout=120)
    stderr = c.stderr()
    print(f"{action}: B took over and finished {b_s:.1f} s after its first refusal; "
          f"A exited {code} once its link came back")
    assert code == 3, stderr[-3000:]
    assert f"job {job_id}: this controller no longer owns it" in stderr, stderr[-3000:]
    assert journal_view(c.reader, job_id) == after_b  # not one write of A got through
    assert job_leftovers(info, job_id) == []
    assert host_programs(info) <= {"sshd", "mariadbd"}, "no daemon or client left running"

    assert sql_thread_running(source)
    wait_replicating(source, master)
    target.close()
    wait_replicating(target, master)
    if action == "rollback":
        assert has_schema(target, marker), "the target is not on its old datadir"
    else:
        assert not has_schema(target, marker), "the target still has its old datadir"
        assert differing_tables(table_checksums(master), table_checksums(target)) == []


def test_controller_host_dies_holding_the_source_then_two_hosts_roll_back_at_once(
    case: Case,
) -> None:
    """A's host dies right after the snapshot, inside the source's pause: its SQL thread
    stopped, A's session holding the backup lock. Both of A's links go down first, so no
    FIN reaches the source and that session lingers as it would after a power loss; then
    everything in A's namespace is SIGKILLed. (A stopped itself at the snapshot, so its
    lease may lapse before anyone asks; the refusal while a lease lives is the cut-off
    test's.) Once the lease expired, A's host is back, and a rollback is started on each
    host at the same moment: exactly one runs the undos (each entry once), which kills
    the lingering lock session, restarts the SQL thread, destroys the snapshot and leaves
    the target untouched and replicating; the other is refused, nothing done."""
    c, n = case, case.net
    info, rt = n.info, n.rt
    master, source, target = rt.server(info.master), rt.server(SOURCE), rt.server(TARGET)
    marker = "host_dies"
    c.markers.append(marker)
    mark_local(target, marker)

    a = start_controller(c, "pause-after:snapshot")
    try:
        assert wait_for(lambda: stopped(a.pid) or a.poll() is not None, 300, 0.05)
        assert a.poll() is None, f"A ended before the snapshot: {c.stderr()[-3000:]}"
        job_id = c.reader.list_jobs()[0].id
        owed = [e.action for e in c.reader.undo_entries(job_id) if e.outstanding]
        assert "mysql.release_lock_session" in owed and "snapshot.btrfs.destroy" in owed, owed
        assert leftovers(info), "the snapshot exists"

        netns.set_link(n.data_veth, up=False)
        netns.set_link(n.etcd_veth, up=False)
        netns.kill_namespace_processes(n.controller_ns)
        a.wait(timeout=30)
        assert not sql_thread_running(source), "the source should still be paused by A"

        def lease_expired() -> bool:
            held = [lock for lock in c.reader.locks() if lock.job_id == job_id]
            return bool(held) and all(lock.lease_remaining_s is not None
                                      and lock.lease_remaining_s < 0 for lock in held)

        assert wait_for(lease_expired, 3 * TTL_S, 0.5), "A's lease never expired"
    finally:
        netns.set_link(n.data_veth, up=True)
        netns.set_link(n.etcd_veth, up=True)
        netns.forget_neighbors(n.controller_ns)  # what A's host was resolving at its death
    env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
    argv = [sys.executable, "-m", "hotcopy", "rollback", "--config", str(c.config), job_id]
    with tempfile.TemporaryFile("w+") as on_a, tempfile.TemporaryFile("w+") as on_b:
        rivals = [subprocess.Popen([*netns_argv(n.controller_ns), *argv], stdout=on_a,
                                   stderr=subprocess.STDOUT, text=True, env=env),
                  subprocess.Popen(argv, stdout=on_b, stderr=subprocess.STDOUT, text=True,
                                   env=env)]
        try:
            codes = [p.wait(timeout=300) for p in rivals]
        finally:
            for p in rivals:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)
        outputs = []
        for out in (on_a, on_b):
            out.seek(0)
            outputs.append(out.read())
    assert sorted(codes) == [0, 2], outputs
    loser = outputs[codes.index(2)]
    assert "is owned by pid" in loser or "nothing to roll back" in loser, loser
    job = c.reader.get_job(job_id)
    assert job.state is JobState.ROLLED_BACK and job.owner_pid != a.pid
    entries = c.reader.undo_entries(job_id)
    assert all(e.state.value in ("done", "removed") for e in entries), entries
    assert all(e.attempts == 1 for e in entries if e.state.value == "done"), entries
    assert sql_thread_running(source)
    assert no_backup_lock(source)
    assert job_leftovers(info, job_id) == []
    wait_replicating(source, master)
    target.close()
    wait_replicating(target, master)
    assert has_schema(target, marker), "the target is not on its old datadir"
