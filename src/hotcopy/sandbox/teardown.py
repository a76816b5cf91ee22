"""Undoing a sandbox: processes, mounts, loop devices, files, in that order.

Every step tolerates its resource being absent (a crashed ``up`` may have stopped
anywhere), and nothing is deleted while a filesystem is still mounted below it, so a
failed unmount can never turn into deleting a live datadir.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from hotcopy.errors import HotcopyError
from hotcopy.hosts import LocalExecutor
from hotcopy.sandbox.build import control
from hotcopy.sandbox.layout import ADMIN_CNF, ServerPaths, ServerSpec

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60


def _proc_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) S ..." and comm may contain spaces or parentheses.
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def processes_using(cnf: Path) -> list[int]:
    """Processes started with our defaults file: mariadbd, mariadb-install-db, bootstrap."""
    marker = f"--defaults-file={cnf}".encode()
    found = []
    for pid in _proc_pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                args = cmdline.read().split(b"\0")
        except OSError:
            continue
        if marker in args and not _is_zombie_or_gone(pid):
            found.append(pid)
    return found


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_dead(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if not _is_zombie_or_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if not _is_zombie_or_gone(p)]
    return alive


def stop_server(directory: Path, paths: ServerPaths, spec: ServerSpec) -> None:
    """Clean shutdown when possible, then make sure nothing of this server survives."""
    if paths.cnf.exists():
        admin = directory / ADMIN_CNF
        ctl = control(paths, spec, admin if admin.exists() else None)
        try:
            ctl.stop(timeout=STOP_TIMEOUT_S)
        except HotcopyError as exc:
            log.warning("%s: clean stop failed, killing it: %s", spec.name, exc.message)
    leftovers = processes_using(paths.cnf)
    if leftovers:
        log.warning("%s: terminating leftover processes %s", spec.name, leftovers)
        _signal_all(leftovers, signal.SIGTERM)
        leftovers = _wait_dead(leftovers, 10)
    if leftovers:
        _signal_all(leftovers, signal.SIGKILL)
        leftovers = _wait_dead(leftovers, 10)
    if leftovers:
        raise HotcopyError(f"{spec.name}: processes {leftovers} survived SIGKILL")


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, source) of every mount, deepest-last as the kernel lists them."""
    mounts = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            sep = fields.index("-")
            mounts.append((_unescape(fields[4]), fields[sep + 2]))
    return mounts


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path


def loop_devices(image: Path) -> list[str]:
    if not image.exists():
        return []
    result = LocalExecutor().run(["losetup", "-j", str(image)], check=False, timeout=30)
    return [line.split(":", 1)[0] for line in result.stdout.splitlines() if ":" in line]


def mounts_below(directory: Path, devices: list[str]) -> list[str]:
    """Mount points under directory, or of our loop devices anywhere (e.g. a snapshot)."""
    prefix = str(directory).rstrip("/") + "/"
    return [point for point, source in _mountinfo()
            if point.startswith(prefix) or point == str(directory) or source in devices]


def unmount_all(directory: Path, images: list[Path]) -> None:
    run = LocalExecutor().run
    devices = [dev for image in images for dev in loop_devices(image)]
    for _attempt in range(5):
        points = mounts_below(directory, devices)
        if not points:
            break
        for point in reversed(points):
            result = run(["umount", point], check=False, timeout=60)
            if result.ok:
                log.info("unmounted %s", point)
            elif "busy" in result.stderr and os.path.ismount(point):
                _kill_users(point)
        time.sleep(0.2)
    else:
        points = mounts_below(directory, devices)
        for point in reversed(points):
            log.warning("%s is still busy: detaching it lazily", point)
            run(["umount", "-l", point], check=False, timeout=60)
    for image in images:
        for device in loop_devices(image):
            run(["losetup", "-d", device], check=False, timeout=30)
            log.info("detached %s", device)
    leftover = mounts_below(directory, devices) + [d for i in images for d in loop_devices(i)]
    if leftover:
        raise HotcopyError(f"could not unmount or detach {', '.join(leftover)}",
                           hint="see `fuser -vm` on them, then run `sandbox down` again")


def _kill_users(point: str) -> None:
    """Kill what holds a sandbox filesystem busy (never ourselves).

    -M makes fuser refuse unless point is itself a mount point: without it, a path
    that just got unmounted would name the root filesystem and every process on it.
    """
    result = LocalExecutor().run(["fuser", "-M", "-m", point], check=False, timeout=30)
    pids = [int(tok) for tok in result.stdout.split() if tok.isdigit() and int(tok) != os.getpid()]
    if pids:
        log.warning("killing %s, which hold %s busy", pids, point)
        _signal_all(pids, signal.SIGKILL)
        _wait_dead(pids, 5)


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
