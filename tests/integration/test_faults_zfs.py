"""SIGKILL at every step boundary of a clone from a ZFS source (zfs_send), then
``hotcopy rollback`` from a fresh process; and ``hotcopy resume`` at representative
boundaries (the snapshot held, the bulk sent, the target side after the swap).

The same judgements as tests/integration/test_faults.py (btrfs/rsyncd), on a zfs-fuse
shard of this module's own, plus: no ZFS snapshot, clone, hold or zfs process left.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hotcopy.workflows.clone import STEPS

from ..fault_points import kill_points
from ..real_parts import needs
from .conftest import own_sandbox
from .test_faults import (
    Shard,
    assert_cloned,
    assert_rolled_back,
    boundary_id,
    killed_clone,
    marked_shard,
    module_shard,
    run_json,
)
from .test_zfs import _zfs_missing, zfs_leftovers

pytestmark = needs(_zfs_missing())

STEP_NAMES = [step.name for step in STEPS]
#: Every distinct crash state once (kill-before:Y is kill-after:X; see fault_points.py).
BOUNDARIES = kill_points(STEP_NAMES)
RESUMED = [("after", "snapshot"), ("after", "serve"), ("after", "swap_datadir"),
           ("after", "verify")]
# The snapshot's undo is owed from lock_source (journaled before the lock is waited for)
# until finish_drop has waited for the background drop (as in test_faults.py).
SNAPSHOT_OWED = set(BOUNDARIES[BOUNDARIES.index(("after", "lock_source")):
                               BOUNDARIES.index(("after", "finish_drop"))])


@pytest.fixture(scope="module")
def shard() -> Iterator[Shard]:
    with own_sandbox(filesystem="zfs") as info:
        yield from module_shard(info)


@pytest.fixture
def clean(shard: Shard) -> Iterator[Shard]:
    yield from marked_shard(shard)


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=boundary_id)
def test_zfs_sigkill_at_boundary_then_rollback(clean: Shard,
                                               boundary: tuple[str, str]) -> None:
    when, step = boundary
    job_id = killed_clone(clean, f"kill-{when}:{step}")
    back, report = run_json("rollback", "--config", str(clean.info.config_path), job_id,
                            "--json")
    if BOUNDARIES.index(boundary) >= BOUNDARIES.index(("after", "commit")):
        assert back.returncode == 2 and "committed" in back.stderr, back.stderr
        assert_cloned(clean, clean.report(job_id))
    else:
        assert back.returncode == 0, back.stderr[-3000:]
        assert report["state"] == "rolled-back"
        assert_rolled_back(clean, job_id)
    assert zfs_leftovers(clean.info) == []


@pytest.mark.parametrize("boundary", RESUMED, ids=boundary_id)
def test_zfs_sigkill_then_resume_finishes(clean: Shard, boundary: tuple[str, str]) -> None:
    when, step = boundary
    job_id = killed_clone(clean, f"kill-{when}:{step}")
    owes_snapshot = any(u["action"] == "snapshot.zfs.destroy"
                        for u in clean.report(job_id)["outstanding_undo"])
    assert owes_snapshot == (boundary in SNAPSHOT_OWED)
    resumed, report = run_json("resume", "--config", str(clean.info.config_path), job_id,
                               "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert report["job"] == job_id
    assert report["snapshot"]["backend"] == "zfs"
    assert_cloned(clean, report)
    assert zfs_leftovers(clean.info) == []
