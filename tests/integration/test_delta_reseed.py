"""Delta re-seed (clone.delta) for real: a replica cloned from the source, then left
behind, gets back only the blocks that changed, over rsyncd and over rsync_ssh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hotcopy.mysql.checksum import differing_tables, table_checksums
from hotcopy.sandbox import SandboxInfo

from .helpers import (
    clone_json,
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    runtime,
    wait_replicating,
)
from .test_transfers import seeded, ssh_access, with_transfer

__all__ = ["seeded", "ssh_access"]  # fixtures, shared with the transfer tests


@pytest.mark.parametrize("method", ["rsyncd", "rsync_ssh"])
def test_delta_reseed_of_a_stale_replica_ships_only_what_changed(
        seeded: SandboxInfo, ssh_access: dict[str, Any], tmp_path: Path, method: str) -> None:
    """A replica cloned from the source, then left behind (its replication stopped while
    the master writes): with clone.delta it gets back only the blocks that changed."""
    rt = runtime(seeded)
    master, source, target = (rt.server(n) for n in (seeded.master, "replica1", "replica2"))
    full, first = clone_json(seeded, "replica1", "replica2")  # its pages are the source's
    assert full.returncode == 0, full.stderr
    target.close()
    wait_replicating(target, master)
    target.execute(("STOP SLAVE", ()))
    mark_local(target, "only_on_stale_target")  # the staging base has it: rsync must drop it
    master.execute(("CREATE DATABASE IF NOT EXISTS delta_change", ()))
    master.execute(("CREATE TABLE IF NOT EXISTS delta_change.t (id INT PRIMARY KEY, "
                    "v VARCHAR(200)) ENGINE=InnoDB", ()))
    master.execute(("REPLACE INTO delta_change.t SELECT seq, REPEAT('x', 200) "
                    "FROM delta_change.seq_1_to_2000", ()))
    wait_replicating(source, master)
    config = with_transfer(seeded, tmp_path / "delta.toml", method=method, **ssh_access)
    config.write_text(config.read_text() + '\n[clone]\ndelta = "on"\n')
    plan = hotcopy("clone", "--config", str(config), "--source", "replica1", "--target",
                   "replica2", "--dry-run", env={"COLUMNS": "200"})
    assert plan.returncode == 0, plan.stderr
    assert "delta re-seed: " in plan.stdout and "only blocks that differ travel" in plan.stdout
    proc, report = clone_json(seeded, "replica1", "replica2", config=config)
    assert proc.returncode == 0, proc.stderr
    assert report["state"] == "committed" and report["outstanding_undo"] == []
    steps = {s["name"]: s for s in report["steps"]}
    assert "delta: a snapshot of" in steps["prepare_target"]["detail"]
    # What the full copy sent over the wire against what the delta sent (rsync's figures).
    whole, shipped = first["bytes_transferred"], report["bytes_transferred"]
    assert whole > 10_000_000 and shipped < whole / 4, (whole, shipped)
    target.close()
    wait_replicating(target, master)
    assert differing_tables(table_checksums(master), table_checksums(target)) == []
    assert not has_schema(target, "only_on_stale_target"), "a file the source lacks stayed"
    assert leftovers(seeded) == []
    print(f"\ndelta: {shipped / 1e6:.1f} MB sent, the full copy {whole / 1e6:.1f} MB; pull "
          f"{steps['pull']['ms']:.0f} ms")
    master.execute(("DROP DATABASE delta_change", ()))
    rt.close()
