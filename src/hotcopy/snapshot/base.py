"""The snapshot backend protocol and the plan a backend records in the journal.

A plan is plain data (paths and names), so the undo entry that destroys the snapshot
can be replayed by any process, and ``resume`` can find the snapshot again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from hotcopy.errors import RefusedError
from hotcopy.hosts import Executor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotPlan:
    backend: str
    server: str
    origin: str          # what gets snapshotted (subvolume, dataset, logical volume)
    snapshot: str        # where/what the snapshot is
    exposed_datadir: str  # the datadir as seen inside the exposed snapshot, read-only

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SnapshotPlan:
        return cls(**data)


class SnapshotBackend(Protocol):
    name: str

    def plan(self, executor: Executor, server: str, datadir: str, job_id: str) -> SnapshotPlan:
        """Decide what to snapshot and where, read-only; RefusedError if it cannot work."""
        ...

    def create(self, executor: Executor, plan: SnapshotPlan) -> None: ...

    def destroy(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Idempotent: a snapshot that is already gone is fine."""
        ...


def filesystem_type(executor: Executor, path: str) -> str:
    return executor.run(["stat", "-f", "-c", "%T", path]).stdout.strip()


def mount_point(executor: Executor, path: str) -> str:
    return executor.run(["findmnt", "-n", "-o", "TARGET", "-T", path]).stdout.strip()


def backend_for(executor: Executor, datadir: str, choice: str) -> SnapshotBackend:
    """``auto`` picks the backend from the filesystem under the datadir."""
    from hotcopy.snapshot.btrfs import BtrfsBackend

    backends: dict[str, SnapshotBackend] = {"btrfs": BtrfsBackend()}
    if choice != "auto":
        return backends[choice]
    fstype = filesystem_type(executor, datadir)
    if fstype in backends:
        return backends[fstype]
    raise RefusedError(
        f"the datadir {datadir} on {executor.name} is on {fstype}, which cannot be "
        "snapshotted by hotcopy",
        hint="put the datadir on a btrfs subvolume (ZFS and LVM backends are planned)")


def inside(path: str, directory: str) -> bool:
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")
