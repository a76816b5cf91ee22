"""LVM: a copy-on-write snapshot of the logical volume that holds the datadir.

Unlike btrfs or ZFS, a classic LVM snapshot has a fixed size: every block the origin
changes while the snapshot lives is first copied into it, and a snapshot that runs out
of room turns invalid and unreadable, in the middle of a transfer. So its size is a
policy (a share of the origin, capped), checked against the volume group's free space
before anything changes, and its fill level is watched while the copy runs
(``check_health``), so that a clone is stopped and rolled back before the overflow
rather than failing on a half-read snapshot.

``lvcreate`` freezes the origin's filesystem while it switches the device over, so the
snapshot holds a clean filesystem. It is mounted read-only beside the origin's mount
point with options that keep the kernel from touching it: ext4 ``noload`` (no journal
replay), XFS ``nouuid`` (the snapshot carries its mounted origin's UUID).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hotcopy import remote
from hotcopy.errors import CommandError, HotcopyError, RefusedError
from hotcopy.hosts import Executor
from hotcopy.hosts.base import command_failed
from hotcopy.runtime import Runtime
from hotcopy.saga import undo_action
from hotcopy.snapshot.base import SnapshotPlan

log = logging.getLogger(__name__)

MIB = 1024**2
GIB = 1024**3
LVM_TOOLS = ("lvs", "vgs", "lvcreate", "lvremove")
SNAPSHOT_PREFIX = "hotcopy-"
MOUNT_MARKER = ".hotcopy-lvm-"
#: LVM prints numbers with the locale's decimal separator; parse one format only. Its
#: changing commands also get an empty stdin: a question (LVM asks some) must fail at
#: once, not wait for an answer while the source is locked.
LVM_ENV = {"LC_ALL": "C"}
_LV_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")
#: lv_attr[0] of volumes a classic snapshot can be taken of: linear/striped, origin,
#: mirror, raid, cache.
_SNAPSHOTTABLE = "-omMrRC"
_NOT_SNAPSHOTTABLE = {
    "s": "it is itself a snapshot",
    "S": "it is itself a snapshot (being merged)",
    "O": "a snapshot is being merged into it",
    "V": "it is a thin volume, which hotcopy does not snapshot yet",
}
_FILESYSTEMS = ("ext4", "ext3", "xfs")
_UMOUNT_ATTEMPTS = 5


@dataclass(frozen=True)
class SizePolicy:
    """How big a snapshot is made: ``percent`` of the origin, at most ``max_bytes``.

    The floor keeps tiny volumes from getting a snapshot that a single flush fills.
    """

    percent: float = 20.0
    max_bytes: int = 100 * GIB
    min_bytes: int = 256 * MIB

    def __post_init__(self) -> None:
        if not 0 < self.percent <= 100:
            raise ValueError("the snapshot size percent must be in (0, 100]")
        if self.max_bytes < MIB or self.min_bytes < 0:
            raise ValueError("the snapshot size cap must be at least 1 MiB")

    def size_for(self, origin_bytes: int) -> int:
        """Bytes, rounded up to whole MiB (lvcreate then rounds up to extents)."""
        wanted = min(origin_bytes * self.percent / 100, self.max_bytes)
        wanted = max(wanted, min(self.min_bytes, origin_bytes, self.max_bytes))
        return max(1, math.ceil(wanted / MIB)) * MIB

    def describe(self) -> str:
        return f"{self.percent:g}% of the origin, at most {_size(self.max_bytes)}"


@dataclass(frozen=True)
class Mount:
    source: str
    major_minor: str
    fstype: str
    target: str


@dataclass(frozen=True)
class Volume:
    vg: str
    lv: str
    size: int
    attr: str
    major_minor: str
    origin: str
    percent: float | None  # how full a snapshot is

    @property
    def name(self) -> str:
        return f"{self.vg}/{self.lv}"

    @property
    def invalid(self) -> bool:
        """An overflowed classic snapshot: attr state 'I' (invalid) or 'S' (invalid, suspended)."""
        return self.attr[:1] in ("s", "S") and self.attr[4:5] in ("I", "S")


def _size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def lvm_installed(executor: Executor) -> bool:
    return not remote.missing_tools(executor, LVM_TOOLS)


def is_device_mapper(executor: Executor, major_minor: str) -> bool:
    """Every LVM logical volume is a device-mapper device; this needs no lvm2 to answer."""
    if not re.fullmatch(r"\d+:\d+", major_minor):
        return False  # btrfs and other anonymous devices have no block device of their own
    return executor.run(["test", "-d", f"/sys/dev/block/{major_minor}/dm"], check=False).ok


def _off_lvm(datadir: str, mount: Mount) -> str:
    return (f"{datadir} is on {mount.source} ({mount.fstype}), which is not an LVM logical "
            "volume")


def mount_of(executor: Executor, path: str) -> Mount | None:
    """The mount holding path, from findmnt's key="value" output."""
    result = executor.run(["findmnt", "-n", "-P", "-o", "SOURCE,MAJ:MIN,FSTYPE,TARGET",
                           "-T", path], check=False)
    if not result.ok or not result.stdout.strip():
        return None
    pairs = {}
    for item in shlex.split(result.stdout.splitlines()[0]):
        key, _, value = item.partition("=")
        pairs[key] = value
    return Mount(pairs.get("SOURCE", ""), pairs.get("MAJ:MIN", ""), pairs.get("FSTYPE", ""),
                 _unescape(pairs.get("TARGET", "")))


_LVS_FIELDS = "vg_name,lv_name,lv_size,lv_attr,lv_kernel_major,lv_kernel_minor,origin," \
              "data_percent,snap_percent"


def _percent(*texts: str) -> float | None:
    for text in texts:
        if text.strip():
            return float(text)
    return None


def list_volumes(executor: Executor, vg: str | None = None) -> list[Volume]:
    """Every logical volume (of one VG): an unknown VG is an empty list, not an error."""
    argv = ["lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|",
            "-o", _LVS_FIELDS]
    if vg is not None:
        argv.append(vg)
    result = executor.run(argv, check=False, env=LVM_ENV, timeout=60)
    if not result.ok:
        if vg is not None and "not found" in result.stderr:
            return []
        raise command_failed(executor.name, argv, result.returncode, result.stderr)
    volumes = []
    for line in result.stdout.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) != 9:
            continue
        vg_name, lv, size, attr, major, minor, origin, data_pct, snap_pct = parts
        volumes.append(Volume(vg_name, lv, int(float(size or 0)), attr, f"{major}:{minor}",
                              origin, _percent(data_pct, snap_pct)))
    return volumes


def find_volume(executor: Executor, name: str) -> Volume | None:
    vg, _, lv = name.partition("/")
    return next((v for v in list_volumes(executor, vg) if v.lv == lv), None)


def vg_free(executor: Executor, vg: str) -> int:
    out = executor.run(["vgs", "--noheadings", "--nosuffix", "--units", "b", "-o", "vg_free",
                        vg], env=LVM_ENV, timeout=60).stdout
    return int(float(out.strip() or 0))


def mount_options(fstype: str, journal_needs_recovery: bool = False) -> str:
    """Read-only, and nothing the kernel would write into the snapshot while mounting.

    ext4's journal is flushed by the freeze lvcreate does, so ``noload`` loses nothing;
    should it still need replaying, a plain ``ro`` mount replays it into the snapshot's
    own copy-on-write space, which is better than a copy that is missing it.
    """
    options = ["ro", "nodev", "nosuid", "noexec"]
    if fstype in ("ext4", "ext3") and not journal_needs_recovery:
        options.append("noload")
    elif fstype == "xfs":
        options.append("nouuid")
    return ",".join(options)


def exposed_mountpoint(plan: SnapshotPlan) -> str:
    """Where the snapshot is mounted: the exposed datadir up to the mount's own directory."""
    marker = MOUNT_MARKER + plan.snapshot.partition("/")[2].removeprefix(SNAPSHOT_PREFIX)
    head, found, _ = plan.exposed_datadir.partition(marker)
    if not found:
        raise HotcopyError(f"{plan.exposed_datadir} is not a path hotcopy's LVM backend made")
    return head + marker


@dataclass
class _Reading:
    at: float
    percent: float | None
    reason: str | None


@dataclass
class LvmBackend:
    """Snapshot policy and overflow watch; every field has a default that suits most hosts.

    ``abort_percent``: fill level at which ``check_health`` asks to stop the transfer.
    ``check_interval_s``: ``check_health`` runs ``lvs`` at most this often and otherwise
    repeats its last answer, so a chatty progress callback costs nothing.
    """

    policy: SizePolicy = field(default_factory=SizePolicy)
    abort_percent: float = 90.0
    check_interval_s: float = 2.0
    name: str = "lvm"
    _readings: dict[str, _Reading] = field(default_factory=dict, init=False, repr=False)

    # --- detection and planning (read-only) -------------------------------------------

    def unsupported_reason(self, executor: Executor, datadir: str) -> str | None:
        # The device check comes first: a datadir that is not on device-mapper is off LVM
        # whether or not lvm2 is installed, and saying so is the more useful answer.
        mount = mount_of(executor, datadir)
        if mount is not None and not is_device_mapper(executor, mount.major_minor):
            return _off_lvm(datadir, mount)
        if not lvm_installed(executor):
            return "lvm2 is not installed (no lvs, lvcreate, lvremove)"
        try:
            self._locate(executor, datadir)
        except RefusedError as exc:
            return exc.message
        except CommandError as exc:
            return f"lvs failed: {exc.message}"
        return None

    def _locate(self, executor: Executor, datadir: str) -> tuple[Mount, Volume]:
        mount = mount_of(executor, datadir)
        if mount is None:
            raise RefusedError(f"findmnt cannot tell which filesystem holds {datadir}")
        if not is_device_mapper(executor, mount.major_minor):
            raise RefusedError(_off_lvm(datadir, mount))
        volume = next((v for v in list_volumes(executor) if v.major_minor == mount.major_minor),
                      None)
        if volume is None:
            raise RefusedError(_off_lvm(datadir, mount))
        kind = volume.attr[:1]
        if kind not in _SNAPSHOTTABLE:
            why = _NOT_SNAPSHOTTABLE.get(kind, f"its type ({volume.attr}) cannot be snapshotted")
            raise RefusedError(f"the logical volume {volume.name} holding {datadir} cannot get "
                               f"a classic LVM snapshot: {why}")
        if mount.fstype not in _FILESYSTEMS:
            raise RefusedError(f"the logical volume {volume.name} holds {mount.fstype}; hotcopy "
                               "mounts LVM snapshots of " + ", ".join(_FILESYSTEMS) + " only")
        return mount, volume

    def plan(self, executor: Executor, server: str, datadir: str, job_id: str) -> SnapshotPlan:
        if not _LV_NAME.match(job_id):
            raise RefusedError(f"job id {job_id!r} cannot be part of an LVM volume name")
        mount, volume = self._locate(executor, datadir)
        if mount.target == "/":
            raise RefusedError(f"{datadir} lies on the root filesystem of {executor.name}; its "
                               "snapshot has no place to be mounted beside it",
                               hint="put the datadir on a logical volume of its own")
        size, free = self.policy.size_for(volume.size), vg_free(executor, volume.vg)
        if size > free:
            raise RefusedError(
                f"volume group {volume.vg} on {executor.name} has {_size(free)} free, and a "
                f"snapshot of {volume.name} ({_size(volume.size)}) needs {_size(size)} "
                f"({self.policy.describe()})",
                hint=f"free space in {volume.vg} (vgextend, or shrink another volume), or "
                     "lower the snapshot size policy if the datadir changes little while "
                     "it is copied")
        rel = os.path.relpath(datadir, mount.target)
        mountpoint = f"{mount.target.rstrip('/')}{MOUNT_MARKER}{job_id}"
        exposed = mountpoint if rel == "." else os.path.join(mountpoint, rel)
        return SnapshotPlan(self.name, server, volume.name,
                            f"{volume.vg}/{SNAPSHOT_PREFIX}{job_id}", exposed)

    # --- the changes --------------------------------------------------------------------

    def create(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Snapshot, then expose: callers wanting the lock released in between use both."""
        self.create_snapshot(executor, plan)
        self.expose(executor, plan)

    def create_snapshot(self, executor: Executor, plan: SnapshotPlan) -> None:
        """The part that must happen under the source's lock (lvcreate freezes the fs)."""
        origin = find_volume(executor, plan.origin)
        if origin is None:
            raise HotcopyError(f"the logical volume {plan.origin} is gone from {executor.name}")
        size = self.policy.size_for(origin.size)
        started = time.monotonic()
        executor.run(["lvcreate", "--snapshot", "--size", f"{size // MIB}m",
                      "--name", plan.snapshot.partition("/")[2], plan.origin],
                     input=b"", env=LVM_ENV, timeout=120)
        log.info("snapshot %s of %s (%s) created in %.2fs", plan.snapshot, plan.origin,
                 _size(size), time.monotonic() - started)

    def expose(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Mount the snapshot read-only beside the origin; a repeat is a no-op."""
        mountpoint, device = exposed_mountpoint(plan), f"/dev/{plan.snapshot}"
        if mountpoint in self._mounts_of(executor, plan):
            return
        fstype = executor.run(["blkid", "-p", "-o", "value", "-s", "TYPE", device],
                              timeout=60).stdout.strip()
        if fstype not in _FILESYSTEMS:
            raise HotcopyError(f"the snapshot {plan.snapshot} holds {fstype or 'no'} "
                               f"filesystem on {executor.name}; expected one of "
                               + ", ".join(_FILESYSTEMS))
        dirty = fstype != "xfs" and _journal_needs_recovery(executor, device)
        if dirty:
            log.warning("the ext journal in %s needs replay; mounting without noload",
                        plan.snapshot)
        if not executor.exists(mountpoint):
            executor.run(["mkdir", "-m", "700", mountpoint])
        executor.run(["mount", "-t", fstype, "-o", mount_options(fstype, dirty), device,
                      mountpoint], timeout=120)

    def unmount(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Idempotent: unmount wherever the snapshot is mounted, remove our empty directory."""
        for target in self._mounts_of(executor, plan):
            _umount(executor, target)
        mountpoint = exposed_mountpoint(plan)
        if executor.exists(mountpoint):
            # rmdir, never rm -r: a directory that is not empty is not ours to clear.
            executor.run(["rmdir", "--", mountpoint])

    def remove(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Idempotent; removes nothing but a snapshot of the planned origin."""
        volume = find_volume(executor, plan.snapshot)
        if volume is None:
            return
        if volume.attr[:1] not in ("s", "S") or volume.origin != plan.origin.partition("/")[2]:
            raise HotcopyError(
                f"{plan.snapshot} on {executor.name} is not a snapshot of {plan.origin} "
                f"(attr {volume.attr}, origin {volume.origin or 'none'}); left alone",
                hint="a volume of that name was made by someone else: remove it by hand")
        executor.run(["lvremove", "--force", plan.snapshot], input=b"", env=LVM_ENV,
                     timeout=120)
        self._readings.pop(plan.snapshot, None)

    def destroy(self, executor: Executor, plan: SnapshotPlan) -> None:
        """Idempotent: unmount if mounted, then remove if it exists."""
        self.unmount(executor, plan)
        self.remove(executor, plan)

    def _mounts_of(self, executor: Executor, plan: SnapshotPlan) -> list[str]:
        """Mount points of the snapshot's device (by its device number) and of our path."""
        volume = find_volume(executor, plan.snapshot)
        wanted = {volume.major_minor} if volume is not None else set()
        mountpoint = exposed_mountpoint(plan)
        table = executor.run(["findmnt", "-n", "-r", "-o", "MAJ:MIN,TARGET"]).stdout
        found = []
        for line in table.splitlines():
            major_minor, _, target = line.partition(" ")
            target = _unescape(target)
            if major_minor in wanted or target == mountpoint:
                found.append(target)
        return found

    # --- watching the fill level ------------------------------------------------------

    def fill_percent(self, executor: Executor, plan: SnapshotPlan) -> float | None:
        """How full the snapshot is (0-100), or None when it does not exist."""
        return _fill(find_volume(executor, plan.snapshot))

    def check_health(self, executor: Executor, plan: SnapshotPlan) -> str | None:
        """None while the copy may go on; else why the transfer must stop now.

        Stops at ``abort_percent``, or earlier when the fill rate since the previous
        reading would overflow the snapshot before two more check intervals pass.
        """
        now = time.monotonic()
        last = self._readings.get(plan.snapshot)
        if last is not None and (last.reason is not None
                                 or now - last.at < self.check_interval_s):
            return last.reason
        volume = find_volume(executor, plan.snapshot)
        percent = _fill(volume)
        reason = self._judge(plan, volume, percent, last, now)
        self._readings[plan.snapshot] = _Reading(now, percent, reason)
        if reason is not None:
            log.warning("%s", reason)
        return reason

    def invalid_reason(self, executor: Executor, plan: SnapshotPlan) -> str | None:
        """Why what was read from the snapshot cannot be trusted (gone or overflowed), now.

        Not rate-limited like check_health: asked once after a transfer that looked
        successful, since reads after an overflow fail or return what the reader pads.
        """
        volume = find_volume(executor, plan.snapshot)
        where = f"the LVM snapshot {plan.snapshot} on {plan.server}"
        if volume is None:
            return f"{where} is gone"
        if volume.invalid:
            return f"{where} overflowed and is invalid: the origin changed more than it holds"
        return None

    def _judge(self, plan: SnapshotPlan, volume: Volume | None, percent: float | None,
               last: _Reading | None, now: float) -> str | None:
        where = f"the LVM snapshot {plan.snapshot} on {plan.server}"
        if volume is None or percent is None:
            return f"{where} is gone"
        if volume.invalid:
            return f"{where} overflowed and is invalid: the origin changed more than it holds"
        if percent >= self.abort_percent:
            return (f"{where} is {percent:.1f}% full (the limit is {self.abort_percent:g}%): "
                    f"the datadir changes faster than the snapshot ({_size(volume.size)}) can "
                    "hold for the length of the copy")
        if last is not None and last.percent is not None and now > last.at:
            rate = (percent - last.percent) / (now - last.at)
            horizon = 2 * max(self.check_interval_s, now - last.at)
            if rate > 0 and percent + rate * horizon >= 100:
                return (f"{where} is {percent:.1f}% full and filling at {rate:.1f}%/s: it would "
                        f"overflow within {horizon:.0f}s")
        return None


def _fill(volume: Volume | None) -> float | None:
    if volume is None:
        return None
    return 100.0 if volume.invalid else volume.percent or 0.0


def _journal_needs_recovery(executor: Executor, device: str) -> bool:
    out = executor.run(["dumpe2fs", "-h", device], check=False, env=LVM_ENV, timeout=60).stdout
    features = next((line for line in out.splitlines()
                     if line.startswith("Filesystem features:")), "")
    return "needs_recovery" in features.split()


def _unescape(text: str) -> str:
    r"""findmnt -r writes blanks and backslashes in paths as \x20-style escapes."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _umount(executor: Executor, target: str) -> None:
    """An rsync that just died may hold the mount for a moment: retry briefly."""
    for attempt in range(1, _UMOUNT_ATTEMPTS + 1):
        result = executor.run(["umount", "--", target], check=False, timeout=120)
        if result.ok or "not mounted" in result.stderr:
            return
        if attempt == _UMOUNT_ATTEMPTS:
            raise HotcopyError(
                f"cannot unmount the LVM snapshot at {target} on {executor.name}: "
                f"{result.stderr.strip()}",
                hint=f"see who holds it (fuser -vm {target}), stop that, then roll back again")
        time.sleep(attempt * 0.5)


BACKEND = LvmBackend()


def for_server(server: Any) -> LvmBackend:
    """A backend sized by the server's config (lvm_snapshot_* keys)."""
    return LvmBackend(
        policy=SizePolicy(percent=server.lvm_snapshot_percent,
                          max_bytes=int(server.lvm_snapshot_max_gib * GIB)),
        abort_percent=server.lvm_snapshot_abort_percent)


@undo_action("snapshot.lvm.destroy",
             describe="unmount and remove LVM snapshot {snapshot} of {origin} on {server}")
def _destroy(runtime: Runtime, params: Mapping[str, Any]) -> None:
    plan = SnapshotPlan.from_dict(dict(params))
    BACKEND.destroy(runtime.executor(plan.server), plan)


@undo_action("snapshot.lvm.unmount",
             describe="unmount LVM snapshot {snapshot} from {exposed_datadir} on {server}")
def _unmount(runtime: Runtime, params: Mapping[str, Any]) -> None:
    plan = SnapshotPlan.from_dict(dict(params))
    BACKEND.unmount(runtime.executor(plan.server), plan)
