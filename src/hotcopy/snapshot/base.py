"""The snapshot backend protocol and the plan a backend records in the journal.

A plan is plain data (paths and names), so the undo entry that destroys the snapshot
can be replayed by any process, and ``resume`` can find the snapshot again.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from hotcopy.errors import RefusedError
from hotcopy.hosts import Executor
from hotcopy.plugins import import_available

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

    def unsupported_reason(self, executor: Executor, datadir: str) -> str | None:
        """None when this backend can snapshot the datadir; else why not (read-only)."""
        ...

    def plan(self, executor: Executor, server: str, datadir: str, job_id: str) -> SnapshotPlan:
        """Decide what to snapshot and where, read-only; RefusedError if it cannot work."""
        ...

    def create_snapshot(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Only the instant part: it runs while the source holds its backup lock."""
        ...

    def expose(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Make the snapshot readable at plan.exposed_datadir (e.g. mount it), after the
        source was released; idempotent."""
        ...

    def destroy(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Idempotent: a snapshot that is already gone is fine."""
        ...


def filesystem_type(executor: Executor, path: str) -> str:
    return executor.run(["stat", "-f", "-c", "%T", path]).stdout.strip()


def mount_point(executor: Executor, path: str) -> str:
    return executor.run(["findmnt", "-n", "-o", "TARGET", "-T", path]).stdout.strip()


# One module per backend, imported on demand; importing one registers its undo actions.
BACKEND_MODULES: dict[str, str] = {
    "btrfs": "hotcopy.snapshot.btrfs",
    "zfs": "hotcopy.snapshot.zfs",
    "lvm": "hotcopy.snapshot.lvm",
}


def load_backend(name: str, server: Any = None) -> SnapshotBackend:
    """The backend; with a server's config, tuned by its settings (e.g. LVM sizes)."""
    module = importlib.import_module(BACKEND_MODULES[name])
    if server is not None and hasattr(module, "for_server"):
        tuned: SnapshotBackend = module.for_server(server)
        return tuned
    backend: SnapshotBackend = module.BACKEND
    return backend


def load_all() -> list[str]:
    """Import every backend that exists, so a rollback can find every undo action."""
    return import_available(BACKEND_MODULES)


def backend_for(executor: Executor, datadir: str, choice: str,
                server: Any = None) -> SnapshotBackend:
    """``auto`` asks each backend whether it can snapshot the datadir, in order."""
    if choice != "auto":
        return load_backend(choice, server)
    reasons = []
    for name in load_all():
        backend = load_backend(name, server)
        reason = backend.unsupported_reason(executor, datadir)
        if reason is None:
            return backend
        reasons.append(f"{name}: {reason}")
    raise RefusedError(
        f"the datadir {datadir} on {executor.name} cannot be snapshotted ("
        + "; ".join(reasons) + ")",
        hint="put the datadir on a btrfs subvolume, a ZFS dataset or an LVM logical volume")


def inside(path: str, directory: str) -> bool:
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")
