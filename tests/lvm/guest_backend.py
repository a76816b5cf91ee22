"""Guest parts that drive the LVM backend by hand: what a clone does, one call at a time."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from guest_common import EX, VG, make_lv, mounts_matching, sh, snapshot_state, tree_sums

from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor
from hotcopy.saga.actions import lookup
from hotcopy.snapshot.lvm import MIB, LvmBackend, SizePolicy, find_volume


class Writer:
    """Overwrites and adds fsync'ed blocks in a directory until stopped; can pause."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written = 0
        self._go = threading.Event()
        self._idle = threading.Event()
        self._stop = threading.Event()
        self._go.set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._random = random.Random(5)

    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        self._go.clear()
        assert self._idle.wait(30), "the writer did not pause"

    def resume(self) -> None:
        self._idle.clear()
        self._go.set()

    def stop(self) -> int:
        self._stop.set()
        self._go.set()
        self._thread.join(30)
        return self.written

    def wait_written(self, count: int, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while self.written < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.written >= count

    def _run(self) -> None:
        files = sorted(p for p in self.directory.rglob("*") if p.is_file())
        step = 0
        while not self._stop.is_set():
            if not self._go.is_set():
                self._idle.set()
                self._go.wait()
                continue
            step += 1
            path = self.directory / f"new-{step}.dat" if step % 16 == 0 else \
                self._random.choice(files)
            with open(path, "r+b" if path.exists() else "wb") as handle:
                handle.seek(self._random.randrange(0, MIB, 4096) if path in files else 0)
                handle.write(os.urandom(64 * 1024))
                handle.flush()
                os.fsync(handle.fileno())
            self.written += 64 * 1024
            time.sleep(0.005)


class FakeRuntime:
    """What the LVM undo actions use of a Runtime: the executor of the named server."""

    def executor(self, name: str) -> Executor:
        return EX


def populate(datadir: Path) -> None:
    (datadir / "db1").mkdir(parents=True)
    for i in range(12):
        (datadir / ("db1" if i % 3 else ".") / f"t{i}.ibd").write_bytes(os.urandom(MIB))


def backend_roundtrip(facts: dict[str, Any], fstype: str) -> None:
    device = make_lv(f"src{fstype}", "320M", fstype)
    mnt = Path(f"/srv/{fstype}")
    mnt.mkdir(parents=True)
    sh("mount", device, str(mnt))
    datadir = mnt / "data"
    populate(datadir)
    backend = LvmBackend(policy=SizePolicy(percent=40, max_bytes=256 * MIB, min_bytes=0),
                         check_interval_s=0)
    facts["unsupported_reason"] = backend.unsupported_reason(EX, str(datadir))
    plan = backend.plan(EX, "source", str(datadir), f"20240101-000000-{fstype}")
    facts["plan"] = plan.as_dict()
    writer = Writer(datadir)
    writer.start()
    writer.wait_written(2 * MIB)
    writer.pause()
    facts["moment"] = tree_sums(datadir)
    started = time.monotonic()
    backend.create_snapshot(EX, plan)
    facts["create_snapshot_s"] = round(time.monotonic() - started, 3)
    writer.resume()
    started = time.monotonic()
    backend.expose(EX, plan)
    facts["expose_s"] = round(time.monotonic() - started, 3)
    backend.expose(EX, plan)  # a repeat must not mount twice
    facts["snapshot_lv"] = vars(find_volume(EX, plan.snapshot))
    facts["while_exposed"] = snapshot_state(plan)
    try:
        (Path(plan.exposed_datadir) / "probe").write_text("x")
        facts["write_into_snapshot"] = "succeeded"
    except OSError as exc:
        facts["write_into_snapshot"] = exc.strerror
    facts["fill_before_copy"] = backend.fill_percent(EX, plan)
    copy = Path(f"/srv/copy-{fstype}")
    started = time.monotonic()
    sh("rsync", "-a", f"{plan.exposed_datadir}/", f"{copy}/")
    facts["rsync_s"] = round(time.monotonic() - started, 3)
    writer.wait_written(writer.written + 8 * MIB)
    facts["fill_after_copy"] = backend.fill_percent(EX, plan)
    facts["health_after_copy"] = backend.check_health(EX, plan)
    facts["writer_bytes"] = writer.stop()
    facts["copy"] = tree_sums(copy)
    facts["snapshot_after_writes"] = tree_sums(Path(plan.exposed_datadir))
    facts["origin_after"] = tree_sums(datadir)
    backend.destroy(EX, plan)
    facts["after_destroy"] = snapshot_state(plan)
    backend.destroy(EX, plan)
    facts["destroy_again"] = "ok"
    facts["origin_mount_after"] = mounts_matching(str(mnt))


def undo_by_name(facts: dict[str, Any]) -> None:
    """The journal's path: a fresh backend instance, found through the action registry."""
    datadir = "/srv/ext4/data"
    maker = LvmBackend(policy=SizePolicy(percent=10, max_bytes=64 * MIB, min_bytes=0))
    plan = maker.plan(EX, "source", datadir, "20240101-000000-undo")
    maker.create(EX, plan)
    facts["created"] = snapshot_state(plan)
    lookup("snapshot.lvm.unmount").fn(FakeRuntime(), plan.as_dict())
    facts["after_unmount"] = snapshot_state(plan)
    lookup("snapshot.lvm.unmount").fn(FakeRuntime(), plan.as_dict())
    maker.expose(EX, plan)
    facts["exposed_again"] = snapshot_state(plan)
    lookup("snapshot.lvm.destroy").fn(FakeRuntime(), plan.as_dict())
    facts["after_destroy"] = snapshot_state(plan)
    lookup("snapshot.lvm.destroy").fn(FakeRuntime(), plan.as_dict())
    facts["destroy_again"] = "ok"


def overflow(facts: dict[str, Any]) -> None:
    """Fill a 12 MiB snapshot through its origin: the watch must say stop before it breaks."""
    datadir = Path("/srv/ext4/data")
    backend = LvmBackend(policy=SizePolicy(percent=100, max_bytes=12 * MIB, min_bytes=0),
                         abort_percent=80, check_interval_s=0)
    plan = backend.plan(EX, "source", str(datadir), "20240101-000000-full")
    backend.create(EX, plan)
    facts["snapshot_size"] = find_volume(EX, plan.snapshot).size  # type: ignore[union-attr]
    readings: list[dict[str, Any]] = []
    with open(datadir / "fill.dat", "wb") as handle:
        for mib in range(1, 64):
            handle.write(os.urandom(MIB))
            handle.flush()
            os.fsync(handle.fileno())
            volume = find_volume(EX, plan.snapshot)
            reason = backend.check_health(EX, plan)
            readings.append({"mib": mib, "percent": volume.percent if volume else None,
                             "invalid": volume.invalid if volume else None, "reason": reason})
            if reason is not None and "abort_reason" not in facts:
                facts["abort_reason"] = reason
                facts["at_abort"] = readings[-1]
                facts["readable_at_abort"] = len(tree_sums(Path(plan.exposed_datadir)))
            if volume is not None and volume.invalid:
                break
    facts["readings"] = readings
    facts["reason_after_overflow"] = LvmBackend().check_health(EX, plan)
    backend.destroy(EX, plan)
    facts["after_destroy"] = snapshot_state(plan)
    (datadir / "fill.dat").unlink()


def refusals(facts: dict[str, Any]) -> None:
    backend = LvmBackend()
    facts["tmpfs"] = backend.unsupported_reason(EX, "/tmp")
    sh("lvcreate", "-q", "-y", "-Wy", "-l", "100%FREE", "-n", "filler", VG)
    try:
        backend.plan(EX, "source", "/srv/ext4/data", "20240101-000000-nospace")
        facts["no_space"] = "planned"
    except HotcopyError as exc:
        facts["no_space"] = {"type": type(exc).__name__, "message": exc.message,
                             "hint": exc.hint}
    finally:
        sh("lvremove", "-q", "-f", f"{VG}/filler")
