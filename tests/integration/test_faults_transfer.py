"""A transfer killed halfway and resumed ships the rest, not everything again.

The dataset is made big enough for that to matter (one table of about 250 MB, seeded
on the master and replicated), and the kill is the worst case: the controller dies
(HOTCOPY_FAULT=kill-during:pull:0.5) and its rsync on the target dies hard with it, as
on a reboot of either machine, so rsync gets no chance to save a partial file itself.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy.mysql.connection import connect
from hotcopy.sandbox import SandboxInfo

from .helpers import clone_json, mark_local, wait_replicating
from .test_faults import (
    MARKER,
    SOURCE,
    TARGET,
    Shard,
    assert_cloned,
    module_shard,
    run_json,
)

SCHEMA = "hotcopy_fault_big"
BATCH_ROWS = 65_536
BATCHES = 12  # about 800k rows of ~300 bytes: a 250 MB tablespace
# rsync reports progress about once a second: slow the killed run down enough for the
# kill to land near half.
PACED = "[transfer]\nbwlimit_kbps = 40000\n"


@pytest.fixture(scope="module")
def big(sandbox: SandboxInfo) -> Iterator[Shard]:
    for shard in module_shard(sandbox):
        conn = connect(sandbox.address(sandbox.master), str(sandbox.admin_option_file),
                       read_timeout=600)
        try:
            conn.execute(f"CREATE DATABASE IF NOT EXISTS {SCHEMA}")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.t (id BIGINT AUTO_INCREMENT "
                         "PRIMARY KEY, pad VARCHAR(255) NOT NULL) ENGINE=InnoDB")
            for _ in range(BATCHES):  # the SEQUENCE engine: no temporary table needed
                conn.execute(f"INSERT INTO {SCHEMA}.t (pad) SELECT REPEAT(MD5(RAND()), 6) "
                             f"FROM {SCHEMA}.seq_1_to_{BATCH_ROWS}")
        finally:
            conn.close()
        for name in sandbox.replicas:
            wait_replicating(shard.rt.server(name), shard.master, timeout=600)
        try:
            yield shard
        finally:
            shard.master.execute((f"DROP DATABASE IF EXISTS {SCHEMA}", ()))
            for name in sandbox.replicas:
                wait_replicating(shard.rt.server(name), shard.master, timeout=300)


def _rsync_clients_of(job_id: str) -> list[int]:
    """The pulling rsync processes this job started on the target (this machine)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"rsync") and any(f"{job_id}-pull".encode() in a
                                                       for a in argv):
            pids.append(int(entry.name))
    return pids


def _staged_bytes(staging: Path) -> int:
    return sum(os.lstat(os.path.join(root, name)).st_size
               for root, _, names in os.walk(staging) for name in names)


def test_transfer_killed_halfway_then_resumed_ships_only_the_rest(
        big: Shard, tmp_path: Path) -> None:
    shard = big
    config = shard.variant(tmp_path / "paced.toml", PACED)
    proc, full = clone_json(shard.info, SOURCE, TARGET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    full_literal = int(full["literal_bytes"])
    assert full_literal > 200_000_000, f"dataset too small to show anything: {full_literal}"

    mark_local(shard.target, MARKER)
    proc, _ = clone_json(shard.info, SOURCE, TARGET, config=config,
                         env={"HOTCOPY_FAULT": "kill-during:pull:0.5"})
    job_id = shard.latest_job().id
    for pid in _rsync_clients_of(job_id):
        os.kill(pid, signal.SIGKILL)  # the transfer dies hard with its controller
    assert proc.returncode == -9, proc.stderr[-3000:]
    fault = re.search(r"SIGKILL during step pull at (\d+)%", proc.stderr)
    assert fault, proc.stderr[-3000:]
    staging = Path(f"{shard.info.datadir(TARGET)}.hotcopy-new-{job_id}")
    kept = _staged_bytes(staging)
    assert 0.2 * full_literal < kept < 0.9 * full_literal, f"killed at {kept / full_literal:.0%}"

    resumed, report = run_json("resume", "--config", str(shard.info.config_path), job_id,
                               "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    literal, sent = int(report["literal_bytes"]), int(report["bytes_transferred"])
    # What this job had to ship (its own snapshot), against what arrived twice.
    ship = next(int(s.outputs["ship_bytes"]) for s in shard.journal().steps(job_id)
                if s.name == "preflight" and s.outcome == "done")
    resent = literal + kept - ship
    print(f"\nfull clone: {full_literal / 1e6:.1f} MB literal, "
          f"{int(full['bytes_transferred']) / 1e6:.1f} MB received; killed at "
          f"{fault.group(1)}% of the progress, with "
          f"{kept / 1e6:.1f} MB ({kept / full_literal:.0%}) staged; resume: "
          f"{literal / 1e6:.1f} MB literal, {sent / 1e6:.1f} MB received; job ships "
          f"{ship / 1e6:.1f} MB: re-sent {resent / 1e6:.1f} MB ({resent / full_literal:.1%})")
    assert resent < 0.25 * full_literal, "the resumed pull re-sent what had arrived"
    assert literal < full_literal - kept + 0.25 * full_literal
    assert sent < full_literal - kept + 0.25 * full_literal
    assert_cloned(shard, report)
