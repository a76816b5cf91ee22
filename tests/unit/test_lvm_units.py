"""The LVM backend's parts that can run on a host without device-mapper.

This kernel cannot create LVM volumes, so everything that needs them runs in the qemu
guest (tests/lvm, scripts/test-lvm). Here: the size policy, mount options and names,
detection and refusals against this host's real findmnt and lvs, and the fill watch fed
with lvs output in the format the guest's lvm2 prints.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotcopy.errors import HotcopyError, RefusedError
from hotcopy.hosts import LocalExecutor
from hotcopy.hosts.base import CommandResult, LineCallback
from hotcopy.saga.actions import lookup
from hotcopy.snapshot import base
from hotcopy.snapshot.base import SnapshotPlan
from hotcopy.snapshot.lvm import (
    GIB,
    MIB,
    LvmBackend,
    SizePolicy,
    Volume,
    exposed_mountpoint,
    list_volumes,
    mount_options,
)

PLAN = SnapshotPlan("lvm", "db1", "vg0/mysql", "vg0/hotcopy-20240101-000000-ab12",
                    "/var/lib/mysql.hotcopy-lvm-20240101-000000-ab12/data")


@given(st.integers(min_value=1, max_value=64 * 1024 * GIB),
       st.floats(min_value=0.1, max_value=100), st.integers(min_value=1, max_value=1024))
@settings(max_examples=300, deadline=None)
def test_size_policy_stays_within_its_bounds(origin: int, percent: float, cap_mib: int) -> None:
    policy = SizePolicy(percent=percent, max_bytes=cap_mib * MIB)
    size = policy.size_for(origin)
    assert size % MIB == 0
    assert MIB <= size <= cap_mib * MIB
    share = origin * percent / 100
    if share <= cap_mib * MIB and share >= policy.min_bytes:
        assert size - MIB < share <= size  # the share itself, rounded up to a MiB


def test_size_policy_defaults_and_floor() -> None:
    policy = SizePolicy()
    assert policy.size_for(10 * GIB) == 2 * GIB
    assert policy.size_for(2000 * GIB) == 100 * GIB  # capped
    assert policy.size_for(100 * MIB) == 100 * MIB  # floor, but never above the origin
    assert policy.size_for(1 * GIB) == 256 * MIB  # floor
    assert "20%" in policy.describe() and "100.0 GiB" in policy.describe()


@pytest.mark.parametrize("kwargs", [{"percent": 0}, {"percent": 101}, {"max_bytes": 1}])
def test_size_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="snapshot size"):
        SizePolicy(**kwargs)  # type: ignore[arg-type]


def test_mount_options_keep_the_kernel_from_writing() -> None:
    assert mount_options("ext4") == "ro,nodev,nosuid,noexec,noload"
    assert mount_options("ext3") == "ro,nodev,nosuid,noexec,noload"
    assert mount_options("xfs") == "ro,nodev,nosuid,noexec,nouuid"
    # A journal that still needs replay is replayed into the snapshot, not skipped.
    assert mount_options("ext4", journal_needs_recovery=True) == "ro,nodev,nosuid,noexec"


def test_mountpoint_is_found_again_from_the_plan_alone() -> None:
    assert exposed_mountpoint(PLAN) == "/var/lib/mysql.hotcopy-lvm-20240101-000000-ab12"
    top = SnapshotPlan(**{**PLAN.as_dict(), "exposed_datadir":
                          "/srv/db.hotcopy-lvm-20240101-000000-ab12"})
    assert exposed_mountpoint(top) == "/srv/db.hotcopy-lvm-20240101-000000-ab12"
    foreign = SnapshotPlan(**{**PLAN.as_dict(), "exposed_datadir": "/var/lib/mysql"})
    with pytest.raises(HotcopyError, match="not a path hotcopy's LVM backend made"):
        exposed_mountpoint(foreign)


@pytest.mark.parametrize(("attr", "invalid"), [
    ("swi-aos---", False), ("swi-I-s---", True), ("swi-a-s---", False),
    ("owi-aos---", False), ("-wi-ao----", False)])
def test_invalid_snapshot_is_read_from_lv_attr(attr: str, invalid: bool) -> None:
    assert Volume("vg", "lv", MIB, attr, "253:1", "", None).invalid is invalid


def test_a_datadir_off_lvm_is_not_supported_and_says_why(tmp_path: Path) -> None:
    """Holds whether or not lvm2 is installed: the device check needs no lvm2."""
    reason = LvmBackend().unsupported_reason(LocalExecutor(), str(tmp_path))
    assert reason is not None and "not an LVM logical volume" in reason, reason
    with pytest.raises(RefusedError, match="not an LVM logical volume"):
        LvmBackend().plan(LocalExecutor(), "db1", str(tmp_path), "20240101-000000-ab12")


def test_a_datadir_off_lvm_says_so_even_without_lvm2(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(_path_without_lvm(tmp_path)))
    reason = LvmBackend().unsupported_reason(LocalExecutor(), str(tmp_path))
    assert reason is not None and "not an LVM logical volume" in reason, reason


class DeviceMapperHere:
    """The real local host, except that its sysfs probe answers "a device-mapper device".

    This kernel has no device-mapper, so a datadir on one cannot exist here; everything
    else (findmnt, the missing lvs) is the real host.
    """

    name = "local"
    is_local = True

    def __init__(self) -> None:
        self.real = LocalExecutor()
        self.probed: list[str] = []

    def run(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
            timeout: float | None = 300, env: Mapping[str, str] | None = None) -> CommandResult:
        if list(argv[:2]) == ["test", "-d"] and argv[2].startswith("/sys/dev/block/"):
            self.probed.append(argv[2])
            return CommandResult(tuple(argv), 0, "", "")
        return self.real.run(argv, input=input, check=check, timeout=timeout, env=env)


def _path_without_lvm(tmp_path: Path) -> Path:
    """A PATH holding the tools the detection needs except lvm2's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "findmnt", "test"):
        found = shutil.which(tool)
        assert found is not None, f"{tool} is part of every Debian install"
        os.symlink(found, bin_dir / tool)
    return bin_dir


def test_missing_lvm2_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(_path_without_lvm(tmp_path)))
    executor = DeviceMapperHere()
    reason = LvmBackend().unsupported_reason(executor, str(tmp_path))  # type: ignore[arg-type]
    assert executor.probed, "the device-mapper probe must come before the lvm2 check"
    assert reason is not None and "lvm2 is not installed" in reason, reason


def test_a_job_id_that_cannot_name_a_volume_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RefusedError, match="cannot be part of an LVM volume name"):
        LvmBackend().plan(LocalExecutor(), "db1", str(tmp_path), "job/../x")


def test_auto_detection_reports_the_lvm_reason(tmp_path: Path) -> None:
    assert "lvm" in base.load_all()
    with pytest.raises(RefusedError) as caught:
        base.backend_for(LocalExecutor(), str(tmp_path), "auto")
    assert "lvm: " in caught.value.message


def test_undo_actions_are_registered_with_readable_descriptions() -> None:
    params = PLAN.as_dict()
    assert "vg0/hotcopy-20240101-000000-ab12" in lookup("snapshot.lvm.destroy").describe_with(
        params)
    assert PLAN.exposed_datadir in lookup("snapshot.lvm.unmount").describe_with(params)


class LvsReplay:
    """Answers lvs with one queued line per call, in lvm2 2.03's --separator format.

    Only for the fill watch: the real lvs runs in the guest tier.
    """

    name = "replay"
    is_local = True

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.calls = 0

    def run(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
            timeout: float | None = 300, env: Mapping[str, str] | None = None) -> CommandResult:
        assert argv[0] == "lvs" and env == {"LC_ALL": "C"}
        self.calls += 1
        return CommandResult(tuple(argv), 0, self.lines.pop(0) + "\n", "")

    def stream(self, argv: Sequence[str], on_line: LineCallback, *,
               timeout: float | None = None, check: bool = True) -> CommandResult:
        raise NotImplementedError

    def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        raise NotImplementedError

    def read_file(self, path: str) -> bytes:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError


def _lvs(percent: str, attr: str = "swi-aos---") -> str:
    return (f"  vg0|hotcopy-20240101-000000-ab12|134217728|{attr}|253|4|mysql|{percent}|"
            f"{percent}")


def test_lvs_lines_parse_into_volumes() -> None:
    replay = LvsReplay([_lvs("3.18") + "\n  vg0|mysql|1073741824|owi-aos---|253|0|||"])
    snapshot, origin = list_volumes(replay, "vg0")
    assert snapshot.percent == 3.18 and snapshot.origin == "mysql" and snapshot.size == 128 * MIB
    assert origin.percent is None and origin.major_minor == "253:0"


def test_fill_watch_passes_then_stops_at_the_limit() -> None:
    backend = LvmBackend(abort_percent=90, check_interval_s=0)
    replay = LvsReplay([_lvs("10.00"), _lvs("10.50"), _lvs("91.00")])
    assert backend.check_health(replay, PLAN) is None
    assert backend.check_health(replay, PLAN) is None
    reason = backend.check_health(replay, PLAN)
    assert reason is not None and "91.0% full" in reason and "limit is 90%" in reason
    assert backend.check_health(replay, PLAN) == reason, "a stop is final"
    assert replay.calls == 3


def test_fill_watch_stops_early_when_the_rate_would_overflow() -> None:
    backend = LvmBackend(abort_percent=95, check_interval_s=0)
    replay = LvsReplay([_lvs("10.00"), _lvs("60.00")])
    assert backend.check_health(replay, PLAN) is None
    reason = backend.check_health(replay, PLAN)
    assert reason is not None and "would overflow" in reason


def test_fill_watch_reports_overflow_and_disappearance() -> None:
    invalid = LvsReplay([_lvs("100.00", attr="swi-I-s---")])
    reason = LvmBackend().check_health(invalid, PLAN)
    assert reason is not None and "overflowed and is invalid" in reason
    gone = LvsReplay(["  vg0|mysql|1073741824|owi-aos---|253|0|||"])
    reason = LvmBackend().check_health(gone, PLAN)
    assert reason is not None and reason.endswith("is gone")


def test_fill_watch_runs_lvs_at_most_once_per_interval() -> None:
    backend = LvmBackend(check_interval_s=3600)
    replay = LvsReplay([_lvs("5.00")])
    for _ in range(50):
        assert backend.check_health(replay, PLAN) is None
    assert replay.calls == 1
