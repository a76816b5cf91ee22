"""`hotcopy cleanup`: what a committed clone left behind is found, listed read-only by
--dry-run, and removed; a job or a config that keeps the old datadir is respected.

The old datadir is left the way it happens in production: the controller is SIGKILLed
after the commit point and before it removes it. A staging directory and an undo that
failed early and was discarded by the commit are recorded through the journal as the
runner records them (no fault reaches that state on demand), around a real btrfs
snapshot on the source; cleanup then works on them for real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.hosts import LocalExecutor
from hotcopy.saga import EntryState, JobState
from hotcopy.sandbox import SandboxInfo
from hotcopy.snapshot.btrfs import BACKEND

from .helpers import leftovers
from .test_faults import (
    SOURCE,
    TARGET,
    Shard,
    assert_cloned,
    killed_clone,
    marked_shard,
    module_shard,
    run_json,
)


@pytest.fixture(scope="module")
def shard(sandbox: SandboxInfo) -> Iterator[Shard]:
    yield from module_shard(sandbox)


@pytest.fixture
def clean(shard: Shard) -> Iterator[Shard]:
    yield from marked_shard(shard)


def _tree(path: Path) -> list[tuple[str, int]]:
    """Every file under path with its size: what --dry-run must leave as it was."""
    return sorted((os.path.join(root, name), os.lstat(os.path.join(root, name)).st_size)
                  for root, _, names in os.walk(path) for name in names)


def _journal_state(shard: Shard, job_id: str) -> tuple[object, ...]:
    journal = shard.journal()
    job = journal.get_job(job_id)
    return (job.state, [(e.seq, e.state, e.attempts, e.error)
                        for e in journal.undo_entries(job_id)],
            [(s.name, s.outcome) for s in journal.steps(job_id)])


def test_old_datadir_left_after_commit_is_listed_then_removed(clean: Shard,
                                                              tmp_path: Path) -> None:
    config = str(clean.info.config_path)
    job_id = killed_clone(clean, "kill-during:commit:0.5")
    assert clean.latest_job().state.value == "committed"
    old = Path(f"{clean.info.datadir(TARGET)}.hotcopy-old-{job_id}")
    assert old.is_dir(), "the kill must leave the old datadir behind"
    assert str(old) in leftovers(clean.info)
    tree, journal_before = _tree(old), _journal_state(clean, job_id)
    assert tree, "the old datadir holds the target's former data"

    # A config that keeps old datadirs: nothing to clean.
    keep = clean.variant(tmp_path / "keep.toml", "[clone]\nkeep_old_datadir = true\n")
    kept, document = run_json("cleanup", "--config", str(keep), "--dry-run", "--json")
    assert kept.returncode == 0, kept.stderr
    assert document == {"dry_run": True, "leftovers": []}

    listed, document = run_json("cleanup", "--config", config, "--dry-run", "--json")
    assert listed.returncode == 0, listed.stderr
    assert document["dry_run"] is True
    (item,) = document["leftovers"]
    assert item["job"] == job_id and item["server"] == TARGET
    assert item["kind"] == "old_datadir" and item["what"] == str(old)
    assert item["done"] is False and item["error"] is None
    # Read-only: the directory, its files and the journal are exactly as they were.
    assert _tree(old) == tree
    assert _journal_state(clean, job_id) == journal_before

    removed, document = run_json("cleanup", "--config", config, "--json")
    assert removed.returncode == 0, removed.stderr
    (item,) = document["leftovers"]
    assert item["what"] == str(old) and item["done"] is True and item["error"] is None
    assert not old.exists()
    # The committed clone is untouched: the target replicates, equal to the master,
    # and nothing of the job is left anywhere.
    assert_cloned(clean, clean.report(job_id))

    again, document = run_json("cleanup", "--config", config, "--json")
    assert again.returncode == 0, again.stderr
    assert document["leftovers"] == []


def _committed_job_with_leftovers(shard: Shard) -> tuple[str, Path, Path]:
    """A committed clone job whose snapshot drop failed early (busy) and was discarded by
    the commit, and whose staging directory is still beside the target's datadir."""
    journal = shard.journal()
    job = journal.create_job("clone", {"source": SOURCE, "target": TARGET})
    executor = LocalExecutor()
    plan = BACKEND.plan(executor, SOURCE, str(shard.info.datadir(SOURCE)), job.id)
    BACKEND.create_snapshot(executor, plan)
    entry = journal.append_undo(job.id, "snapshot.btrfs.destroy", plan.as_dict(),
                                f"destroy btrfs snapshot {plan.snapshot} on {SOURCE}",
                                "snapshot")
    journal.set_undo_state(job.id, entry.seq, EntryState.REMOVED, attempts=3,
                           error="ERROR: Could not destroy subvolume: Device or resource busy")
    staging = Path(f"{shard.info.datadir(TARGET)}.hotcopy-new-{job.id}")
    staging.mkdir()
    (staging / "ibdata1").write_bytes(b"partial copy")
    journal.set_job_state(job.id, JobState.COMMITTED)
    journal.close()
    return job.id, Path(plan.snapshot), staging


def test_a_discarded_failed_undo_and_a_staging_dir_are_cleaned(clean: Shard) -> None:
    config = str(clean.info.config_path)
    job_id, snapshot, staging = _committed_job_with_leftovers(clean)
    # A staging name that resolves to the live datadir (here a symlink) is never touched.
    with clean.journal() as journal:
        decoy_job = journal.create_job("clone", {"source": SOURCE, "target": TARGET})
        journal.set_job_state(decoy_job.id, JobState.COMMITTED)
    decoy = Path(f"{clean.info.datadir(TARGET)}.hotcopy-new-{decoy_job.id}")
    decoy.symlink_to(clean.info.datadir(TARGET))
    try:
        listed, document = run_json("cleanup", "--config", config, "--dry-run", "--json")
        assert listed.returncode == 0, listed.stderr
        found = {(i["job"], i["kind"]): i for i in document["leftovers"]}
        assert set(found) == {(job_id, "undo"), (job_id, "staging")}, document
        assert found[(job_id, "undo")]["server"] == SOURCE
        assert str(snapshot) in found[(job_id, "undo")]["what"]
        assert found[(job_id, "staging")]["what"] == str(staging)
        assert snapshot.is_dir() and staging.is_dir()  # --dry-run only reads

        removed, document = run_json("cleanup", "--config", config, "--json")
        assert removed.returncode == 0, removed.stderr
        assert all(i["done"] and i["error"] is None for i in document["leftovers"]), document
        assert not snapshot.exists() and not staging.exists()
        (entry,) = clean.journal().undo_entries(job_id)
        assert (entry.state, entry.attempts, entry.error) == (EntryState.DONE, 4, None)
        assert decoy.is_symlink() and (clean.info.datadir(TARGET) / "ibdata1").exists()

        again, document = run_json("cleanup", "--config", config, "--json")
        assert again.returncode == 0, again.stderr
        assert document["leftovers"] == []
    finally:
        decoy.unlink(missing_ok=True)
    assert leftovers(clean.info) == []
