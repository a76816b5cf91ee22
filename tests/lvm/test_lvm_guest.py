"""The LVM tier: real LVM snapshots and real MariaDB clones inside a qemu guest.

One guest boot runs every scenario (tests/lvm/guest_scenario.py) and brings back facts;
the tests below judge them. Run it with scripts/test-lvm. Set HOTCOPY_LVM_KEEP=DIR to
keep the guest's console log and results.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lvm import guest as guest_module
from tests.lvm.guest import GuestRun
from tests.real_parts import verdict

# One guest boot runs everything, in the first test's setup: minutes under emulation.
pytestmark = [pytest.mark.lvm, pytest.mark.timeout(2100)]

FILESYSTEMS = ["ext4", "xfs"]


def boot(parts: str, budget_s: int) -> Iterator[GuestRun]:
    """Body of the guest fixtures: one boot running ``parts``, its work dir removed after.

    A missing part (qemu, kernel, lvm2) skips, or fails under CI (tests/real_parts.py).
    """
    reason = guest_module.missing()
    if reason is not None:
        verdict(reason)
    work = Path(tempfile.mkdtemp(prefix="hotcopy-lvm-", dir="/var/tmp"))
    try:
        guest_module.prepare_work(work)
        run = guest_module.run_guest(work, budget_s=budget_s, parts=parts)
        keep = os.environ.get("HOTCOPY_LVM_KEEP")
        if keep:
            guest_module.keep_artifacts(run, Path(keep))
        print(f"\nLVM guest ({parts}): {run.seconds:.0f}s wall; scenario parts (s): "
              f"{run.results.get('seconds')}")
        yield run
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def guest() -> Iterator[GuestRun]:
    yield from boot("all", 1500)


def part(run: GuestRun, name: str) -> dict[str, Any]:
    """The facts of one scenario part; its own traceback when it failed in the guest."""
    if name in run.results.get("skipped", []):
        pytest.fail(f"the guest ran out of time before part {name}")
    error = run.results.get("errors", {}).get(name)
    assert error is None, f"part {name} failed in the guest:\n{error}"
    facts = run.facts(name)
    assert facts, (f"no facts for part {name}; notes: {run.notes}\nconsole:\n"
                   f"{run.console_tail()}")
    return facts


def backend(run: GuestRun, fstype: str) -> dict[str, Any]:
    if fstype == "xfs" and not run.facts("setup").get("xfs"):
        pytest.skip("mkfs.xfs is not installed (xfsprogs)")
    return part(run, f"backend_{fstype}")


def test_guest_finished_every_part(guest: GuestRun) -> None:
    assert guest.results, f"{guest.notes}\n{guest.console_tail()}"
    assert guest.results.get("scenario_exit_code") == "0", guest.console_tail()
    assert guest.results.get("errors") == {}, "\n".join(guest.results["errors"].values())
    assert not guest.results.get("skipped"), guest.results.get("skipped")


@pytest.mark.parametrize("fstype", FILESYSTEMS)
def test_snapshot_holds_the_moment_it_was_taken(guest: GuestRun, fstype: str) -> None:
    facts = backend(guest, fstype)
    assert facts["unsupported_reason"] is None
    assert facts["copy"] == facts["moment"], "the copy differs from the origin at snapshot time"
    assert facts["snapshot_after_writes"] == facts["moment"]
    # The writer kept changing the origin, so the equality above could have failed.
    assert facts["origin_after"] != facts["moment"]
    assert facts["writer_bytes"] >= 8 * 1024**2
    assert facts["snapshot_lv"]["origin"] == f"src{fstype}"


@pytest.mark.parametrize("fstype", FILESYSTEMS)
def test_snapshot_is_mounted_read_only_beside_the_origin(guest: GuestRun, fstype: str) -> None:
    facts = backend(guest, fstype)
    plan, exposed = facts["plan"], facts["while_exposed"]
    assert plan["exposed_datadir"] == f"/srv/{fstype}.hotcopy-lvm-20240101-000000-{fstype}/data"
    assert len(exposed["mounts"]) == 1, "a repeated expose must not mount twice"
    options = exposed["mounts"][0]["options"].split(",")
    assert exposed["mounts"][0]["fstype"] == fstype
    assert "ro" in options and "nodev" in options
    # ext4 shows its noload option as norecovery
    assert ("nouuid" if fstype == "xfs" else "norecovery") in options, options
    assert facts["write_into_snapshot"] == "Read-only file system"


@pytest.mark.parametrize("fstype", FILESYSTEMS)
def test_fill_level_rises_with_origin_writes(guest: GuestRun, fstype: str) -> None:
    facts = backend(guest, fstype)
    assert 0 <= facts["fill_before_copy"] < facts["fill_after_copy"] < 90
    assert facts["health_after_copy"] is None


@pytest.mark.parametrize("fstype", FILESYSTEMS)
def test_destroy_leaves_nothing_and_can_repeat(guest: GuestRun, fstype: str) -> None:
    facts = backend(guest, fstype)
    assert facts["after_destroy"] == {"lv_exists": False, "mounts": [],
                                      "mountpoint_exists": False}
    assert facts["destroy_again"] == "ok"
    assert len(facts["origin_mount_after"]) == 1, "the origin itself stays mounted"


def test_undo_actions_work_by_name_in_a_fresh_backend(guest: GuestRun) -> None:
    facts = part(guest, "undo_by_name")
    assert facts["created"]["lv_exists"] and len(facts["created"]["mounts"]) == 1
    assert facts["after_unmount"] == {"lv_exists": True, "mounts": [],
                                      "mountpoint_exists": False}
    assert len(facts["exposed_again"]["mounts"]) == 1
    assert facts["after_destroy"] == {"lv_exists": False, "mounts": [],
                                      "mountpoint_exists": False}
    assert facts["destroy_again"] == "ok"


def test_fill_watch_stops_before_the_snapshot_overflows(guest: GuestRun) -> None:
    facts = part(guest, "overflow")
    at_abort = facts["at_abort"]
    assert at_abort["invalid"] is False, "the watch spoke only after the overflow"
    assert at_abort["percent"] < 100
    assert facts["readable_at_abort"] > 0, "the snapshot was still readable when told to stop"
    assert "full" in facts["abort_reason"]
    # Writing on, the snapshot did overflow: the watch was not crying wolf.
    assert any(r["invalid"] for r in facts["readings"])
    assert "invalid" in facts["reason_after_overflow"]
    assert facts["after_destroy"]["lv_exists"] is False
    assert facts["after_destroy"]["mounts"] == []


def test_refusals_explain_themselves(guest: GuestRun) -> None:
    facts = part(guest, "refusals")
    assert "not an LVM logical volume" in facts["tmpfs"]
    assert facts["no_space"]["type"] == "RefusedError"
    assert "free" in facts["no_space"]["message"]
    assert facts["no_space"]["hint"]


def _clone_succeeded(facts: dict[str, Any], source: str, target: str) -> None:
    clone = facts["clone"]
    assert clone["returncode"] == 0, clone["stderr_tail"] or clone["document"]
    document = clone["document"]
    assert document["exit_code"] == 0
    assert facts["load_commits"] > 0, "no write load ran during the clone"
    assert facts["leftovers"] == []
    shard = facts["shard"]
    assert shard[target]["checksums"] == shard["master"]
    assert (shard[target]["io"], shard[target]["sql"]) == ("Yes", "Yes")
    assert shard[source]["checksums"] == shard["master"]
    assert "load_orders" in " ".join(shard["master"])


def test_clone_from_ext4_source_under_load(guest: GuestRun) -> None:
    facts = part(guest, "clone_ext4")
    assert facts["source_fstype"] == "ext4"
    _clone_succeeded(facts, "replica1", "replica2")


def test_kill_mid_transfer_then_rollback_cleans_up(guest: GuestRun) -> None:
    assert_killed_and_rolled_back(part(guest, "clone_killed"))


def assert_killed_and_rolled_back(facts: dict[str, Any]) -> None:
    assert facts["clone"]["returncode"] == -9, facts["clone"]["stderr_tail"]
    left = facts["left_by_the_kill"]
    assert any(item.startswith("lv hcvg/hotcopy-") for item in left), left
    assert any(item.startswith("mount ") and ".hotcopy-lvm-" in item for item in left), left
    rollback = facts["rollback"]
    assert rollback["returncode"] == 0, rollback["stderr_tail"] or rollback["document"]
    assert facts["leftovers"] == []
    shard = facts["shard"]
    assert shard["replica1"]["checksums"] == shard["master"]
    assert (shard["replica1"]["io"], shard["replica1"]["sql"]) == ("Yes", "Yes")


def test_snapshot_overflow_mid_pull_stops_without_retry_and_rolls_back(
        guest: GuestRun) -> None:
    assert_overflow_stopped_the_clone(part(guest, "clone_overflowed"))


def assert_overflow_stopped_the_clone(facts: dict[str, Any]) -> None:
    # The snapshot broke while the copy was stopped half-way: a real overflow, mid-pull.
    assert facts["invalid_after_mib"] is not None, "the origin writes never overflowed it"
    assert facts["staged_when_stopped"] >= 4 * 2**20
    assert facts["stalled_stream_killed"], "the stall watchdog never stopped the stream"
    clone = facts["clone"]
    document = clone["document"]
    assert clone["returncode"] == 1, clone["stderr_tail"] or document
    assert document["state"] == "rolled-back", document
    # Said as what it is, the snapshot, not as a stream that stalled (whichever of the
    # progress check and the retry's guard saw it first)...
    assert "overflowed and is invalid" in document["error"], document["error"]
    assert "LVM snapshot hcvg/hotcopy-" in document["error"], document["error"]
    pull = next(step for step in document["steps"] if step["name"] == "pull")
    assert pull["outcome"] == "failed", pull
    # ...and never read again: no second attempt, nothing committed.
    assert facts["transfer_attempt"] is None, facts["transfer_attempt"]
    assert not any(step["name"] == "commit" and step["outcome"] == "done"
                   for step in document["steps"]), document["steps"]
    assert facts["leftovers"] == []
    shard = facts["shard"]
    for name in ("replica1", "replica2"):
        assert shard[name]["checksums"] == shard["master"], name
        assert (shard[name]["io"], shard[name]["sql"]) == ("Yes", "Yes"), name


def test_clone_from_xfs_source_under_load(guest: GuestRun) -> None:
    facts = part(guest, "clone_xfs")
    if facts["source_fstype"] != "xfs":
        pytest.skip("mkfs.xfs is not installed (xfsprogs): the source was ext4 again")
    _clone_succeeded(facts, "replica2", "replica1")
