"""Sandbox servers on ZFS: one pool per server on a sparse file, through zfs-fuse.

Each server gets a pool of its own (a unique name derived from its directory, so
sandboxes side by side never meet) whose root is mounted at the server's ``mnt`` and
whose child dataset ``data`` is the datadir, as on a production ZFS host where the
datadir is a dataset's mountpoint.

zfs-fuse is one daemon per host, shared by every pool and every sandbox: ``up`` starts
it when it is not running, and ``down`` stops it only if a sandbox started it (its pid
file says so) and no pool is left at all. Both decisions are taken under a host-wide
lock, so a sandbox coming up cannot lose the daemon to one going down.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from hotcopy.errors import HotcopyError
from hotcopy.hosts import LocalExecutor
from hotcopy.sandbox.layout import ServerPaths

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/hotcopy-sandbox")
PID_FILE = STATE_DIR / "zfs-fuse.pid"
LOCK_FILE = STATE_DIR / "zfs-fuse.lock"
DAEMON_START_TIMEOUT_S = 20
DAEMON_STOP_TIMEOUT_S = 30
POOL_DESTROY_TIMEOUT_S = 30
DATASET = "data"


def pool_name(root: Path) -> str:
    """Unique per server directory; pool names must start with a letter."""
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    return f"hcsb{digest}-{root.name}"


@contextlib.contextmanager
def daemon_lock() -> Iterator[None]:
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pools() -> list[str] | None:
    """Names of the imported pools, or None when no daemon answers."""
    result = LocalExecutor().run(["zpool", "list", "-H", "-o", "name"], check=False,
                                 timeout=60)
    if not result.ok:
        return None
    return [line for line in result.stdout.split() if line]


def _our_daemon_pid() -> int | None:
    """The daemon this module started, if it still runs (never anyone else's)."""
    try:
        pid = int(PID_FILE.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if cmdline and cmdline[0].endswith(b"zfs-fuse") and str(PID_FILE).encode() in cmdline:
        return pid
    return None


def ensure_daemon() -> None:
    """Start zfs-fuse unless a daemon already answers; call with daemon_lock held."""
    if _pools() is not None:
        return
    if shutil.which("zfs-fuse") is None or shutil.which("zpool") is None:
        raise HotcopyError("zfs-fuse is not installed", hint="apt-get install zfs-fuse")
    if not Path("/dev/fuse").exists():
        raise HotcopyError("/dev/fuse is missing: zfs-fuse needs FUSE",
                           hint="modprobe fuse")
    if PID_FILE.exists() and _our_daemon_pid() is None:
        # zfs-fuse refuses to start (exit 1, no message) while its pid file exists, and a
        # daemon that died (crash, kill -9) leaves it behind.
        log.info("removing the stale zfs-fuse pid file %s", PID_FILE)
        PID_FILE.unlink(missing_ok=True)
    # No kstat mount: it would put /zfs-kstat on the host for everyone.
    LocalExecutor().run(["zfs-fuse", "--pidfile", str(PID_FILE), "--no-kstat-mount"],
                        timeout=60)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    while _pools() is None:
        if time.monotonic() > deadline:
            raise HotcopyError("zfs-fuse was started but does not answer",
                               hint="see the daemon's messages in syslog or journalctl")
        time.sleep(0.1)
    log.info("started zfs-fuse (pid file %s)", PID_FILE)


def make_datadir(paths: ServerPaths, image_size: int) -> None:
    """Sparse file, pool mounted at mnt, dataset ``data`` at the datadir."""
    pool = pool_name(paths.root)
    run = LocalExecutor().run
    with open(paths.image, "wb") as image:
        image.truncate(image_size)
    with daemon_lock():
        ensure_daemon()
        # cachefile=none: the daemon must not re-import a sandbox's pool when it restarts.
        run(["zpool", "create", "-o", "cachefile=none", "-m", str(paths.mnt), pool,
             str(paths.image)], timeout=120)
    run(["zfs", "create", f"{pool}/{DATASET}"], timeout=60)
    found = run(["findmnt", "-n", "-o", "SOURCE", "-M", str(paths.datadir)],
                check=False).stdout.strip()
    if found != f"{pool}/{DATASET}":
        raise HotcopyError(f"dataset {pool}/{DATASET} is not mounted at {paths.datadir}")


def destroy_pools(pools: list[str]) -> None:
    """Destroy the named pools that exist, then stop the daemon if nothing else needs it.

    ``zpool destroy -f`` unmounts every dataset of the pool, clones and snapshots
    included; the sparse files go with the server directories afterwards.
    """
    with daemon_lock():
        imported = _pools()
        if imported is None:
            return  # no daemon: nothing is imported, the files are all that is left
        for pool in pools:
            if pool in imported:
                _destroy_pool(pool)
        _stop_daemon_if_idle()


def _destroy_pool(pool: str) -> None:
    """zfs-fuse unmounts asynchronously: the first attempts may find the pool "busy"."""
    deadline = time.monotonic() + POOL_DESTROY_TIMEOUT_S
    while True:
        result = LocalExecutor().run(["zpool", "destroy", "-f", pool], check=False, timeout=120)
        if result.ok:
            log.info("destroyed pool %s", pool)
            return
        if "busy" not in result.stderr or time.monotonic() > deadline:
            raise HotcopyError(f"could not destroy pool {pool}: {result.stderr.strip()}",
                               hint=f"zpool destroy -f {pool}")
        time.sleep(0.5)


def _stop_daemon_if_idle() -> None:
    pid = _our_daemon_pid()
    if pid is None or _pools():
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DAEMON_STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        log.warning("zfs-fuse (pid %d) did not stop within %ds", pid, DAEMON_STOP_TIMEOUT_S)
        return
    PID_FILE.unlink(missing_ok=True)
    log.info("stopped zfs-fuse (pid %d): no pool was left", pid)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (the daemon's parent is init)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
