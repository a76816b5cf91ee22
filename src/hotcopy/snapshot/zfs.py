"""ZFS: a snapshot of the dataset holding the datadir, exposed read-only through a clone.

The snapshot is atomic for the whole dataset and costs milliseconds. It is exposed as
a clone mounted read-only beside the dataset's mountpoint, because the ``.zfs/snapshot``
directory does not exist on every implementation (Debian's zfs-fuse has none, whatever
``snapdir`` says). Names are derived from the job id alone, so the undo can find and
destroy everything from the plan after a crash, and is harmless when nothing was made.

The second half holds what the rest of hotcopy needs to treat a dataset like a
directory (create one beside another, move its mount, destroy it with the snapshots
that depend on it): a datadir that is a dataset's mountpoint cannot be renamed (the
kernel refuses with EBUSY) and must stay a dataset after a clone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hotcopy import remote
from hotcopy.errors import CommandError, HotcopyError, RefusedError
from hotcopy.hosts import Executor
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action
from hotcopy.snapshot.base import SnapshotPlan

log = logging.getLogger(__name__)

#: What findmnt reports for a ZFS mount: the kernel module, and zfs-fuse through FUSE.
ZFS_FSTYPES = ("zfs", "fuse.zfs")
SNAPSHOT_PREFIX = "hotcopy-"
CLONE_PREFIX = "hotcopy-snap-"
#: A dataset stays "busy" while a receive into it is still being aborted, or while a
#: reader of its mount is finishing; such waits are short, but must be bounded.
BUSY_TIMEOUT_S = 30


@dataclass(frozen=True)
class Mount:
    fstype: str
    source: str
    target: str

    @property
    def is_zfs(self) -> bool:
        return self.fstype in ZFS_FSTYPES


def zfs_installed(executor: Executor) -> bool:
    return not remote.missing_tools(executor, ["zfs"])


def _findmnt(executor: Executor, *args: str) -> Mount | None:
    result = executor.run(["findmnt", "-n", "-J", "-o", "FSTYPE,SOURCE,TARGET", *args],
                          check=False)
    if not result.ok or not result.stdout.strip():
        return None
    found = json.loads(result.stdout)["filesystems"][0]
    return Mount(str(found["fstype"]), str(found["source"]), str(found["target"]))


def mount_holding(executor: Executor, path: str) -> Mount | None:
    """The mount whose filesystem holds path."""
    return _findmnt(executor, "-T", path)


def dataset_holding(executor: Executor, path: str) -> Mount | None:
    """The ZFS dataset (source) and its mountpoint (target) holding path, else None."""
    mount = mount_holding(executor, path)
    return mount if mount is not None and mount.is_zfs else None


def dataset_mounted_at(executor: Executor, path: str) -> str | None:
    """The dataset whose mountpoint is exactly path and which is mounted there."""
    mount = _findmnt(executor, "-M", path)
    return mount.source if mount is not None and mount.is_zfs else None


def dataset_with_mountpoint(executor: Executor, path: str) -> str | None:
    """The dataset whose mountpoint property is path, mounted or not.

    A dataset whose receive was aborted stays unmounted, so the mount table alone
    would not find it.
    """
    if not zfs_installed(executor):
        return None
    listing = executor.run(["zfs", "list", "-H", "-t", "filesystem", "-o", "name,mountpoint"],
                           check=False)
    wanted = os.path.normpath(path)
    for line in listing.stdout.splitlines():
        name, _, mountpoint = line.partition("\t")
        if mountpoint.startswith("/") and os.path.normpath(mountpoint) == wanted:
            return name
    return None


def exists(executor: Executor, name: str) -> bool:
    return executor.run(["zfs", "list", "-H", "-o", "name", name], check=False).ok


def destroy(executor: Executor, name: str) -> None:
    """Destroy a dataset or snapshot if it exists, waiting out a short "busy"."""
    argv = ["zfs", "destroy", name]
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while exists(executor, name):
        result = executor.run(argv, check=False)
        if result.ok:
            return
        if "busy" not in result.stderr or time.monotonic() > deadline:
            result.check(executor.name)
        time.sleep(0.5)


def destroy_dataset(executor: Executor, dataset: str) -> None:
    """A filesystem and its own snapshots, if it exists.

    Not ``-r``: a child dataset is a filesystem of its own, which ``rm --one-file-system``
    would not have crossed into either; zfs refuses, and its message says why.
    """
    if not exists(executor, dataset):
        return
    for snapshot, _ in snapshot_guids(executor, dataset):
        destroy(executor, snapshot)
    destroy(executor, dataset)


def mountpoint(executor: Executor, dataset: str) -> str:
    return executor.run(["zfs", "get", "-H", "-o", "value", "mountpoint",
                         dataset]).stdout.strip()


def remove_empty_directory(executor: Executor, path: str) -> None:
    """zfs-fuse leaves the empty mountpoint behind; a non-empty one is never touched."""
    executor.run(["rmdir", "--ignore-fail-on-non-empty", "--", path], check=False)


def origin(executor: Executor, dataset: str) -> str:
    """The snapshot a clone was made from, or "" for a dataset that is not a clone."""
    value = executor.run(["zfs", "get", "-H", "-o", "value", "origin", dataset]).stdout.strip()
    return "" if value == "-" else value


def snapshot_guids(executor: Executor, dataset: str) -> list[tuple[str, str]]:
    """(snapshot name, guid) of the dataset's own snapshots, oldest first.

    A guid survives send/receive, so equal guids on two hosts mean the same snapshot.
    """
    names = executor.run(["zfs", "list", "-H", "-d", "1", "-t", "snapshot", "-s", "creation",
                          "-o", "name", dataset]).stdout.split()
    if not names:
        return []
    rows = executor.run(["zfs", "get", "-Hp", "-o", "name,value", "guid", *names]).stdout
    guids = dict(line.split("\t", 1) for line in rows.splitlines() if "\t" in line)
    return [(name, guids[name]) for name in names if name in guids]


# --- Datasets as directories (for hosts.files: staging, swap, removal) ----------------

def create_dataset_like(executor: Executor, like: str, path: str, *, mode: int = 0o700) -> bool:
    """Make path a new dataset beside the one mounted at ``like``; False if like is none.

    The new dataset is a sibling (same parent), so either can later be destroyed without
    the other, and mounted explicitly at path.
    """
    dataset = dataset_mounted_at(executor, like)
    if dataset is None:
        return False
    parent, sep, _ = dataset.rpartition("/")
    if not sep:
        raise HotcopyError(
            f"{like} on {executor.name} is the root dataset of pool {dataset}; a copy can "
            "only be placed beside a child dataset",
            hint=f"move the datadir into a child dataset, e.g. zfs create {dataset}/mysql")
    name = f"{parent}/{os.path.basename(path.rstrip('/'))}"
    executor.run(["zfs", "create", "-o", f"mountpoint={path}", name])
    executor.run(["chmod", f"{mode:o}", path])
    log.info("created dataset %s at %s on %s", name, path, executor.name)
    return True


def destroy_dataset_at(executor: Executor, path: str) -> bool:
    """Destroy the dataset whose mountpoint is path, and its snapshots; False if none.

    Datasets cloned from its snapshots are promoted first, so they survive: an
    incremental receive leaves the previous datadir as a clone of the new one.
    """
    dataset = dataset_with_mountpoint(executor, path)
    if dataset is None:
        return False
    listing = executor.run(["zfs", "list", "-H", "-t", "filesystem", "-o", "name,origin"]).stdout
    for line in listing.splitlines():
        name, _, source = line.partition("\t")
        if source.startswith(f"{dataset}@"):
            log.info("promoting %s so it survives the destruction of %s", name, dataset)
            executor.run(["zfs", "promote", name])
    destroy_dataset(executor, dataset)
    remove_empty_directory(executor, path)
    log.info("destroyed dataset %s (was at %s) on %s", dataset, path, executor.name)
    return True


def move_dataset_mount(executor: Executor, source: str, destination: str) -> bool:
    """Remount the dataset mounted at source at destination; False if source is none.

    The dataset is also renamed after the destination's basename where its name followed
    the source's; implementations that cannot rename a dataset (zfs-fuse says "dataset is
    busy") keep the old name, which is only cosmetic.
    """
    dataset = dataset_mounted_at(executor, source)
    if dataset is None:
        return False
    remove_empty_directory(executor, destination)
    executor.run(["zfs", "set", f"mountpoint={destination}", dataset])
    remove_empty_directory(executor, source)
    parent, sep, last = dataset.rpartition("/")
    wanted = f"{parent}/{os.path.basename(destination.rstrip('/'))}"
    if sep and last == os.path.basename(source.rstrip("/")) and not exists(executor, wanted):
        renamed = executor.run(["zfs", "rename", dataset, wanted], check=False)
        if not renamed.ok:
            log.info("dataset %s keeps its name (%s)", dataset, renamed.stderr.strip())
    return True


# --- The snapshot backend ---------------------------------------------------------------

def _job_of(plan: SnapshotPlan) -> str:
    return plan.snapshot.rpartition("@")[2].removeprefix(SNAPSHOT_PREFIX)


def clone_name(plan: SnapshotPlan) -> str:
    return f"{plan.origin.split('/')[0]}/{CLONE_PREFIX}{_job_of(plan)}"


def clone_mountpoint(dataset_mountpoint: str, job_id: str) -> str:
    """Beside the dataset's mountpoint: never inside the datadir, where mysqld looks."""
    return f"{dataset_mountpoint.rstrip('/')}.{CLONE_PREFIX}{job_id}"


class ZfsBackend:
    name = "zfs"

    def unsupported_reason(self, executor: Executor, datadir: str) -> str | None:
        mount = mount_holding(executor, datadir)
        if mount is None:
            return f"findmnt cannot tell which filesystem holds {datadir}"
        if not mount.is_zfs:
            return f"the filesystem is {mount.fstype}, not a ZFS dataset"
        if not zfs_installed(executor):
            return "the zfs command is not installed"
        return None

    def plan(self, executor: Executor, server: str, datadir: str, job_id: str) -> SnapshotPlan:
        mount = dataset_holding(executor, datadir)
        if mount is None:
            raise RefusedError(f"no ZFS dataset holds {datadir} on {executor.name}")
        if mount.target == "/":
            raise RefusedError(f"{datadir} lies on the root dataset mounted at / on "
                               f"{executor.name}; its snapshot has nowhere to be mounted",
                               hint="put the datadir on a dataset of its own")
        rel = os.path.relpath(datadir, mount.target)
        exposed = clone_mountpoint(mount.target, job_id)
        if rel != ".":
            exposed = os.path.join(exposed, rel)
        return SnapshotPlan("zfs", server, mount.source,
                            f"{mount.source}@{SNAPSHOT_PREFIX}{job_id}", exposed)

    def create(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Snapshot, then expose: callers wanting the lock released in between use both."""
        self.create_snapshot(executor, plan)
        self.expose(executor, plan)

    def create_snapshot(self, executor: Executor, plan: SnapshotPlan) -> None:
        """The instant, atomic part: all that must happen under the source's lock."""
        executor.run(["zfs", "snapshot", plan.snapshot])

    def expose(self, executor: Executor, plan: SnapshotPlan) -> None:
        """A read-only clone of the snapshot at the exposed path (about 1 s on zfs-fuse)."""
        clone = clone_name(plan)
        if exists(executor, clone):
            return
        mountpoint = exposed_mountpoint(plan)
        executor.run(["zfs", "clone", "-o", "readonly=on", "-o", f"mountpoint={mountpoint}",
                      plan.snapshot, clone])
        if dataset_mounted_at(executor, mountpoint) != clone:
            raise HotcopyError(f"the clone {clone} of {plan.snapshot} did not mount at "
                               f"{mountpoint} on {executor.name}")

    def destroy(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Idempotent: clone, its mountpoint directory, then the snapshot, each if present."""
        destroy(executor, clone_name(plan))
        remove_empty_directory(executor, exposed_mountpoint(plan))
        destroy(executor, plan.snapshot)


def exposed_mountpoint(plan: SnapshotPlan) -> str:
    """Where the clone is mounted: the exposed datadir up to the clone's own directory."""
    marker = f".{CLONE_PREFIX}{_job_of(plan)}"
    head, found, _ = plan.exposed_datadir.partition(marker)
    if not found:
        raise HotcopyError(f"{plan.exposed_datadir} is not a path hotcopy's ZFS backend made")
    return head + marker


BACKEND = ZfsBackend()


@undo_action("snapshot.zfs.destroy",
             describe="destroy ZFS snapshot {snapshot} and its read-only clone on {server}")
def _destroy(runtime: Runtime, params: Mapping[str, Any]) -> None:
    plan = SnapshotPlan.from_dict(dict(params))
    try:
        BACKEND.destroy(runtime.executor(plan.server), plan)
    except CommandError as exc:
        raise HotcopyError(f"could not destroy {plan.snapshot} on {plan.server}: {exc.message}",
                           hint=f"zfs destroy {clone_name(plan)}; zfs destroy "
                                f"{plan.snapshot}") from exc
