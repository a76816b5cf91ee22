"""Guest parts that clone real MariaDB replicas with the hotcopy CLI, snapshotting via LVM.

The shard is built with the sandbox's own building blocks (same my.cnf, accounts and
replication as ``hotcopy sandbox up``), except that the replicas' datadirs live on
logical volumes: replica1 on ext4, replica2 on XFS. The system tables come from a
datadir the host installed beforehand (mariadb-install-db is slow under emulation).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from guest_common import EX, VG, Results, leftovers, make_lv, mounts_matching, sh

from hotcopy import loadgen
from hotcopy.mysql import checksum, replication
from hotcopy.mysql.connection import ServerAddress
from hotcopy.mysql.server import Server
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import build
from hotcopy.sandbox.layout import (
    ADMIN_CNF,
    ADMIN_USER,
    CONFIG_FILE,
    HOST,
    JOURNAL_FILE,
    REPL_CNF,
    REPL_USER,
    SandboxState,
    ServerSpec,
    client_option_file,
    render_config,
    server_paths,
    write_secret_file,
)
from hotcopy.snapshot.lvm import find_volume, list_volumes

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


#: The overflow part: a 40 MiB snapshot of replica1, and a copy slowed to 2 MiB/s, so the
#: pull is still far from its end when the test stops it (it cannot go faster). A stream
#: silent for 10 s counts as stalled: its watchdog kills it and the transfer would retry.
OVERFLOW_SNAPSHOT_GIB = 0.04
OVERFLOW_BWLIMIT_KBPS = 2048
OVERFLOW_IO_TIMEOUT_S = 10
OVERFLOW_FILL_MAX_MIB = 200


def _overflow_config() -> Path:
    header = "[servers.replica1]\n"
    text = CONFIG.read_text().replace(
        header, f"{header}lvm_snapshot_max_gib = {OVERFLOW_SNAPSHOT_GIB}\n")
    path = SHARD / "overflow.toml"
    path.write_text(f"{text}\n[transfer]\nbwlimit_kbps = {OVERFLOW_BWLIMIT_KBPS}\n"
                    f"io_timeout_s = {OVERFLOW_IO_TIMEOUT_S}\n")
    return path


def _staged_bytes(target: str) -> int:
    datadir = server_paths(SHARD, target).datadir
    staged = list(datadir.parent.glob(f"{datadir.name}.hotcopy-new-*"))
    if not staged:
        return 0
    return int(sh("du", "-sb", str(staged[0])).split()[0])


def _rsync_pids(*, clients_only: bool = False) -> list[int]:
    """rsync processes: the copy's clients (on the target), and with them the daemon's."""
    out = subprocess.run(["pgrep", "-x", "rsync"], capture_output=True, text=True, check=False)
    pids = []
    for pid in map(int, out.stdout.split()):
        with contextlib.suppress(OSError):
            daemon = b"--daemon" in Path(f"/proc/{pid}/cmdline").read_bytes()
            if not (clients_only and daemon):
                pids.append(pid)
    return pids


def _fill_origin_until_invalid(facts: dict[str, Any], source: str) -> None:
    """Write into the source's filesystem (the snapshot's origin) until the snapshot breaks."""
    snapshot = next(v.name for v in list_volumes(EX, VG) if v.lv.startswith("hotcopy-"))
    facts["snapshot_size"] = find_volume(EX, snapshot).size  # type: ignore[union-attr]
    fill = server_paths(SHARD, source).mnt / "overflow.fill"
    facts["invalid_after_mib"] = None
    with open(fill, "wb") as handle:
        for mib in range(1, OVERFLOW_FILL_MAX_MIB + 1):
            handle.write(os.urandom(2**20))
            handle.flush()
            os.fsync(handle.fileno())
            volume = find_volume(EX, snapshot)
            if volume is not None and volume.invalid:
                facts["invalid_after_mib"] = mib
                break
    fill.unlink()


def overflowed_mid_pull(facts: dict[str, Any], source: str, target: str) -> None:
    """A clone whose LVM snapshot overflows while the pull reads it: the copy is stopped
    (every rsync SIGSTOPped) while the origin is written until the snapshot is invalid,
    and kept stopped until the stall watchdog has killed its stream, so the transfer
    comes to the point of retrying. The retry would read the broken snapshot: the clone
    must stop there, never commit, and roll back on its own."""
    config = _overflow_config()
    command = [sys.executable, "-m", "hotcopy", "clone", "--config", str(config),
               "--source", source, "--target", target, "--yes", "--json"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_environ()) as proc:
        deadline = time.monotonic() + 240
        while _staged_bytes(target) < 4 * 2**20 or not _rsync_pids():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the pull never got under way (exit {proc.poll()})")
            time.sleep(0.5)
        stopped = _rsync_pids()
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        facts["staged_when_stopped"] = _staged_bytes(target)
        try:
            _fill_origin_until_invalid(facts, source)
            # The watchdog kills the stalled client (by its stream's marker) after
            # OVERFLOW_IO_TIMEOUT_S of silence. Until every process of it is gone, the
            # daemon's side stays stopped too: nothing reports progress meanwhile, so the
            # transfer's next move is its retry.
            clients = set(_rsync_pids(clients_only=True)) & set(stopped)
            deadline = time.monotonic() + OVERFLOW_IO_TIMEOUT_S + 60
            while clients & set(_rsync_pids()) and time.monotonic() < deadline:
                time.sleep(0.2)
            facts["stalled_stream_killed"] = bool(clients) and not clients & set(_rsync_pids())
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT_S)
    document = json.loads(stdout) if stdout.strip() else None
    facts["clone"] = {"returncode": proc.returncode, "document": document,
                      "stderr_tail": stderr[-3000:]}
    job = SqliteJournal(SHARD / JOURNAL_FILE).get_job(document["job"]) if document else None
    facts["transfer_attempt"] = job.info.get("transfer_attempt") if job else None


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
            ("clone_overflowed", "replica1", "replica2", "overflow"),
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
            elif mode == "overflow":
                overflowed_mid_pull(facts, source, target)
            else:
                clone_under_load(facts, source, target)
            facts["leftovers"] = leftovers(_roots())
            facts["shard"] = shard_state()
