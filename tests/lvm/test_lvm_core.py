"""The core of the LVM tier, in the default test run: in the qemu guest (this kernel has
no device-mapper), a MariaDB replica on an ext4 logical volume is cloned under write
load through a real LVM snapshot, and a second clone is SIGKILLed mid-transfer and
rolled back. The rest of the tier (XFS, the backend by hand, overflow, refusals) stays
in scripts/test-lvm. One guest boot serves both tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lvm.guest import GuestRun
from tests.lvm.test_lvm_guest import _clone_succeeded, assert_killed_and_rolled_back, boot, part

# In the default run (not marked lvm): 3 tests, one guest boot of about 3.5 min on a
# quiet 2-core machine (8 min on a slow day), software emulation.
pytestmark = [pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def core_guest() -> Iterator[GuestRun]:
    yield from boot("core", 900)


def test_core_guest_ran_only_the_core(core_guest: GuestRun) -> None:
    assert core_guest.results, f"{core_guest.notes}\n{core_guest.console_tail()}"
    assert core_guest.results.get("parts") == "core"
    assert core_guest.results.get("scenario_exit_code") == "0", core_guest.console_tail()
    assert core_guest.results.get("errors") == {}, core_guest.results.get("errors")
    assert not core_guest.results.get("skipped"), core_guest.results.get("skipped")
    # Each clone part started on a clean shard: nothing was left to roll back.
    assert core_guest.facts("before_clone_killed") == {"rolled_back": []}


def test_core_clone_from_an_lvm_source_under_load(core_guest: GuestRun) -> None:
    facts = part(core_guest, "clone_ext4")
    assert facts["source_fstype"] == "ext4"
    assert facts["clone"]["document"]["snapshot"]["backend"] == "lvm"
    _clone_succeeded(facts, "replica1", "replica2")


def test_core_kill_mid_transfer_then_rollback(core_guest: GuestRun) -> None:
    assert_killed_and_rolled_back(part(core_guest, "clone_killed"))
