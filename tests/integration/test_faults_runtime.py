"""Faults beyond a crash, while a clone runs: signals, a second clone, a full target,
a source restart, an undo that keeps failing. Each ends the way an operator needs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.saga import JobState
from hotcopy.sandbox import SandboxInfo

from .conftest import control
from .helpers import clone_json, has_schema, leftovers, wait_for, wait_replicating
from .test_faults import (
    MARKER,
    SOURCE,
    TARGET,
    BackgroundClone,
    Shard,
    assert_cloned,
    assert_rolled_back,
    assert_source_released,
    killed_clone,
    marked_shard,
    module_shard,
    run_json,
)
from .test_transfers import ship_bytes

# A transfer slow enough (about 4 s for the sandbox) to act while it runs.
SLOW = "[transfer]\nbwlimit_kbps = 20000\n"


@pytest.fixture(scope="module")
def shard(sandbox: SandboxInfo) -> Iterator[Shard]:
    yield from module_shard(sandbox)


@pytest.fixture
def clean(shard: Shard) -> Iterator[Shard]:
    yield from marked_shard(shard)


@pytest.fixture
def slow(clean: Shard, tmp_path: Path) -> Iterator[tuple[Shard, Path]]:
    yield clean, clean.variant(tmp_path / "slow.toml", SLOW)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_during_transfer_rolls_back_in_order(
        slow: tuple[Shard, Path], sig: signal.Signals) -> None:
    shard, config = slow
    run = BackgroundClone(shard, config)
    try:
        run.wait_transferring()
        run.proc.send_signal(sig)
        code, report, stderr = run.finish()
    finally:
        run.kill()
    assert code == 1, stderr[-3000:]
    assert report["state"] == "rolled-back"
    assert f"interrupted by {sig.name}" in (report["error"] or ""), report["error"]
    pull = next(s for s in report["steps"] if s["name"] == "pull")
    assert pull["outcome"] == "failed"
    assert_rolled_back(shard, run.job_id)


def test_second_clone_on_a_busy_source_or_target_is_refused(slow: tuple[Shard, Path]) -> None:
    shard, config = slow
    run = BackgroundClone(shard, config)
    try:
        run.wait_transferring()
        for source, target in ((SOURCE, TARGET), (TARGET, SOURCE)):
            proc, second = clone_json(shard.info, source, target)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert f"job {run.job_id}" in proc.stderr and "still working on" in proc.stderr
            assert second["state"] == "refused" and second["undo"] == []
        assert run.proc.poll() is None, "the refused clones must not disturb the running one"
        code, report, stderr = run.finish()
    finally:
        run.kill()
    assert code == 0, stderr[-3000:]
    assert_cloned(shard, report)


def _fill(mount: Path, leave: int) -> Path:
    """Take the free space of a filesystem but about ``leave`` bytes, fast (fallocate).

    A transfer writes at the same time, so a first guess can fail: halve and top up.
    """
    filler = mount / "fault-test-filler"
    filler.mkdir(exist_ok=True)
    for part in range(40):
        stats = os.statvfs(mount)
        want = stats.f_bavail * stats.f_frsize - leave
        if want < 2**20:
            break
        while want >= 2**20:
            done = subprocess.run(["fallocate", "-l", str(want), str(filler / str(part))],
                                  check=False, capture_output=True)
            if done.returncode == 0:
                break
            want //= 2
    return filler


def _stopped(pid: int) -> bool:
    """The process sits in SIGSTOP (state T in /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] == "T"


# With this margin the guard keeps back 2.5 times the copy's size (about 200 MB for the
# sandbox's 81 MB), far above what the filler leaves.
ROOMY = "[clone]\nfree_space_margin = 5.0\n"
# Room left to the target's running mysqld while the disk is "full". On btrfs every
# InnoDB page write allocates anew (copy-on-write) and freed extents come back only at
# the next commit, so a few MiB can run out under a mysqld that just flushes, and InnoDB
# aborts on ENOSPC: CI saw the target die with 8 MiB left. 64 MiB is ample for that and
# still far under the guard's reserve.
LEAVE = 64 * 2**20


def test_target_filesystem_full_during_transfer_rolls_back(clean: Shard, tmp_path: Path) -> None:
    # Deterministic: the clone stops itself right before the pull, the disk is filled
    # then, before a byte of the copy is written, to below the guard's reserve: however
    # fast the copy would be, it must be stopped, not squeezed in.
    config = clean.variant(tmp_path / "roomy.toml", ROOMY)
    run = BackgroundClone(clean, config, env={"HOTCOPY_FAULT": "pause-before:pull"})
    filler: Path | None = None
    try:
        assert wait_for(lambda: _stopped(run.proc.pid) or run.proc.poll() is not None,
                        timeout=120, interval=0.05), "the clone never reached the pull"
        assert run.proc.poll() is None, "the clone ended before the pull"
        assert run.staged_bytes() == 0
        # After the preflight saw enough space: something else fills the disk.
        filler = _fill(clean.info.datadir(TARGET).parent, leave=LEAVE)
        run.proc.send_signal(signal.SIGCONT)
        code, report, stderr = run.finish()
    finally:
        run.kill()
        if filler is not None:
            shutil.rmtree(filler)
            # btrfs frees the extents at its next commit; df shows them free after it.
            subprocess.run(["btrfs", "filesystem", "sync", str(filler.parent)], check=True,
                           capture_output=True)
    assert code == 1, stderr[-3000:]
    assert report["state"] == "rolled-back"
    error = report["error"] or ""
    # Stopped before the disk is full, so the target's running mysqld keeps room to write.
    assert "the target's filesystem is nearly full" in error, error
    assert TARGET in error and "free space there" in error
    assert_rolled_back(clean, run.job_id)


def test_source_restarted_after_snapshot_then_resume_completes(clean: Shard) -> None:
    job_id = killed_clone(clean, "kill-after:snapshot")
    ctl = control(clean.info, SOURCE)
    ctl.stop(timeout=120)
    ctl.start(timeout=120)
    resumed, report = run_json("resume", "--config", str(clean.info.config_path), job_id,
                               "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_cloned(clean, report)


def test_source_restarted_after_snapshot_then_rollback_is_clean(clean: Shard) -> None:
    job_id = killed_clone(clean, "kill-after:snapshot")
    ctl = control(clean.info, SOURCE)
    ctl.stop(timeout=120)
    ctl.start(timeout=120)
    back, _ = run_json("rollback", "--config", str(clean.info.config_path), job_id, "--json")
    assert back.returncode == 0, back.stderr[-3000:]
    assert_rolled_back(clean, job_id)


def test_source_restarted_during_transfer(slow: tuple[Shard, Path]) -> None:
    shard, config = slow
    run = BackgroundClone(shard, config)
    try:
        run.wait_transferring()
        ctl = control(shard.info, SOURCE)
        ctl.stop(timeout=120)
        ctl.start(timeout=120)
        code, report, stderr = run.finish()
    finally:
        run.kill()
    # Either outcome is correct; a half-done one is not.
    assert code in (0, 1), stderr[-3000:]
    if code == 0:
        assert_cloned(shard, report)
    else:
        assert_rolled_back(shard, run.job_id)


class SnapshotInUse:
    """A ``btrfs send`` of the snapshot in progress: btrfs refuses to delete it (EPERM)."""

    def __init__(self, snapshot: str) -> None:
        self.proc = subprocess.Popen(["btrfs", "send", "-q", snapshot], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        # The stream has begun; with nobody reading on, the send stays in progress.
        assert self.proc.stdout.read(4096), "btrfs send produced nothing"

    def end(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _snapshot_of(shard: Shard, job_id: str) -> str:
    """From the snapshot's undo entry: a kill inside the source's pause loses the step
    records held in memory there (StepContext.hold_records), never an undo entry."""
    owed = [e for e in shard.journal().undo_entries(job_id)
            if e.action == "snapshot.btrfs.destroy" and e.outstanding]
    assert len(owed) == 1, "the snapshot's undo was not journaled"
    snapshot = str(owed[0].params["snapshot"])
    assert Path(snapshot).is_dir(), f"the snapshot {snapshot} was not taken"
    return snapshot


def _assert_only_snapshot_owed(shard: Shard, job_id: str, output: str, snapshot: str) -> None:
    report = shard.report(job_id)
    assert report["state"] == JobState.ROLLBACK_INCOMPLETE.value
    owed = report["outstanding_undo"]
    assert [(u["action"], u["state"]) for u in owed] == [("snapshot.btrfs.destroy", "failed")]
    assert owed[0]["attempts"] >= 3, "a failing undo is retried"
    assert "send may be in progress" in owed[0]["error"] or "not permitted" in owed[0]["error"]
    # The message lists exactly what remains, and how to finish.
    assert "rollback incomplete: 1 undo action(s) failed" in output
    assert f"#{owed[0]['seq']} destroy btrfs snapshot {snapshot}" in output
    assert f"hotcopy rollback {job_id}" in output
    # Every other undo ran: the source is released and only the snapshot is left.
    assert_source_released(shard)
    assert [x for x in leftovers(shard.info) if "hotcopy-snap" not in x] == []
    # The job keeps its servers until it is finished: a new clone is refused.
    proc, _ = clone_json(shard.info, SOURCE, TARGET)
    assert proc.returncode == 2 and job_id in proc.stderr


def test_failing_undo_during_rollback_exits_3_then_rollback_finishes(clean: Shard) -> None:
    job_id = killed_clone(clean, "kill-after:snapshot")
    snapshot = _snapshot_of(clean, job_id)
    busy = SnapshotInUse(snapshot)
    try:
        back, shown = run_json("rollback", "--config", str(clean.info.config_path), job_id,
                               "--json")
        assert back.returncode == 3, back.stderr[-3000:]
        assert shown["state"] == "rollback-incomplete"
        _assert_only_snapshot_owed(clean, job_id, back.stderr, snapshot)
        show, report = run_json("show", "--config", str(clean.info.config_path), job_id,
                                "--json")
        assert show.returncode == 0
        assert [u["action"] for u in report["outstanding_undo"]] == ["snapshot.btrfs.destroy"]
    finally:
        busy.end()
    again, _ = run_json("rollback", "--config", str(clean.info.config_path), job_id, "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_rolled_back(clean, job_id)


def test_failing_undo_inside_a_clone_exits_3_then_rollback_finishes(clean: Shard) -> None:
    job_id = killed_clone(clean, "kill-after:pull")
    snapshot = _snapshot_of(clean, job_id)
    busy = SnapshotInUse(snapshot)
    try:
        # drop_snapshot cannot destroy it: the clone rolls back, all but that undo run.
        resumed, shown = run_json("resume", "--config", str(clean.info.config_path), job_id,
                                  "--json")
        assert resumed.returncode == 3, resumed.stderr[-3000:]
        assert shown["state"] == "rollback-incomplete"
        assert "step 'drop_snapshot'" in resumed.stderr or "undo #" in resumed.stderr
        _assert_only_snapshot_owed(clean, job_id, resumed.stderr, snapshot)
    finally:
        busy.end()
    again, _ = run_json("rollback", "--config", str(clean.info.config_path), job_id, "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert_rolled_back(clean, job_id)


def test_kill_during_transfer_then_rollback_stops_the_orphaned_transfer(
        slow: tuple[Shard, Path]) -> None:
    shard, config = slow
    job_id = killed_clone(shard, "kill-during:pull:0.3", config=config)
    # The controller is gone but its rsync on the target may still be pulling.
    back, _ = run_json("rollback", "--config", str(config), job_id, "--json")
    assert back.returncode == 0, back.stderr[-3000:]
    assert_rolled_back(shard, job_id)  # leftovers() includes any process of the job


DIFFER_DB = "hc_verify_differs"


def test_verification_finds_a_table_that_differs_and_rolls_back(clean: Shard) -> None:
    """The README row: verify finds a differing table, names it, rolls back, exit 1.

    The clone stops itself right before verify (the new target replicates by then);
    a row is changed on the target alone (sql_log_bin=0), as a corrupt copy or a stray
    local write would, and nothing else ever touches that row.
    """
    master = clean.master
    master.execute((f"CREATE DATABASE IF NOT EXISTS {DIFFER_DB}", ()))
    master.execute((f"CREATE TABLE IF NOT EXISTS {DIFFER_DB}.t (id INT PRIMARY KEY, v INT) "
                    "ENGINE=InnoDB", ()))
    master.execute((f"REPLACE INTO {DIFFER_DB}.t VALUES (1, 1), (2, 2)", ()))
    try:
        wait_replicating(clean.source, master, timeout=60)
        wait_replicating(clean.target, master, timeout=60)
        run = BackgroundClone(clean, clean.info.config_path,
                              env={"HOTCOPY_FAULT": "pause-before:verify"})
        try:
            assert wait_for(lambda: _stopped(run.proc.pid) or run.proc.poll() is not None,
                            timeout=180, interval=0.05), "the clone never reached verify"
            assert run.proc.poll() is None, "the clone ended before verify"
            clean.reconnect()
            assert not has_schema(clean.target, MARKER), "the target is not on the new copy"
            session = clean.target.new_session()
            try:
                session.execute("SET SESSION sql_log_bin = 0")
                session.execute(f"UPDATE {DIFFER_DB}.t SET v = 42 WHERE id = 2")
            finally:
                session.close()
            run.proc.send_signal(signal.SIGCONT)
            code, report, stderr = run.finish()
        finally:
            run.kill()
        assert code == 1, stderr[-3000:]
        assert report["state"] == "rolled-back"
        error = report["error"] or ""
        assert "verification failed" in error and f"{DIFFER_DB}.t" in error, error
        assert "1 table(s) differ" in error, error
        verify_step = next(s for s in report["steps"] if s["name"] == "verify")
        assert verify_step["outcome"] == "failed", verify_step
        assert_rolled_back(clean, run.job_id)
        # The old datadir is back, and it never saw the stray write.
        assert clean.target.scalar((f"SELECT v FROM {DIFFER_DB}.t WHERE id = 2", ())) == 2
    finally:
        clean.reconnect()
        master.execute((f"DROP DATABASE IF EXISTS {DIFFER_DB}", ()))


class Stalls:
    """Freezes a mysqld (SIGSTOP) for 150 ms out of every 200 ms, until ended.

    A query that arrives meanwhile waits for the thaw: every 100 ms probe window then
    has a 90th percentile of tens of milliseconds, far over any limit a baseline of an
    idle server gives, on a machine of any speed. It always ends with the server thawed.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._done.is_set():
                os.kill(self.pid, signal.SIGSTOP)
                time.sleep(0.15)
                os.kill(self.pid, signal.SIGCONT)
                self._done.wait(0.05)
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def end(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        os.kill(self.pid, signal.SIGCONT)


@pytest.mark.parametrize("probe_table", [None, "app.orders"], ids=["default-probe", "table"])
def test_latency_throttle_slows_the_copy_while_the_source_stalls(
        clean: Shard, tmp_path: Path, probe_table: str | None) -> None:
    # The copy is paced from its start (bwlimit, about 4 s of copy), so it cannot be over
    # before the throttle's first decision, 1 s in. The clone stops itself right before
    # the pull: the baseline was taken at the end of serve, on the undisturbed source.
    ceiling_kbps = max(1024, ship_bytes(clean.info, SOURCE) // 1024 // 4)
    config = clean.variant(tmp_path / "paced.toml",
                           f"[transfer]\nmax_source_latency_factor = 20\nzstd_level = 0\n"
                           f"bwlimit_kbps = {ceiling_kbps}\nthrottle_floor_kbps = 1024\n"
                           + (f'latency_probe_table = "{probe_table}"\n' if probe_table else ""))
    pid = control(clean.info, SOURCE).pid()
    assert pid is not None
    run = BackgroundClone(clean, config, env={"HOTCOPY_FAULT": "pause-before:pull"})
    stalls: Stalls | None = None

    def pacing() -> dict[str, Any]:
        return dict(clean.journal().get_job(run.job_id).info.get("pacing") or {})

    try:
        assert wait_for(lambda: _stopped(run.proc.pid) or run.proc.poll() is not None,
                        timeout=120, interval=0.05), "the clone never reached the pull"
        assert run.proc.poll() is None, "the clone ended before the pull"
        stalls = Stalls(pid)
        run.proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: pacing().get("decreases", 0) >= 1 or run.proc.poll() is not None,
                        timeout=60, interval=0.1)
        stalls.end()
        code, report, stderr = run.finish()
    finally:
        if stalls is not None:
            stalls.end()
        run.kill()
    assert code == 0, stderr[-3000:]
    assert report["transfer_method"] == "stream", "auto must pick the method that can pace"
    paced = report["pacing"]
    assert paced["factor"] == 20 and paced["decreases"] >= 1, paced
    limit_ms = paced["limit_ms"]
    ceiling = ceiling_kbps * 1024
    # The decision the stalls caused: a latency over the limit, the pace at most half the
    # ceiling the copy started at.
    over = [(rate, latency) for _, rate, latency in paced["history"] if latency > limit_ms]
    assert over and all(rate is not None and rate <= ceiling / 2 for rate, _ in over), paced
    assert report["pacing_cost_s"] is not None
    assert_cloned(clean, report)
