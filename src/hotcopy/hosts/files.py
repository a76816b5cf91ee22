"""Directory operations on a host that know about btrfs subvolumes.

A datadir that is a subvolume must stay one after a clone (so the new replica can be a
clone source in turn), and a subvolume cannot be removed with ``rm -rf`` alone; these
helpers hide that difference from the workflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from hotcopy import remote
from hotcopy.hosts.base import Executor
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action

log = logging.getLogger(__name__)


def _fstype(executor: Executor, path: str) -> str:
    return executor.run(["stat", "-f", "-c", "%T", path]).stdout.strip()


def is_subvolume(executor: Executor, path: str) -> bool:
    if _fstype(executor, path) != "btrfs":
        return False
    return executor.run(["stat", "-c", "%i", path]).stdout.strip() == "256"


def make_directory(executor: Executor, path: str, *, mode: int = 0o700,
                   like: str | None = None) -> None:
    """Create path (a subvolume when its parent is on btrfs, a dataset beside ``like``
    when that is a ZFS dataset's mountpoint); an existing one is kept."""
    if executor.exists(path):
        return
    if like is not None:
        from hotcopy.snapshot import zfs

        if zfs.create_dataset_like(executor, like, path, mode=mode):
            return
    parent = os.path.dirname(path.rstrip("/"))
    if _fstype(executor, parent) == "btrfs":
        executor.run(["btrfs", "subvolume", "create", path])
        executor.run(["chmod", f"{mode:o}", path])
    else:
        executor.run(["mkdir", "-m", f"{mode:o}", path])


def remove_tree(executor: Executor, path: str) -> None:
    """Remove path and everything under it; a missing path is fine (idempotent)."""
    from hotcopy.snapshot import zfs

    if zfs.destroy_dataset_at(executor, path):  # a dataset's mountpoint: rm cannot
        return
    if not executor.exists(path):
        return
    if is_subvolume(executor, path):
        executor.run(["btrfs", "subvolume", "delete", path], timeout=3600)
    else:
        executor.run(["rm", "-rf", "--one-file-system", path], timeout=3600)


def rename(executor: Executor, source: str, destination: str) -> None:
    """A dataset's mountpoint cannot be renamed (EBUSY): the dataset is remounted."""
    from hotcopy.snapshot import zfs

    if zfs.move_dataset_mount(executor, source, destination):
        return
    executor.run(["mv", "-T", "--", source, destination])


def flush_to_disk(executor: Executor, path: str, *, timeout: float = 3600) -> None:
    """Write back everything cached for the filesystem holding path (``sync -f``).

    Before a snapshot, so what the snapshot commits under the source's lock is small;
    before a clone commits, since a copy lands in the page cache and the kernel writes it
    back within about 30 s: a host that loses power before then keeps renamed directories
    whose files are holes, and the old datadir is about to be removed.
    """
    executor.run(["sync", "-f", path], timeout=timeout)


@undo_action("host.remove_tree", describe="remove {path} on {server}")
def _undo_remove_tree(runtime: Runtime, params: Mapping[str, Any]) -> None:
    remove_tree(runtime.executor(params["server"]), params["path"])


@undo_action("host.remove_file", describe="remove {path} on {server}")
def _undo_remove_file(runtime: Runtime, params: Mapping[str, Any]) -> None:
    runtime.executor(params["server"]).run(["rm", "-f", "--", params["path"]])


def holders(executor: Executor, paths: list[str]) -> list[str]:
    """"PID COMMAND" of every process holding something under paths on the host."""
    return executor.run(remote.argv("holders.sh", *paths),
                        timeout=300).stdout.splitlines()


def identity(executor: Executor, path: str) -> str | None:
    """device:inode of path (a rename keeps it), or None when it does not exist."""
    result = executor.run(["stat", "-c", "%d:%i", "--", path], check=False)
    return result.stdout.strip() if result.ok else None


class PreconditionFailed(RuntimeError):
    """An undo that would act on something still in use: recorded failed, not forced."""


@undo_action("host.restore_datadir",
             describe="put the original datadir {moved_to} back at {datadir} on {server}")
def _undo_restore_datadir(runtime: Runtime, params: Mapping[str, Any]) -> None:
    """Whatever stands at the datadir now is a copy from the source: it can go.

    Only when nothing uses either directory: after a failed ``mysqld.stop`` undo the
    new server still runs on the datadir, and renaming datadirs under it would wreck
    both. Safe to run again: the original is recognised by its inode (kept by the
    rename), so a second run that finds it back at the datadir only reports done.
    """
    executor = runtime.executor(params["server"])
    datadir, moved_to = params["datadir"], params["moved_to"]
    original = params.get("original_identity")
    if original and identity(executor, datadir) == original:
        return  # already moved back (by an earlier run)
    if not executor.exists(moved_to):
        if executor.exists(datadir):
            return  # never moved, or already moved back
        raise RuntimeError(f"neither {datadir} nor {moved_to} exists on {executor.name}")
    if runtime.mysqld(params["server"]).is_running():
        raise PreconditionFailed(f"mysqld still runs on {params['server']}: {datadir} is not "
                                 f"replaced by {moved_to} under a live server; stop it, then "
                                 "roll back again")
    busy = holders(executor, [datadir, moved_to])
    if busy:
        raise PreconditionFailed(f"on {executor.name}, {', '.join(busy[:5])} still hold files "
                                 f"under {datadir} or {moved_to}; nothing was moved: stop "
                                 "them, then roll back again")
    if executor.exists(datadir):
        discard = f"{datadir.rstrip('/')}.hotcopy-discard-{os.urandom(4).hex()}"
        rename(executor, datadir, discard)  # out of the way first: never rm in place
        rename(executor, moved_to, datadir)
        remove_tree(executor, discard)
    else:
        rename(executor, moved_to, datadir)
