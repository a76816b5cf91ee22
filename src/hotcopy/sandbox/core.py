"""The sandbox's public operations: up, down, status."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotcopy.errors import HotcopyError, MySQLError, RefusedError
from hotcopy.mysql.connection import ServerAddress, connect
from hotcopy.sandbox import build, multihost, teardown
from hotcopy.sandbox.layout import (
    ADMIN_CNF,
    ADMIN_USER,
    CONFIG_FILE,
    HOST,
    JOURNAL_FILE,
    MASTER,
    REPL_CNF,
    REPL_USER,
    SSH_DIR,
    STATE_FILE,
    TOPOLOGIES,
    SandboxState,
    ServerSpec,
    check_path,
    client_option_file,
    load_state,
    render_config,
    save_state,
    server_paths,
    write_secret_file,
)

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 2 * 1024**3
REQUIRED_TOOLS = ("mariadbd", "mariadb-install-db", "my_print_defaults", "mkfs.btrfs", "btrfs",
                  "mount", "umount", "losetup", "fuser")
#: Made in DIR besides the server directories; journal files are hotcopy's, but they
#: describe servers that no longer exist once the sandbox is down.
TOP_LEVEL_FILES = (CONFIG_FILE, ADMIN_CNF, REPL_CNF, JOURNAL_FILE, JOURNAL_FILE + "-wal",
                   JOURNAL_FILE + "-shm", JOURNAL_FILE + "-journal", STATE_FILE + ".tmp",
                   SSH_DIR)


@dataclass(frozen=True)
class SandboxInfo:
    directory: Path
    config_path: Path
    admin_option_file: Path
    repl_option_file: Path
    master: str
    replicas: tuple[str, ...]
    ports: dict[str, int]
    already_up: bool = False
    topology: str = "local"
    #: Topology "netns": each server's address, network namespace and bridge-side veth.
    hosts: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)
    veths: dict[str, str] = field(default_factory=dict)
    bridge: str | None = None

    @property
    def servers(self) -> tuple[str, ...]:
        return (self.master, *self.replicas)

    def datadir(self, name: str) -> Path:
        return server_paths(self.directory, name).datadir

    def defaults_file(self, name: str) -> Path:
        return server_paths(self.directory, name).cnf

    def address(self, name: str) -> ServerAddress:
        return ServerAddress(name, self.hosts.get(name, HOST), self.ports[name])


def _info(state: SandboxState, *, already_up: bool = False) -> SandboxInfo:
    directory = Path(state.directory)
    return SandboxInfo(
        directory=directory,
        config_path=directory / CONFIG_FILE,
        admin_option_file=directory / ADMIN_CNF,
        repl_option_file=directory / REPL_CNF,
        master=state.master.name,
        replicas=tuple(s.name for s in state.replicas),
        ports={s.name: s.port for s in state.servers},
        already_up=already_up,
        topology=state.topology,
        hosts={s.name: s.address for s in state.servers},
        namespaces={s.name: s.netns for s in state.servers if s.netns},
        veths={s.name: s.veth for s in state.servers if s.veth},
        bridge=state.bridge,
    )


def info(directory: Path) -> SandboxInfo:
    """The SandboxInfo of a sandbox that is up (or was: it does not check)."""
    state = load_state(directory.resolve())
    if state is None or state.state != "up":
        raise RefusedError(f"there is no sandbox up in {directory}",
                           hint=f"hotcopy sandbox up --dir {directory}")
    return _info(state)


def _free_ports(count: int) -> list[int]:
    """Ports the kernel considers free now; all held at once so they are distinct."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _check_traversable(directory: Path) -> None:
    """mariadbd runs as mysql: every ancestor of DIR must let it through."""
    uid, gid = build.mysql_ids()
    for parent in [directory, *directory.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        ok = (st.st_mode & 0o001 or (st.st_gid == gid and st.st_mode & 0o010)
              or (st.st_uid == uid and st.st_mode & 0o100))
        if not ok:
            raise RefusedError(
                f"the mysql user cannot enter {parent}, so mariadbd could not reach its datadir",
                hint=f"chmod o+x {parent}, or choose a directory elsewhere")


def _preflight(directory: Path, replicas: int, topology: str) -> None:
    if os.geteuid() != 0:
        raise RefusedError("the sandbox needs root (loop mounts, btrfs, chown)",
                           hint="run it with sudo")
    tools = REQUIRED_TOOLS + (multihost.REQUIRED_TOOLS if topology == "netns" else ())
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise RefusedError(f"missing tools: {', '.join(missing)}",
                           hint="run scripts/bootstrap.sh")
    if replicas < 1:
        raise RefusedError("a sandbox needs at least one replica")
    check_path(directory)
    _check_traversable(directory)
    names = [MASTER, *(f"replica{i}" for i in range(1, replicas + 1))]
    clashes = [str(directory / p) for p in (*names, *TOP_LEVEL_FILES, STATE_FILE)
               if (directory / p).exists()]
    if clashes:
        raise RefusedError(f"{directory} already holds {', '.join(clashes)}",
                           hint="choose an empty directory")


def up(directory: Path, *, replicas: int = 2, image_size: int = DEFAULT_IMAGE_SIZE,
       filesystem: str = "btrfs", topology: str = "local") -> SandboxInfo:
    """Create and start a master and `replicas` replicas; return how to reach them.

    ``filesystem`` is what every datadir lives on: "btrfs" (a subvolume on a loop-mounted
    image, the default), "zfs" (a zfs-fuse pool per server on a sparse file, the datadir a
    dataset's mountpoint) or "plain" (a directory, for showing what hotcopy refuses).
    ``topology`` "local" runs every server here on loopback; "netns" makes each server a
    host of its own (network namespace, address on a bridge, sshd), reached over ssh.
    """
    if topology not in TOPOLOGIES:
        raise RefusedError(f"unknown sandbox topology {topology!r}",
                           hint="choose one of " + ", ".join(TOPOLOGIES))
    if filesystem not in build.FILESYSTEMS:
        raise RefusedError(f"unknown sandbox filesystem {filesystem!r}",
                           hint="choose one of " + ", ".join(build.FILESYSTEMS))
    directory = directory.resolve()
    existing = load_state(directory)
    if existing is not None:
        problems = _health_problems(existing)
        if existing.state == "up" and not problems:
            log.info("the sandbox in %s is already up", directory)
            return _info(existing, already_up=True)
        raise RefusedError(
            f"{directory} holds a sandbox that is not healthy "
            f"({existing.state}: {'; '.join(problems) or 'up did not finish'})",
            hint=f"hotcopy sandbox down --dir {directory}, then up again")
    _preflight(directory, replicas, topology)
    started = time.monotonic()
    dir_created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if dir_created:
        directory.chmod(0o755)
    ports = _free_ports(replicas + 1)
    specs = [ServerSpec(MASTER, "master", 1, ports[0], filesystem)]
    specs += [ServerSpec(f"replica{i}", "replica", i + 1, ports[i], filesystem)
              for i in range(1, replicas + 1)]
    state = SandboxState(directory=str(directory), dir_created=dir_created,
                         image_size=image_size, servers=specs, created_at=time.time(),
                         topology=topology)
    if filesystem == "zfs":  # recorded before any pool exists, so down finds each one
        from hotcopy.sandbox import zfs as sandbox_zfs

        state.extra["zfs_pools"] = [sandbox_zfs.pool_name(server_paths(directory, s.name).root)
                                    for s in specs]
    save_state(state)
    try:
        _build(directory, state)
    except BaseException as exc:
        log.error("sandbox up in %s failed (%s); removing what it made", directory, exc)
        try:
            down(directory)
        except Exception:
            log.exception("cleaning up after the failed up failed too")
        if isinstance(exc, Exception):
            message = exc.message if isinstance(exc, HotcopyError) else repr(exc)
            raise HotcopyError(f"sandbox up in {directory} failed: {message}",
                               hint="what it had made was removed") from exc
        raise
    log.info("sandbox up in %s in %.1fs", directory, time.monotonic() - started)
    return _info(state)


def _parallel(specs: list[ServerSpec], work: Callable[[ServerSpec], None]) -> None:
    """Run work on every server at once; wait for all, then raise the first failure."""
    if not specs:
        return
    with ThreadPoolExecutor(max_workers=len(specs), thread_name_prefix="sandbox") as pool:
        futures = [pool.submit(work, spec) for spec in specs]
    for future in futures:
        future.result()


def _build(directory: Path, state: SandboxState) -> None:
    specs = state.servers
    master = state.master
    master_paths = server_paths(directory, master.name)
    if state.topology == "netns":
        multihost.create(directory, state)  # addresses are known from here on
    _parallel(specs, lambda s: build.prepare_filesystem(server_paths(directory, s.name), s,
                                                        state.image_size))
    build.install_system_tables(master_paths, master)
    _parallel(state.replicas, lambda s: build.copy_datadir(master_paths,
                                                           server_paths(directory, s.name)))
    _parallel(specs, lambda s: build.start_server(server_paths(directory, s.name), s))
    admin_password, repl_password = build.new_password(), build.new_password()
    write_secret_file(directory / ADMIN_CNF, client_option_file(ADMIN_USER, admin_password))
    write_secret_file(directory / REPL_CNF, client_option_file(REPL_USER, repl_password))
    build.seed_master(master_paths, master, admin_password, repl_password)
    position = build.master_gtid(master_paths, master)
    _parallel(state.replicas, lambda r: build.attach_replica(
        server_paths(directory, r.name), r, master, repl_password, position))
    for spec in specs:  # the admin account works everywhere, over TCP as hotcopy uses it
        connect(ServerAddress(spec.name, spec.address, spec.port),
                str(directory / ADMIN_CNF)).close()
    if state.topology == "netns":
        multihost.check_ssh(directory, state)
    (directory / CONFIG_FILE).write_text(render_config(directory, state))
    state.state = "up"
    save_state(state)


def down(directory: Path) -> None:
    """Stop every server, unmount, detach, remove; safe to repeat, and after a crashed up."""
    directory = directory.resolve()
    state = load_state(directory)
    if state is None:
        log.info("no sandbox in %s: nothing to do", directory)
        return
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(state.servers), thread_name_prefix="sandbox") as pool:
        futures = [pool.submit(teardown.stop_server, directory,
                               server_paths(directory, s.name), s) for s in state.servers]
        errors = [f.exception() for f in futures]
    if state.topology == "netns":
        multihost.destroy(directory, state)  # also whatever still ran inside the hosts
    if state.extra.get("zfs_pools"):  # zfs-fuse unmounts its own datasets, before umount
        from hotcopy.sandbox import zfs as sandbox_zfs

        sandbox_zfs.destroy_pools(list(state.extra["zfs_pools"]))
    images = [server_paths(directory, s.name).image for s in state.servers]
    teardown.unmount_all(directory, images)
    if any(errors):
        # Mounts are gone, so nothing runs on them any more; still, say so.
        log.warning("some servers did not stop cleanly: %s", [str(e) for e in errors if e])
    for spec in state.servers:
        teardown.remove_tree(server_paths(directory, spec.name).root)
    for name in TOP_LEVEL_FILES:
        teardown.remove_tree(directory / name)
    (directory / STATE_FILE).unlink(missing_ok=True)
    if state.dir_created:
        shutil.rmtree(directory, ignore_errors=True)
    log.info("sandbox in %s is down (%.1fs)", directory, time.monotonic() - started)


def _server_status(directory: Path, spec: ServerSpec) -> dict[str, Any]:
    paths = server_paths(directory, spec.name)
    row: dict[str, Any] = {"name": spec.name, "role": spec.role, "port": spec.port,
                           "running": False, "io_running": None, "sql_running": None,
                           "lag_s": None, "gtid": None, "error": None}
    if not paths.cnf.exists():
        row["error"] = "not created"
        return row
    row["running"] = build.control(paths, spec).is_running()
    if not row["running"]:
        return row
    try:
        conn = connect(ServerAddress(spec.name, spec.address, spec.port),
                       str(directory / ADMIN_CNF),
                       connect_timeout=3, read_timeout=10)
    except MySQLError as exc:
        row["error"] = exc.message
        return row
    try:
        if spec.role == "master":
            row["gtid"] = conn.scalar("SELECT @@GLOBAL.gtid_binlog_pos")
        else:
            slave = conn.one("SHOW SLAVE STATUS") or {}
            row["io_running"] = slave.get("Slave_IO_Running")
            row["sql_running"] = slave.get("Slave_SQL_Running")
            row["lag_s"] = slave.get("Seconds_Behind_Master")
            row["gtid"] = conn.scalar("SELECT @@GLOBAL.gtid_slave_pos")
            row["error"] = slave.get("Last_IO_Error") or slave.get("Last_SQL_Error") or None
            if not slave:
                row["error"] = "replication is not configured"
    except MySQLError as exc:
        row["error"] = exc.message
    finally:
        conn.close()
    return row


def status(directory: Path) -> list[dict[str, Any]]:
    """One row per server: name, role, port, running, io/sql threads, lag, gtid, error."""
    directory = directory.resolve()
    state = load_state(directory)
    if state is None:
        raise RefusedError(f"there is no sandbox in {directory}",
                           hint=f"hotcopy sandbox up --dir {directory}")
    with ThreadPoolExecutor(max_workers=len(state.servers), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda s: _server_status(directory, s), state.servers))


def _health_problems(state: SandboxState) -> list[str]:
    problems = []
    for row in status(Path(state.directory)):
        if not row["running"]:
            problems.append(f"{row['name']} is not running")
        elif row["error"]:
            problems.append(f"{row['name']}: {row['error']}")
        elif row["role"] == "replica" and (row["io_running"], row["sql_running"]) != ("Yes", "Yes"):
            problems.append(f"{row['name']}: replication IO {row['io_running']}, "
                            f"SQL {row['sql_running']}")
    return problems
