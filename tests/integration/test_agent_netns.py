"""Issue 11's acceptance on separate hosts: three agents, each on a host of its own.

The shard is the netns sandbox (a master and three replicas, each in a network
namespace with its own address and sshd). Three more namespaces on the same bridge are
the controller group: each runs one etcd member and one `hotcopy agent run`, so every
agent reaches etcd, the servers' SQL and their sshds over the network, and the rsync
stream goes donor host -> target host, as in production. Each agent runs in a session
of its own: SIGKILLing its process group is the death of that controller host.

The leader's death lands mid-clone for certain, whatever the machine's speed: the only
agent started with ``HOTCOPY_FAULT=pause-before:pull`` is the one elected first, its
clone stops itself once the transfer server runs and before the copy, and the test
kills it there. The agents that take over carry no fault.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hotcopy.mysql import replication
from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.runtime import Runtime
from hotcopy.saga import Job, JobState
from hotcopy.saga.etcd_client import EtcdClient
from hotcopy.saga.etcd_journal import EtcdJournal
from hotcopy.sandbox import SandboxInfo, netns
from hotcopy.sandbox.sshd import netns_argv

from ..etcd_cluster import etcd_status, require_etcd
from ..real_parts import missing_tools, needs
from .conftest import own_sandbox
from .helpers import (
    hotcopy,
    leftovers,
    runtime,
    wait_for,
    wait_replicating,
    with_etcd_journal,
)

pytestmark = [pytest.mark.etcd,
              needs(missing_tools(("ip", "nsenter", "ssh", "ssh-keygen", "/usr/sbin/sshd"),
                                  "multi-host agent tests"))]

TTL_S = 3
#: The controller hosts' addresses on the sandbox's /24 (the shard's hosts are .10-.13).
AGENT_HOST = 50
#: Bridge-side veth indexes of the controller hosts (the shard's are 0-3).
AGENT_VETH = 6
FAULT = "pause-before:pull"


@dataclass
class ControllerHost:
    name: str
    netns: str
    veth: str
    ip: str
    config: Path
    agent: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:2379"


@dataclass
class Group:
    info: SandboxInfo
    hosts: list[ControllerHost]
    prefix: str
    rt: Runtime
    etcd: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [h.client_url for h in self.hosts]

    def journal(self) -> EtcdJournal:
        return EtcdJournal(EtcdClient(self.endpoints, timeout_s=2, rounds=5), "sandbox",
                           prefix=self.prefix, lease_ttl_s=TTL_S)


def _agent_config(info: SandboxInfo, name: str, endpoints: list[str], prefix: str) -> Path:
    """The sandbox's config with the etcd journal and a fast, bounded agent."""
    text = with_etcd_journal(info, endpoints, prefix, lease_ttl_s=TTL_S)
    text += ("\n[agent]\ninterval_s = 0.5\ngrace_s = 1\naudit_interval_s = 60\n"
             f"lease_ttl_s = {TTL_S}\nmetrics_port = 0\nmax_reseeds_per_day = 10\n")
    path = info.directory / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    etcd = require_etcd()
    work = tmp_path_factory.mktemp("agent-netns")
    with own_sandbox(topology="netns", replicas=3, seed_rows=40_000) as info:
        assert info.bridge is not None
        subnet = int(info.hosts[info.master].split(".")[2])
        tag = netns.tag_for(info.directory)
        prefix = f"/agent-netns-{os.getpid()}"
        ips = [netns.address(subnet, AGENT_HOST + i) for i in range(3)]
        endpoints = [f"http://{ip}:2379" for ip in ips]
        hosts = [ControllerHost(f"ctl{i}", netns.namespace_name(tag, f"ctl{i}"),
                                netns.veth_name(tag, AGENT_VETH + i), ips[i],
                                _agent_config(info, f"agent-ctl{i}", endpoints, prefix))
                 for i in range(3)]
        made: list[ControllerHost] = []
        g = Group(info, hosts, prefix, runtime(info))
        try:
            for host in hosts:
                made.append(host)
                netns.create_host(host.netns, host.veth, info.bridge, host.ip)
            cluster = ",".join(f"{h.name}=http://{h.ip}:2380" for h in hosts)
            for host in hosts:
                log = (work / f"etcd-{host.name}.log").open("wb")
                g.etcd.append(subprocess.Popen(
                    [*netns_argv(host.netns), etcd, "--name", host.name,
                     "--data-dir", str(work / f"etcd-{host.name}"),
                     "--listen-client-urls", host.client_url,
                     "--advertise-client-urls", host.client_url,
                     "--listen-peer-urls", f"http://{host.ip}:2380",
                     "--initial-advertise-peer-urls", f"http://{host.ip}:2380",
                     "--initial-cluster", cluster, "--initial-cluster-state", "new",
                     "--initial-cluster-token", f"an-{tag}", "--heartbeat-interval", "100",
                     "--election-timeout", "1000"], stdout=log, stderr=subprocess.STDOUT))

            def formed() -> bool:
                answers = [etcd_status(url) for url in endpoints]
                return all(a is not None and int(str(a.get("leader", 0))) != 0
                           for a in answers)

            assert wait_for(formed, 30), "the etcd cluster on the controller hosts did not form"
            yield g
        finally:
            for host in made:
                stop_agent(host)
            for proc in g.etcd:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            g.rt.close()
            for host in made:
                netns.remove_host(host.netns, host.veth)
            shutil.rmtree(work, ignore_errors=True)


def start_agent(host: ControllerHost, fault: str | None = None) -> int:
    """`hotcopy agent run` inside the controller host, in a session of its own."""
    env = dict(os.environ)
    env.pop("HOTCOPY_FAULT", None)
    if fault:
        env["HOTCOPY_FAULT"] = fault
    host.log = host.config.with_suffix(f".{int(time.time() * 1000)}.log")
    with host.log.open("wb") as log:
        # nsenter --net execs the agent: its pid is the agent's, and its session's id.
        host.agent = subprocess.Popen(
            [*netns_argv(host.netns), sys.executable, "-m", "hotcopy", "agent", "run",
             "--config", str(host.config)], stdout=subprocess.DEVNULL, stderr=log,
            env=env, start_new_session=True)
    return host.agent.pid


def stop_agent(host: ControllerHost) -> None:
    """SIGTERM (a clone it runs rolls back or finishes its cleanup), bounded, then SIGKILL."""
    proc = host.agent
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    host.agent = None


def status(g: Group) -> dict[str, Any]:
    """`hotcopy agent status`, asked from the root namespace (an operator's desk)."""
    proc = hotcopy("agent", "status", "--config", str(g.hosts[0].config), "--json",
                   timeout=60)
    assert proc.returncode == 0, proc.stderr
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def leader_pid(g: Group) -> int | None:
    leader = status(g)["leader"]
    return None if leader is None else int(str(leader["id"]).rsplit(":", 1)[1])


def sql(rt: Runtime, name: str, statement: str, *, binlog: bool) -> None:
    session = rt.server(name).new_session()
    try:
        session.execute(f"SET SESSION sql_log_bin = {int(binlog)}")
        session.execute(statement)
    finally:
        session.close()


def diverge(g: Group, replica: str, table: str) -> None:
    """A row deleted on the replica only, then updated on the master: the SQL thread
    of the replica stops on error 1032 (row not found)."""
    rt, master = g.rt, g.info.master
    sql(rt, master, "CREATE DATABASE IF NOT EXISTS agentdb", binlog=True)
    sql(rt, master, f"CREATE TABLE agentdb.{table} (id INT PRIMARY KEY, v INT)", binlog=True)
    sql(rt, master, f"INSERT INTO agentdb.{table} VALUES (1, 1)", binlog=True)
    wait_replicating(rt.server(replica), rt.server(master))
    sql(rt, replica, f"DELETE FROM agentdb.{table} WHERE id = 1", binlog=False)
    sql(rt, master, f"UPDATE agentdb.{table} SET v = 2 WHERE id = 1", binlog=True)

    def stopped_on_1032() -> bool:
        row = replication.single_channel(rt.server(replica))
        return row is not None and row.sql_running == "No" and row.last_sql_errno == 1032

    assert wait_for(stopped_on_1032, 60), f"{replica}'s SQL thread did not stop on 1032"


def stopped_child(pid: int) -> int | None:
    """A child of ``pid`` stopped by SIGSTOP (the clone paused by its fault), if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "T" and int(fields[1]) == pid:
            return int(entry.name)
    return None


def processes_naming(needle: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return [line for line in out.splitlines() if needle in line and "ps -ww" not in line]


def host_programs(info: SandboxInfo) -> set[str]:
    """What runs inside the shard's hosts, by program name."""
    names = set()
    for name in info.namespaces.values():
        for pid in netns.namespace_pids(name):
            try:
                names.add(Path(f"/proc/{pid}/comm").read_text().strip())
            except OSError:
                continue  # gone meanwhile
    return names


def wait_job(g: Group, reader: EtcdJournal, target: str, since: float) -> Job:
    found: list[Job] = []

    def started() -> bool:
        found[:] = [j for j in reader.list_jobs() if j.params.get("target") == target
                    and j.created >= since - 1]
        return bool(found)

    assert wait_for(started, 120, 0.1), f"the leader started no re-seed of {target}"
    return found[0]


def assert_reseeded(g: Group, job: Job, target: str) -> None:
    """The target replicates from the master again, with the master's data; the donor too;
    nothing of the job is left on any host and, once the agents stopped, nothing runs
    there but sshd and mariadbd."""
    # The job is committed at the commit point; removing the old datadir follows it.
    assert wait_for(lambda: any(s.name == "commit" and s.outcome == "done"
                                for s in g.journal().steps(job.id)), 300, 0.5), \
        f"job {job.id} never finished its cleanup"
    rt = g.rt
    master, replica = rt.server(g.info.master), rt.server(target)
    replica.close()
    wait_replicating(replica, master)
    assert differing_tables(table_checksums(master), table_checksums(replica)) == []
    donor = rt.server(str(job.params["source"]))
    wait_replicating(donor, master)
    assert leftovers(g.info) == []
    # The agents' polls run commands on the hosts: look for what is left once they stopped.
    for host in g.hosts:
        stop_agent(host)
    assert processes_naming(job.id) == []
    assert host_programs(g.info) <= {"sshd", "mariadbd"}, "no daemon or client left running"


@pytest.fixture
def agents(group: Group) -> Iterator[Group]:
    try:
        yield group
    finally:
        for host in group.hosts:
            stop_agent(host)


def test_leader_reseeds_a_diverged_replica_from_the_best_donor(agents: Group) -> None:
    g = agents
    pids = {start_agent(host) for host in g.hosts}
    assert wait_for(lambda: leader_pid(g) in pids, 60), "no agent became the leader"
    assert wait_for(lambda: len(status(g)["agents"]) == 3, 60)
    leader = leader_pid(g)
    since = time.time()
    diverge(g, "replica1", "t1")

    reader = g.journal()
    job = wait_job(g, reader, "replica1", since)
    assert wait_for(lambda: reader.get_job(job.id).terminal, 600, 0.5), \
        f"job {job.id} never ended: {reader.get_job(job.id).state}"
    ended = reader.get_job(job.id)
    assert ended.state is JobState.COMMITTED, ended

    report = status(g)
    (decision,) = [d for d in report["decisions"]
                   if d.get("action") == "reseed" and d.get("target") == "replica1"]
    # Every replica lags 0 s here: the tie goes to the first name, replica2.
    assert decision["donor"] == ended.params["source"] == "replica2"
    assert str(decision["agent"]).endswith(f":{leader}")
    reasons = " ".join(decision["reasons"])
    assert "1032" in reasons, reasons  # why the target is broken
    assert "replica2 replicates" in reasons and "least lag" in reasons  # why this donor
    assert "crash-safe" in reasons and "same major version" in reasons
    assert leader_pid(g) == leader, "the leadership must not have moved"
    assert_reseeded(g, ended, "replica1")


def test_leader_killed_mid_clone_another_leads_and_the_job_ends(agents: Group) -> None:
    g = agents
    first = start_agent(g.hosts[0], FAULT)  # only the agent elected first pauses its clone
    assert wait_for(lambda: leader_pid(g) == first, 60), "the first agent was not elected"
    others = {start_agent(host) for host in g.hosts[1:]}
    assert wait_for(lambda: len(status(g)["agents"]) >= 3, 60)
    assert leader_pid(g) == first
    since = time.time()
    diverge(g, "replica2", "t2")

    reader = g.journal()
    job = wait_job(g, reader, "replica2", since)
    paused: list[int] = []

    def clone_paused() -> bool:
        child = stopped_child(first)
        paused[:] = [] if child is None else [child]
        return child is not None

    assert wait_for(clone_paused, 300, 0.2), "the leader's clone never reached the pull"
    steps = {s.name: s.outcome for s in reader.steps(job.id)}
    assert steps.get("serve") == "done" and "pull" not in steps, steps
    assert reader.get_job(job.id).state is JobState.RUNNING

    killed_at = time.monotonic()
    os.killpg(first, signal.SIGKILL)  # the controller host dies: agent and clone at once
    assert g.hosts[0].agent is not None
    g.hosts[0].agent.wait(timeout=30)
    assert wait_for(lambda: not Path(f"/proc/{paused[0]}").exists(), 30)

    assert wait_for(lambda: leader_pid(g) in others, 10 * TTL_S, 0.1), \
        "no other agent took the lead"
    took_lead_s = time.monotonic() - killed_at
    assert wait_for(lambda: reader.get_job(job.id).terminal, 600, 0.5), \
        f"job {job.id} never ended: {reader.get_job(job.id).state}"
    ended = reader.get_job(job.id)
    ended_s = time.monotonic() - killed_at
    report = status(g)
    (takeover,) = [d for d in report["decisions"] if d.get("job") == job.id]
    new_leader = leader_pid(g)
    assert str(takeover["agent"]).endswith(f":{new_leader}")
    # Killed after the transfer server started, snapshot kept: the policy resumes.
    assert takeover["action"] == "resume", takeover
    assert any("gone" in r for r in takeover["reasons"]), takeover
    assert ended.state is JobState.COMMITTED, ended
    print(f"new leader {took_lead_s:.1f}s after the SIGKILL (lease TTL {TTL_S}s); "
          f"job {job.id} committed by resume {ended_s:.1f}s after it")
    assert_reseeded(g, ended, "replica2")
