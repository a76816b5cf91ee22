"""Guest parts that clone real MariaDB replicas with the hotcopy CLI, snapshotting via LVM.

The shard is built with the sandbox's own building blocks (same my.cnf, accounts and
replication as ``hotcopy sandbox up``), except that the replicas' datadirs live on
logical volumes: replica1 on ext4, replica2 on XFS. The system tables come from a
datadir the host installed beforehand (mariadb-install-db is slow under emulation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from guest_common import Results, leftovers, make_lv, mounts_matching, sh

from hotcopy import loadgen
from hotcopy.mysql import checksum, replication
from hotcopy.mysql.connection import ServerAddress
from hotcopy.mysql.server import Server
from hotcopy.sandbox import build
from hotcopy.sandbox.layout import (
    ADMIN_CNF,
    ADMIN_USER,
    CONFIG_FILE,
    HOST,
    REPL_CNF,
    REPL_USER,
    SandboxState,
    ServerSpec,
    client_option_file,
    render_config,
    server_paths,
    write_secret_file,
)

SHARD = Path("/srv/shard")
CONFIG = SHARD / CONFIG_FILE
CLI_TIMEOUT_S = 400
#: What a clone leaves only while it runs; rows to make the copy take a moment.
SEED_ROWS = 20000


def _specs() -> list[ServerSpec]:
    return [ServerSpec("master", "master", 1, 3401, "plain"),
            ServerSpec("replica1", "replica", 2, 3402, "plain"),
            ServerSpec("replica2", "replica", 3, 3403, "plain")]


def server(name: str, port: int) -> Server:
    return Server(ServerAddress(name, HOST, port), str(SHARD / ADMIN_CNF))


def build_shard(facts: dict[str, Any], work: Path, filesystems: dict[str, str]) -> None:
    specs = _specs()
    SHARD.mkdir(mode=0o755)
    template = server_paths(work, "template")
    started = time.monotonic()
    for spec in specs:
        paths = server_paths(SHARD, spec.name)
        build.prepare_filesystem(paths, spec, 0)
        fstype = filesystems.get(spec.name)
        if fstype is not None:
            sh("mount", make_lv(spec.name, "512M", fstype), str(paths.mnt))
            paths.datadir.mkdir(mode=0o750)
        # Across 9p once, then locally.
        build.copy_datadir(template if spec.role == "master" else
                           server_paths(SHARD, "master"), paths)
    facts["copy_datadirs_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    threads = [threading.Thread(target=build.start_server,
                                args=(server_paths(SHARD, s.name), s)) for s in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    facts["start_servers_s"] = round(time.monotonic() - started, 2)
    admin_password, repl_password = build.new_password(), build.new_password()
    write_secret_file(SHARD / ADMIN_CNF, client_option_file(ADMIN_USER, admin_password))
    write_secret_file(SHARD / REPL_CNF, client_option_file(REPL_USER, repl_password))
    master = specs[0]
    master_paths = server_paths(SHARD, master.name)
    build.seed_master(master_paths, master, admin_password, repl_password)
    position = build.master_gtid(master_paths, master)
    for spec in specs[1:]:
        build.attach_replica(server_paths(SHARD, spec.name), spec, master, repl_password,
                             position)
    state = SandboxState(directory=str(SHARD), dir_created=False, image_size=0,
                         servers=specs, created_at=time.time(), state="up")
    CONFIG.write_text(render_config(SHARD, state))
    loadgen.seed(server("master", 3401).address, str(SHARD / ADMIN_CNF), SEED_ROWS)
    facts["datadir_fstypes"] = {s.name: mounts_matching(str(server_paths(SHARD, s.name).mnt))
                                for s in specs}


def hotcopy(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hotcopy", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, check=False,
                          env={**_environ(), **(env or {})})
    try:
        document = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        document = {"unparsed_stdout": proc.stdout[-3000:]}
    return {"args": list(args), "returncode": proc.returncode,
            "seconds": round(time.monotonic() - started, 2), "document": document,
            "stderr_tail": proc.stderr[-3000:]}


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}


def clone(source: str, target: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return hotcopy("clone", "--config", str(CONFIG), "--source", source, "--target", target,
                   "--yes", "--json", env=env)


def shard_state(names: tuple[str, ...] = ("replica1", "replica2")) -> dict[str, Any]:
    """After the load stopped: caught up, replicating, and every table's checksum."""
    ports = {"master": 3401, "replica1": 3402, "replica2": 3403}
    master = server("master", 3401)
    state: dict[str, Any] = {"master": checksum.table_checksums(master)}
    for name in names:
        replica = server(name, ports[name])
        replication.wait_caught_up(replica, master, timeout_s=120)
        status = replication.single_channel(replica)
        state[name] = {"checksums": checksum.table_checksums(replica),
                       "io": status.io_running if status else None,
                       "sql": status.sql_running if status else None}
        replica.close()
    master.close()
    return state


def _roots() -> list[Path]:
    return [p for name in ("replica1", "replica2")
            for p in (server_paths(SHARD, name).root, server_paths(SHARD, name).mnt)]


def clone_under_load(facts: dict[str, Any], source: str, target: str,
                     env: dict[str, str] | None = None) -> None:
    load = loadgen.WriteLoad(server("master", 3401).address, str(SHARD / ADMIN_CNF))
    load.start()
    try:
        facts["clone"] = clone(source, target, env)
    finally:
        facts["load_commits"] = load.stop()
        facts["load_errors"] = load.errors[:5]


def killed_and_rolled_back(facts: dict[str, Any], source: str, target: str) -> None:
    clone_under_load(facts, source, target, {"HOTCOPY_FAULT": "kill-during:pull:0.5"})
    facts["left_by_the_kill"] = leftovers(_roots())
    jobs = hotcopy("jobs", "--config", str(CONFIG), "--json")
    facts["jobs"] = jobs["document"]
    unfinished = [j["job"] for j in jobs["document"] or [] if j["state"] != "committed"]
    facts["rollback"] = hotcopy("rollback", "--config", str(CONFIG), "--json", unfinished[0])


def roll_back_unfinished() -> list[str]:
    jobs = hotcopy("jobs", "--config", str(CONFIG), "--json")["document"] or []
    unfinished = [j["job"] for j in jobs if j["state"] not in ("committed", "rolled-back",
                                                               "failed")]
    for job in unfinished:
        hotcopy("rollback", "--config", str(CONFIG), "--json", job)
    return unfinished


def clone_parts(results: Results, work: Path, filesystems: list[str], deadline: float,
                only: tuple[str, ...] | None = None) -> None:
    layout = {"replica1": "ext4", "replica2": "xfs" if "xfs" in filesystems else "ext4"}
    with results.part("shard") as facts:
        build_shard(facts, work, layout)
    if "shard" in results.data["errors"]:
        return
    plan = [("clone_ext4", "replica1", "replica2", None),
            ("clone_killed", "replica2", "replica1", "kill"),
            ("clone_xfs", "replica2", "replica1", None)]
    for name, source, target, mode in plan:
        if only is not None and name not in only:
            continue
        # A part that failed half-way must not leave its job to block the next one.
        with results.part(f"before_{name}") as facts:
            facts["rolled_back"] = roll_back_unfinished()
        if time.monotonic() > deadline - 240:  # a clone took up to 180s
            results.data["skipped"] = [*results.data.get("skipped", []), name]
            continue
        with results.part(name) as facts:
            facts["source_fstype"] = layout[source]
            if mode == "kill":
                killed_and_rolled_back(facts, source, target)
            else:
                clone_under_load(facts, source, target)
            facts["leftovers"] = leftovers(_roots())
            facts["shard"] = shard_state()
