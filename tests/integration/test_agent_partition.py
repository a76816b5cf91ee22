"""Two agents on two hosts, each seeing only its own etcd member, then a real partition.

Three network namespaces on a bridge, one etcd member in each; agent A runs in the
first and knows only its member, agent B in the second. The first host's link is cut:
A is left with a minority member (no quorum), B with the majority. Never two leaders
acting: A stops the moment it cannot renew its lease (it logs why and is never elected
again), B is elected once A's lease expired, and every decision in the store was
written by A before the cut or by B after it: A's writes need a quorum it lost. No
MariaDB is involved: the agents see their servers unreachable and the master down,
which every leader records as its first decision, so each decision names its leader.
"""

from __future__ import annotations

import calendar
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hotcopy.sandbox import netns
from hotcopy.sandbox.sshd import netns_argv

from ..etcd_cluster import etcd_status, require_etcd
from .helpers import hotcopy, wait_for

pytestmark = pytest.mark.etcd

#: Long enough that a loaded CI machine (2 cores, every other test's servers) still
#: renews in time: a lease lost to a slow renewal would be a second election, not a bug.
TTL_S = 5


@dataclass
class Host:
    netns: str
    veth: str
    ip: str

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:2379"


def config(directory: Path, name: str, endpoints: list[str], prefix: str) -> Path:
    option = directory / "admin.cnf"
    if not option.exists():
        option.write_text("[client]\nuser = nobody\npassword = none\n")
        option.chmod(0o600)
    path = directory / f"{name}.toml"
    servers = "".join(
        f'\n[servers.{server}]\nhost = "127.0.0.1"\nport = {port}\nssh = "local"\n'
        f'datadir = "/nonexistent/{server}"\ndefaults_file = "/nonexistent/{server}.cnf"\n'
        for server, port in (("db1", 1), ("db2", 2)))
    path.write_text(
        f'[shard]\nname = "part"\n[mysql]\noption_file = "{option}"\nconnect_timeout_s = 1\n'
        f'[journal]\nbackend = "etcd"\nendpoints = {json.dumps(endpoints)}\n'
        f'prefix = "{prefix}"\nlease_ttl_s = {TTL_S}\ntimeout_s = 1\nretry_rounds = 1\n'
        f"[agent]\ninterval_s = 0.5\nlease_ttl_s = {TTL_S}\nmetrics_port = 0\n" + servers)
    return path


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    etcd = require_etcd()
    tag = netns.tag_for(tmp_path)
    bridge = netns.bridge_name(tag)
    made: list[Host] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with netns.subnet_lock():
            subnet = netns.pick_subnet(tag)
            netns.create_bridge(bridge, subnet)
        for i in range(3):
            host = Host(netns.namespace_name(tag, f"e{i}"), netns.veth_name(tag, i),
                        netns.address(subnet, netns.FIRST_HOST + i))
            netns.create_host(host.netns, host.veth, bridge, host.ip)
            made.append(host)
        cluster = ",".join(f"m{i}=http://{h.ip}:2380" for i, h in enumerate(made))
        for i, host in enumerate(made):
            log = (tmp_path / f"etcd-{i}.log").open("wb")
            procs.append(subprocess.Popen(
                [*netns_argv(host.netns), etcd, "--name", f"m{i}",
                 "--data-dir", str(tmp_path / f"etcd-{i}"),
                 "--listen-client-urls", host.client_url, "--advertise-client-urls",
                 host.client_url, "--listen-peer-urls", f"http://{host.ip}:2380",
                 "--initial-advertise-peer-urls", f"http://{host.ip}:2380",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"p-{tag}", "--heartbeat-interval", "100",
                 # Pre-vote, as production clusters should run (the default from etcd
                 # 3.5): without it the cut-off member's election terms grow while it
                 # is alone, and on its return it deposes the healthy leader, a second
                 # of unavailability for everyone that has nothing to do with hotcopy.
                 "--election-timeout", "1000", "--pre-vote"],
                stdout=log, stderr=subprocess.STDOUT))

        def ready() -> bool:
            answers = [etcd_status(h.client_url) for h in made]
            return all(a is not None and int(str(a.get("leader", 0))) != 0 for a in answers)

        assert wait_for(ready, 30), "the etcd cluster did not form"
        yield made
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for host in made:
            netns.remove_host(host.netns, host.veth)
        netns.remove_bridge(bridge)
        for i in range(3):
            shutil.rmtree(tmp_path / f"etcd-{i}", ignore_errors=True)


def log_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text().splitlines():
        if line.strip():
            events.append(json.loads(line))  # every line must be JSON
    return events


def epoch(line: dict[str, Any]) -> float:
    whole, _, millis = str(line["ts"]).rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000


def test_partitioned_agents_never_lead_at_once(hosts: list[Host], tmp_path: Path) -> None:
    prefix = f"/part-{tmp_path.name}"
    watcher = config(tmp_path, "watcher", [h.client_url for h in hosts], prefix)
    agents: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(name: str, host: Host) -> None:
        path = config(tmp_path, name, [host.client_url], prefix)
        log = tmp_path / f"{name}.log"
        agents[name] = (subprocess.Popen(
            [*netns_argv(host.netns), sys.executable, "-m", "hotcopy", "agent", "run",
             "--config", str(path)], stdout=subprocess.DEVNULL, stderr=log.open("wb")), log)

    def status() -> dict[str, Any]:
        proc = hotcopy("agent", "status", "--config", str(watcher), "--json", timeout=60)
        assert proc.returncode == 0, proc.stderr
        document: dict[str, Any] = json.loads(proc.stdout)
        return document

    def leader_pid() -> int | None:
        leader = status()["leader"]
        return None if leader is None else int(str(leader["id"]).rsplit(":", 1)[1])

    try:
        start("a", hosts[0])
        assert wait_for(lambda: leader_pid() is not None, 60), agents["a"][1].read_text()
        a_pid = leader_pid()
        start("b", hosts[1])
        assert wait_for(lambda: len(status()["agents"]) == 2, 60)
        assert leader_pid() == a_pid  # b campaigns and loses while a renews its lease

        cut = time.time()
        netns.set_link(hosts[0].veth, up=False)  # a keeps only its minority member
        assert wait_for(lambda: leader_pid() not in (None, a_pid), 10 * TTL_S, 0.2), \
            "b never took the lead"
        b_pid = leader_pid()
        assert wait_for(lambda: any(str(d["agent"]).endswith(f":{b_pid}")
                                    for d in status()["decisions"]), 30)
        healed = time.time()
        netns.set_link(hosts[0].veth, up=True)

        def a_back() -> bool:
            return any(str(x["id"]).endswith(f":{a_pid}") and float(x["seen"]) > healed + 1
                       for x in status()["agents"])

        assert wait_for(a_back, 10 * TTL_S), "a never reached etcd again"
        assert leader_pid() == b_pid  # a came back and did not take the lead back
    finally:
        for proc, _ in agents.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in agents.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    a_log = log_events(agents["a"][1])
    b_log = log_events(agents["b"][1])
    a_after = [line for line in a_log if epoch(line) > cut]
    assert any(line.get("event") in ("etcd-unreachable", "lease-lost") for line in a_after), \
        "a never noticed it lost etcd"
    assert not [line for line in a_after if line.get("event") == "elected"]
    b_elections = [line for line in b_log if line.get("event") == "elected"]
    assert b_elections, "b's log has no election"
    b_elected = b_elections[0]
    a_stopped = min(epoch(line) for line in a_after
                    if line.get("event") in ("etcd-unreachable", "lease-lost"))
    decisions = status_after(watcher)
    by_a = [d["at"] for d in decisions if str(d["agent"]).endswith(f":{a_pid}")]
    by_b = [d["at"] for d in decisions if str(d["agent"]).endswith(f":{b_pid}")]
    assert by_a and by_b and max(by_a) <= cut < min(by_b)
    print(f"b elected {epoch(b_elected) - cut:.1f}s after the cut; a stopped acting "
          f"{a_stopped - cut:.1f}s after it")


def status_after(watcher: Path) -> list[dict[str, Any]]:
    proc = hotcopy("agent", "status", "--config", str(watcher), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    decisions: list[dict[str, Any]] = json.loads(proc.stdout)["decisions"]
    return decisions
