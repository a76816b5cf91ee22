"""Building the servers of a sandbox: filesystems, datadirs, accounts, replication.

The shard is made consistent by construction: every datadir is installed identically
with the binlog off, so all servers start from the same empty GTID state; accounts and
demo data are then created on the master only and reach the replicas through
replication, which also proves replication works before ``up`` returns.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import secrets
import time
from pathlib import Path

from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor, LocalExecutor
from hotcopy.mysql.connection import Connection, ServerAddress, connect
from hotcopy.mysql.mysqld import MysqldControl
from hotcopy.sandbox.layout import (
    ADMIN_USER,
    HOST,
    REPL_USER,
    ServerPaths,
    ServerSpec,
    render_my_cnf,
)
from hotcopy.sandbox.netns import NetnsExecutor

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60
CATCH_UP_TIMEOUT_S = 30


def mysql_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("mysql")
    except KeyError:
        raise HotcopyError("there is no `mysql` system user",
                           hint="install mariadb-server (scripts/bootstrap.sh)") from None
    return entry.pw_uid, entry.pw_gid


def control(paths: ServerPaths, spec: ServerSpec, option_file: Path | None = None) -> MysqldControl:
    """A MysqldControl for one sandbox server.

    Without option_file it logs in as root over the unix socket named in the [client]
    group of the server's my.cnf (MariaDB's default unix_socket authentication for
    root): no password exists for that, so none can leak.
    """
    socket = None if option_file else str(paths.socket)
    return MysqldControl(spec.name, host_executor(spec), str(paths.cnf), None,
                         ServerAddress(spec.name, spec.address, spec.port, socket),
                         str(option_file) if option_file else None)


def host_executor(spec: ServerSpec) -> Executor:
    """Where the server's processes run: here, or inside its host's network namespace."""
    return LocalExecutor() if spec.netns is None else NetnsExecutor(spec.netns)


def client_host(spec: ServerSpec) -> str:
    """The account host the shard's clients connect from: loopback, or the host subnet."""
    return HOST if spec.netns is None else spec.address.rsplit(".", 1)[0] + ".%"


FILESYSTEMS = ("btrfs", "plain", "zfs")


def _btrfs_datadir(paths: ServerPaths, spec: ServerSpec, image_size: int) -> None:
    """Sparse image, btrfs, loop mount, datadir subvolume."""
    run = LocalExecutor().run
    with open(paths.image, "wb") as image:
        image.truncate(image_size)
    run(["mkfs.btrfs", "-q", "-L", f"hotcopy-{spec.name}", str(paths.image)], timeout=60)
    paths.mnt.mkdir(mode=0o755)
    run(["mount", "-o", "loop", str(paths.image), str(paths.mnt)], timeout=60)
    run(["btrfs", "subvolume", "create", str(paths.datadir)], timeout=60)


def _plain_datadir(paths: ServerPaths, spec: ServerSpec, image_size: int) -> None:
    """A plain directory on whatever holds DIR: no snapshot is possible there."""
    paths.mnt.mkdir(mode=0o755)
    paths.datadir.mkdir(mode=0o750)


def _zfs_datadir(paths: ServerPaths, spec: ServerSpec, image_size: int) -> None:
    """A zfs-fuse pool on a sparse file; the datadir is a dataset's mountpoint."""
    from hotcopy.sandbox import zfs

    zfs.make_datadir(paths, image_size)


def prepare_filesystem(paths: ServerPaths, spec: ServerSpec, image_size: int) -> None:
    """The datadir on the server's filesystem, its run dir and my.cnf."""
    uid, gid = mysql_ids()
    paths.root.mkdir(mode=0o755)
    makers = {"btrfs": _btrfs_datadir, "plain": _plain_datadir, "zfs": _zfs_datadir}
    makers[spec.filesystem](paths, spec, image_size)
    os.chown(paths.datadir, uid, gid)
    paths.run.mkdir(mode=0o750)
    os.chown(paths.run, uid, gid)
    # mariadbd runs as mysql and cannot create files in the root-owned server dir.
    paths.error_log.touch(mode=0o640)
    os.chown(paths.error_log, uid, gid)
    paths.cnf.write_text(render_my_cnf(paths, spec))


def install_system_tables(paths: ServerPaths, spec: ServerSpec) -> None:
    """mariadb-install-db with the server's own my.cnf, so InnoDB is sized as it will run.

    The binlog stays empty (bootstrap does not log), so every copy of this datadir
    starts from the same empty GTID state.
    """
    started = time.monotonic()
    install = LocalExecutor().run(
        ["mariadb-install-db", f"--defaults-file={paths.cnf}", "--skip-test-db",
         "--auth-root-authentication-method=socket"], timeout=120, check=False)
    if not install.ok:
        # mariadb-install-db reports most failures on stdout.
        output = (install.stdout + install.stderr).strip().splitlines()
        raise HotcopyError(f"{spec.name}: mariadb-install-db failed:\n" + "\n".join(output[-20:]))
    log.info("%s: system tables installed in %.1fs", spec.name, time.monotonic() - started)


def copy_datadir(source: ServerPaths, target: ServerPaths) -> None:
    """Seed a replica's datadir with a copy of a freshly installed one.

    Installing once and copying is both faster (the install is CPU-bound: help tables,
    sys schema) and identical by construction.
    """
    LocalExecutor().run(["cp", "-a", "--sparse=always", f"{source.datadir}/.",
                         f"{target.datadir}/"], timeout=120)


def own_datadir(paths: ServerPaths) -> None:
    """mariadb-install-db leaves root-owned files (mysql_upgrade_info) and group root."""
    uid, gid = mysql_ids()
    LocalExecutor().run(["chown", "-R", f"{uid}:{gid}", str(paths.datadir)], timeout=60)


def start_server(paths: ServerPaths, spec: ServerSpec) -> None:
    own_datadir(paths)
    control(paths, spec).start(timeout=START_TIMEOUT_S)


def native_password_hash(password: str) -> str:
    """mysql_native_password's stored form, so statements (and the binlog) hold no secret."""
    inner = hashlib.sha1(password.encode(), usedforsecurity=False).digest()
    return "*" + hashlib.sha1(inner, usedforsecurity=False).hexdigest().upper()


def root_session(paths: ServerPaths, spec: ServerSpec) -> Connection:
    return connect(ServerAddress(spec.name, HOST, spec.port, str(paths.socket)), None,
                   connect_timeout=5)


def seed_master(paths: ServerPaths, spec: ServerSpec, admin_password: str,
                repl_password: str) -> None:
    """Accounts and demo data, written to the binlog so the replicas get them too."""
    conn = root_session(paths, spec)
    try:
        admin_hash = native_password_hash(admin_password)
        clients = client_host(spec)
        for host in (clients, "localhost"):  # clients may be a pattern with %: parameters
            conn.execute("CREATE USER %s@%s IDENTIFIED BY PASSWORD %s",
                         (ADMIN_USER, host, admin_hash))
            conn.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s WITH GRANT OPTION",
                         (ADMIN_USER, host))
        conn.execute("CREATE USER %s@%s IDENTIFIED BY PASSWORD %s",
                     (REPL_USER, clients, native_password_hash(repl_password)))
        conn.execute("GRANT REPLICATION SLAVE ON *.* TO %s@%s", (REPL_USER, clients))
        conn.execute("CREATE DATABASE app")
        conn.execute("USE app")  # the seq_1_to_N tables of the Sequence engine need one
        conn.execute(
            "CREATE TABLE app.customers (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,"
            " name VARCHAR(64) NOT NULL, email VARCHAR(128) NOT NULL,"
            " created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB")
        conn.execute(
            "CREATE TABLE app.orders (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,"
            " customer_id INT UNSIGNED NOT NULL, amount DECIMAL(10,2) NOT NULL,"
            " note VARCHAR(255) NOT NULL DEFAULT '',"
            " created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,"
            " KEY customer (customer_id)) ENGINE=InnoDB")
        conn.execute(
            "INSERT INTO app.customers (name, email) SELECT CONCAT('customer ', seq),"
            " CONCAT('c', seq, '@example.com') FROM seq_1_to_100")
        conn.execute(
            "INSERT INTO app.orders (customer_id, amount, note) SELECT 1 + seq % 100,"
            " (seq * 37 % 10000) / 100, CONCAT('order ', seq) FROM seq_1_to_1000")
    finally:
        conn.close()


def master_gtid(paths: ServerPaths, spec: ServerSpec) -> str:
    conn = root_session(paths, spec)
    try:
        return str(conn.scalar("SELECT @@GLOBAL.gtid_binlog_pos"))
    finally:
        conn.close()


def attach_replica(paths: ServerPaths, spec: ServerSpec, master: ServerSpec,
                   repl_password: str, master_gtid_pos: str) -> None:
    """Replicate from the very first GTID, then wait until caught up and both threads run."""
    conn = root_session(paths, spec)
    try:
        conn.execute("SET GLOBAL gtid_slave_pos = ''")
        # The password travels only inside this statement over the unix socket.
        conn.execute(
            "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s,"
            " MASTER_PASSWORD = %s, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 2",
            (master.address, master.port, REPL_USER, repl_password))
        conn.execute("START SLAVE")
        waited = conn.scalar("SELECT MASTER_GTID_WAIT(%s, %s)",
                             (master_gtid_pos, CATCH_UP_TIMEOUT_S))
        status = conn.one("SHOW SLAVE STATUS") or {}
        deadline = time.monotonic() + 10
        while (status.get("Slave_IO_Running") != "Yes"
               or status.get("Slave_SQL_Running") != "Yes") and time.monotonic() < deadline:
            time.sleep(0.1)
            status = conn.one("SHOW SLAVE STATUS") or {}
    finally:
        conn.close()
    if waited != 0 or status.get("Slave_IO_Running") != "Yes" \
            or status.get("Slave_SQL_Running") != "Yes":
        raise HotcopyError(
            f"{spec.name}: replication did not start (IO {status.get('Slave_IO_Running')}, "
            f"SQL {status.get('Slave_SQL_Running')}; io error: "
            f"{status.get('Last_IO_Error') or '-'}; sql error: "
            f"{status.get('Last_SQL_Error') or '-'}; caught up: {waited == 0})")


def new_password() -> str:
    return secrets.token_urlsafe(24)
