"""`hotcopy check` against the real shard: all good, then each broken set-up it must name.

Broken set-ups: a tool missing on the hosts (PATH without rsync), an admin account
without a privilege it needs (its GRANT printed, and once run, a real clone works with
exactly the minimal set), and, across network namespaces, an unknown host key and a
transfer port that does not get through from target to source.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.sandbox import SandboxInfo

from .conftest import own_sandbox
from .helpers import hotcopy, leftovers, runtime

WIDE = {"COLUMNS": "200"}
ACCOUNT = "hc_minimal"


def check(config: Path, env: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]]]:
    proc = hotcopy("check", "--config", str(config), "--json", env={**WIDE, **(env or {})},
                   timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    document = json.loads(proc.stdout)
    assert document["exit_code"] == proc.returncode
    return proc.returncode, document["rows"]


def problems(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "problem"]


def with_option_file(info: SandboxInfo, directory: Path, option_file: Path) -> Path:
    text = re.sub(r'(?m)^option_file = .*admin\.cnf"$', f'option_file = "{option_file}"',
                  info.config_path.read_text())
    assert str(option_file) in text
    path = directory / "hotcopy.toml"
    path.write_text(text)
    return path


def test_the_sandbox_is_ready(sandbox: SandboxInfo) -> None:
    code, rows = check(sandbox.config_path)
    assert code == 0, problems(rows)
    assert [r for r in rows if r["status"] != "ok"] == []
    for name in ("master", "replica1", "replica2"):
        checks = {r["check"] for r in rows if r["server"] == name}
        assert {"ssh", "tools", "snapshot", "mysql", "grants"} <= checks, (name, checks)
    ports = [r for r in rows if r["check"].startswith("port ")]
    assert sorted(r["check"] for r in ports) == ["port replica1 → replica2",
                                                 "port replica2 → replica1"]
    assert any(r["check"] == "replication account" for r in rows)
    text = hotcopy("check", "--config", str(sandbox.config_path), env=WIDE)
    assert text.returncode == 0 and "ready: no problems found" in text.stdout
    assert leftovers(sandbox) == []


def test_a_tool_missing_on_the_hosts(sandbox: SandboxInfo, tmp_path: Path) -> None:
    """Every tool of the PATH but rsync, as on a host where it was never installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in [*os.environ.get("PATH", "").split(":"), "/usr/sbin", "/sbin"]:
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bin_dir / entry.name
            if entry.name != "rsync" and not link.exists() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    env = {"PATH": str(bin_dir)}
    assert shutil.which("rsync", path=str(bin_dir)) is None
    code, rows = check(sandbox.config_path, env)
    assert code == 2
    found = {(r["server"], r["check"]): r for r in problems(rows)}
    for name in ("master", "replica1", "replica2"):
        row = found[(name, "tools")]
        assert row["detail"] == "not installed: rsync", row
        assert row["fix"].startswith(f"install rsync on {name}"), row
    assert {r["check"] for r in problems(rows)} == {"tools"}, problems(rows)


@pytest.fixture
def minimal_account(sandbox: SandboxInfo, tmp_path: Path) -> Iterator[Path]:
    """An admin account with the minimal set but RELOAD (made on the master, replicated)."""
    rt = runtime(sandbox)
    master = rt.server("master")
    host = "127.0.0.1"
    password = "hc-" + os.urandom(8).hex()
    master.execute((f"CREATE USER '{ACCOUNT}'@'{host}' IDENTIFIED BY %s", (password,)))
    master.execute((f"GRANT SELECT, PROCESS, SUPER, READ_ONLY ADMIN, BINLOG MONITOR, "
                    f"REPLICATION SLAVE ADMIN, SLAVE MONITOR ON *.* TO '{ACCOUNT}'@'{host}'", ()))
    master.execute((f"GRANT ALTER ON mysql.* TO '{ACCOUNT}'@'{host}'", ()))
    option_file = tmp_path / "minimal.cnf"
    option_file.write_text(f"[client]\nuser = {ACCOUNT}\npassword = {password}\n")
    option_file.chmod(0o600)
    try:
        yield with_option_file(sandbox, tmp_path, option_file)
    finally:
        master.execute((f"DROP USER IF EXISTS '{ACCOUNT}'@'{host}'", ()))
        rt.close()


def test_a_missing_privilege_is_named_with_its_grant_and_the_grant_suffices(
        sandbox: SandboxInfo, minimal_account: Path) -> None:
    rt = runtime(sandbox)
    try:
        for name in ("replica1", "replica2"):  # the account has replicated to them
            assert rt.server(name).scalar(
                ("SELECT COUNT(*) FROM mysql.user WHERE user = %s", (ACCOUNT,))) == 1
    finally:
        rt.close()
    code, rows = check(minimal_account)
    assert code == 2
    grant = f"GRANT RELOAD ON *.* TO '{ACCOUNT}'@'127.0.0.1';"
    for name in ("master", "replica1", "replica2"):
        row = next(r for r in problems(rows) if (r["server"], r["check"]) == (name, "grants"))
        assert row["detail"] == f"{ACCOUNT}@127.0.0.1 lacks RELOAD", row
        assert row["fix"] == grant
    rt = runtime(sandbox)
    try:
        rt.server("master").execute((grant.rstrip(";"), ()))
    finally:
        rt.close()
    code, rows = check(minimal_account)
    assert code == 0, problems(rows)
    # The minimal set is enough for a real clone, not only for the check.
    proc = hotcopy("clone", "--config", str(minimal_account), "--source", "replica1",
                   "--target", "replica2", "--yes", env=WIDE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert leftovers(sandbox) == []


# -- across hosts (network namespaces, sshd in each) -------------------------------------


@pytest.fixture(scope="module")
def hosts() -> Iterator[SandboxInfo]:
    if any(shutil.which(tool) is None for tool in ("ip", "nsenter", "ssh", "/usr/sbin/sshd")):
        pytest.fail("the netns topology needs ip, nsenter, ssh and sshd: run scripts/bootstrap.sh")
    with own_sandbox(topology="netns", seed_rows=2_000) as info:
        yield info


def in_host(info: SandboxInfo, name: str, argv: list[str]) -> None:
    subprocess.run(["nsenter", f"--net=/run/netns/{info.namespaces[name]}", "--", *argv],
                   check=True, timeout=30, capture_output=True)


def test_hosts_over_ssh_are_ready(hosts: SandboxInfo) -> None:
    code, rows = check(hosts.config_path)
    assert code == 0, problems(rows)
    ssh = [r for r in rows if r["check"] == "ssh"]
    assert len(ssh) == 3 and all("login works, host key known" in r["detail"] for r in ssh)
    assert len([r for r in rows if r["check"].startswith("port ") and r["status"] == "ok"]) == 2


def test_an_unknown_host_key(hosts: SandboxInfo, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    text = re.sub(r'(?m)^known_hosts = .*$', f'known_hosts = "{empty}"',
                  hosts.config_path.read_text())
    config = tmp_path / "hotcopy.toml"
    config.write_text(text)
    code, rows = check(config)
    assert code == 2
    keys = [r for r in problems(rows) if r["check"] == "host key"]
    assert sorted(r["server"] for r in keys) == ["master", "replica1", "replica2"], rows
    for row in keys:
        assert f"is not in {empty}" in row["detail"] and "ssh-keyscan" in row["fix"], row


def test_a_transfer_port_that_does_not_get_through(hosts: SandboxInfo) -> None:
    """replica2 cannot reach replica1 (a prohibit route on replica2's host)."""
    source_ip = hosts.hosts["replica1"]
    in_host(hosts, "replica2", ["ip", "route", "add", "prohibit", f"{source_ip}/32"])
    try:
        code, rows = check(hosts.config_path)
    finally:
        in_host(hosts, "replica2", ["ip", "route", "del", "prohibit", f"{source_ip}/32"])
    assert code == 2
    row = next(r for r in rows if r["check"] == "port replica2 → replica1")
    assert row["status"] == "problem" and row["server"] == "replica2", row
    assert row["detail"].startswith(f"replica2 cannot connect to {source_ip}:"), row
    assert row["fix"] == (f"open TCP 28700-28799 from replica2 to replica1 ({source_ip}) in "
                          "the firewall"), row
    # Everything else on the hosts is still fine: the port is the one problem named.
    assert {r["check"] for r in problems(rows)} <= {"port replica2 → replica1",
                                                    "port replica1 → replica2"}, problems(rows)
    assert check(hosts.config_path)[0] == 0  # the route is gone: the port gets through again
