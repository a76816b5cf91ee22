"""btrfs: a read-only snapshot of the subvolume holding the datadir.

The snapshot is instant and atomic for the whole subvolume, and it is already visible
as a directory, so there is nothing to mount. It is placed beside the subvolume (never
inside the datadir, where mysqld would see it as a database directory).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from hotcopy import remote
from hotcopy.errors import RefusedError
from hotcopy.hosts import Executor
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action
from hotcopy.snapshot.base import SnapshotPlan, filesystem_type, inside, mount_point

log = logging.getLogger(__name__)

SUBVOLUME_ROOT_INODE = 256


def is_subvolume(executor: Executor, path: str) -> bool:
    result = executor.run(["stat", "-c", "%i", path], check=False)
    return result.ok and result.stdout.strip() == str(SUBVOLUME_ROOT_INODE)


def subvolume_root(executor: Executor, path: str) -> str:
    """The nearest ancestor (or path itself) that is a subvolume: what btrfs can snapshot."""
    candidates = []
    current = os.path.normpath(path)
    while True:
        candidates.append(current)
        if current == "/":
            break
        current = os.path.dirname(current)
    inodes = executor.run(["stat", "-c", "%i", *candidates]).stdout.split()
    for candidate, inode in zip(candidates, inodes, strict=True):
        if inode == str(SUBVOLUME_ROOT_INODE):
            return candidate
    raise RefusedError(f"no btrfs subvolume holds {path} on {executor.name}")


class BtrfsBackend:
    name = "btrfs"

    def unsupported_reason(self, executor: Executor, datadir: str) -> str | None:
        fstype = filesystem_type(executor, datadir)
        if fstype != "btrfs":
            return f"the filesystem is {fstype}"
        if remote.missing_tools(executor, ["btrfs"]):
            return "btrfs-progs (the btrfs command) is not installed"
        return None

    def plan(self, executor: Executor, server: str, datadir: str, job_id: str) -> SnapshotPlan:
        root = subvolume_root(executor, datadir)
        mount = mount_point(executor, datadir)
        parent = os.path.dirname(root)
        snapshot_name = f".hotcopy-snap-{job_id}"
        if root != mount and inside(parent, mount):
            location = os.path.join(parent, snapshot_name)
        elif root != datadir:
            location = os.path.join(root, snapshot_name)
        else:
            raise RefusedError(
                f"{datadir} on {executor.name} is the top of its btrfs filesystem, and a "
                "snapshot of it could only be placed inside the datadir",
                hint="make the datadir a subvolume (btrfs subvolume create) below the mount")
        rel = os.path.relpath(datadir, root)
        exposed = location if rel == "." else os.path.join(location, rel)
        return SnapshotPlan("btrfs", server, root, location, exposed)

    def create_snapshot(self, executor: Executor, plan: SnapshotPlan) -> None:
        executor.run(["btrfs", "subvolume", "snapshot", "-r", plan.origin, plan.snapshot])

    def expose(self, executor: Executor, plan: SnapshotPlan) -> None:
        """A btrfs snapshot is a directory already: nothing to mount."""

    def destroy(self, executor: Executor, plan: SnapshotPlan) -> None:
        if executor.exists(plan.snapshot):
            executor.run(["btrfs", "subvolume", "delete", plan.snapshot])


BACKEND = BtrfsBackend()


@undo_action("snapshot.btrfs.destroy", describe="destroy btrfs snapshot {snapshot} on {server}")
def _destroy(runtime: Runtime, params: Mapping[str, Any]) -> None:
    plan = SnapshotPlan.from_dict(dict(params))
    BACKEND.destroy(runtime.executor(plan.server), plan)
