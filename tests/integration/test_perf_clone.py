"""Issue 13 on a real shard: what a clone reports about its own cost, and the warm target.

Each test runs real clones (CLI, fresh process) of replica1 onto replica2 of the
session sandbox. The figures are checked against each other and against the
journal's step times, never against a clock budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotcopy.loadgen import seed
from hotcopy.mysql.connection import Connection, connect
from hotcopy.runtime import Runtime
from hotcopy.sandbox import SandboxInfo

from .helpers import (
    clone_json,
    has_schema,
    hotcopy,
    leftovers,
    mark_local,
    runtime,
    stopped,
    wait_for,
    wait_replicating,
)

SOURCE, TARGET = "replica1", "replica2"
HOT = "perf_hot"          # replicated: the table the source's readers keep hot
LOCAL = "perf_dirty"      # the source's own (sql_log_bin = 0): dirties its pages
HOT_ROWS = 20_000


def _session(info: SandboxInfo, name: str) -> Connection:
    return connect(info.address(name), str(info.admin_option_file), read_timeout=120)


def _sql(info: SandboxInfo, name: str, *statements: str, local: bool = False) -> None:
    conn = _session(info, name)
    try:
        if local:
            conn.execute("SET SESSION sql_log_bin = 0")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def _hot_pages(info: SandboxInfo, name: str) -> int:
    conn = _session(info, name)
    try:
        row = conn.one("SELECT COUNT(*) AS n FROM information_schema.INNODB_BUFFER_PAGE "
                       "WHERE TABLE_NAME = %s", (f"`{HOT}`.`hot`",)) or {}
        return int(row["n"])
    finally:
        conn.close()


def _read_hot(info: SandboxInfo) -> None:
    """What the source's clients do: read the whole hot table (twice, so its pages are
    in the buffer pool's young part too)."""
    for _ in range(2):
        _sql(info, SOURCE, f"SELECT COUNT(*), SUM(LENGTH(pad)) FROM {HOT}.hot")


@pytest.fixture(scope="module")
def shard(sandbox: SandboxInfo) -> Iterator[tuple[SandboxInfo, Runtime]]:
    rt = runtime(sandbox)
    master = rt.server(sandbox.master)
    seed(sandbox.address(sandbox.master), rt.config.mysql.option_file, 20_000)
    _sql(sandbox, sandbox.master, f"DROP DATABASE IF EXISTS {HOT}", f"CREATE DATABASE {HOT}",
         f"CREATE TABLE {HOT}.hot (id INT PRIMARY KEY, pad CHAR(200) NOT NULL) ENGINE=InnoDB",
         f"INSERT INTO {HOT}.hot SELECT seq, REPEAT(CHAR(65 + seq % 26), 200) "
         f"FROM {HOT}.seq_1_to_{HOT_ROWS}")
    for name in sandbox.replicas:
        wait_replicating(rt.server(name), master)
    yield sandbox, rt
    _sql(sandbox, sandbox.master, f"DROP DATABASE IF EXISTS {HOT}")
    for name in (SOURCE, TARGET):
        _sql(sandbox, name, f"DROP DATABASE IF EXISTS {LOCAL}", local=True)
    rt.close()


def _variant(info: SandboxInfo, tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "hotcopy.toml"
    path.write_text(info.config_path.read_text() + "\n" + extra + "\n")
    return path


def _step(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["name"] == name)


def _show_text(info: SandboxInfo, job: str) -> str:
    shown = hotcopy("show", "--config", str(info.config_path), job)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def _dump_buffer_pool_now(info: SandboxInfo, name: str) -> None:
    def status() -> str:
        return str(_session_scalar(info, name, "SELECT VARIABLE_VALUE FROM "
                                   "information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = "
                                   "'INNODB_BUFFER_POOL_DUMP_STATUS'"))

    before = status()
    pct = int(_session_scalar(info, name, "SELECT @@GLOBAL.innodb_buffer_pool_dump_pct"))
    started = time.monotonic()
    _sql(info, name, "SET GLOBAL innodb_buffer_pool_dump_pct = 100",
         "SET GLOBAL innodb_buffer_pool_dump_now = ON")

    def done() -> bool:
        # The status names the second the dump completed: unchanged only when the
        # previous one completed in that same second.
        now = status()
        return now.startswith("Buffer pool(s) dump completed") and (
            now != before or time.monotonic() - started > 1.5)

    try:
        assert wait_for(done, timeout=30), f"{name}: buffer pool dump: {status()}"
    finally:
        _sql(info, name, f"SET GLOBAL innodb_buffer_pool_dump_pct = {pct}")


def _checkpoint(info: SandboxInfo, name: str) -> None:
    """Every dirty page of name written and its checkpoint past them (nothing writes in
    this module's shard meanwhile), bounded; its page-flushing settings put back."""
    pct, lwm = (_session_scalar(info, name, f"SELECT @@GLOBAL.{v}") for v in
                ("innodb_max_dirty_pages_pct", "innodb_max_dirty_pages_pct_lwm"))

    def status(variable: str) -> int:
        return int(_session_scalar(info, name, "SELECT VARIABLE_VALUE FROM information_schema"
                                   f".GLOBAL_STATUS WHERE VARIABLE_NAME = '{variable}'"))

    _sql(info, name, "SET GLOBAL innodb_max_dirty_pages_pct = 0")
    try:
        assert wait_for(lambda: status("INNODB_BUFFER_POOL_PAGES_DIRTY") == 0
                        and status("INNODB_CHECKPOINT_AGE") < 64 * 1024, timeout=60), \
            f"{name}: dirty pages or checkpoint age stayed up"
    finally:
        _sql(info, name, f"SET GLOBAL innodb_max_dirty_pages_pct = {float(pct)}",
             f"SET GLOBAL innodb_max_dirty_pages_pct_lwm = {float(lwm)}")


def test_warm_target_holds_the_sources_hot_pages_cold_one_does_not(
        shard: tuple[SandboxInfo, Runtime], tmp_path: Path) -> None:
    info, _ = shard
    # Cold first, with a current list of the source's hot pages in its datadir (as its
    # own shutdown or an earlier clone's dump leaves one): a cold clone must not ship it.
    _read_hot(info)
    source_pages = _hot_pages(info, SOURCE)
    assert source_pages > 100, "the hot table must be in the source's buffer pool"
    _dump_buffer_pool_now(info, SOURCE)
    # The hot table was just written: a target recovering from a snapshot whose redo
    # since the checkpoint still holds those writes reads every page they touched into
    # its buffer pool, warm list or not (296 of 296 pages, twice, on a slow disk). So the
    # source checkpoints past them first, whatever the clone's pre-flush then does.
    _checkpoint(info, SOURCE)
    cold_config = _variant(info, tmp_path, '[clone]\nverify = "catchup"\nwarm_target = false')
    proc, cold = clone_json(info, SOURCE, TARGET, config=cold_config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cold["buffer_pool_dump"] == "skipped"
    assert cold["buffer_pool_loaded"] is False
    assert "clone.warm_target = false" in _step(cold, "dump_buffer_pool")["detail"]
    cold_pages = _hot_pages(info, TARGET)

    _read_hot(info)
    source_pages = _hot_pages(info, SOURCE)
    pct_before = _session_scalar(info, SOURCE, "SELECT @@GLOBAL.innodb_buffer_pool_dump_pct")
    warm_config = _variant(info, tmp_path, '[clone]\nverify = "catchup"')
    proc, warm = clone_json(info, SOURCE, TARGET, config=warm_config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert warm["buffer_pool_dump"] == "dumped"
    assert warm["buffer_pool_loaded"] is True, warm["buffer_pool_load_status"]
    assert warm["buffer_pool_load_status"].startswith("Buffer pool(s) load completed")
    warm_pages = _hot_pages(info, TARGET)

    # The warm target holds (nearly) every page the source had of the hot table; the
    # cold one only what opening the table reads (its root and header pages).
    assert warm_pages >= 0.8 * source_pages, (warm_pages, source_pages)
    assert cold_pages <= 0.1 * source_pages, (cold_pages, source_pages)
    # The dump percentage was raised for the dump only, and put back (journaled undo).
    assert _session_scalar(info, SOURCE,
                           "SELECT @@GLOBAL.innodb_buffer_pool_dump_pct") == pct_before
    assert any(u["action"] == "mysql.set_global" and u["step"] == "dump_buffer_pool"
               and u["state"] == "done" for u in warm["undo"])
    assert "warm target: buffer pool list dumped; loaded" in _show_text(info, warm["job"])
    assert leftovers(info) == []


def _session_scalar(info: SandboxInfo, name: str, sql: str) -> Any:
    conn = _session(info, name)
    try:
        row = conn.one(sql) or {}
        return next(iter(row.values()))
    finally:
        conn.close()


def test_clone_reports_downtime_catch_up_verify_and_preflush(
        shard: tuple[SandboxInfo, Runtime], tmp_path: Path) -> None:
    info, _ = shard
    _sql(info, SOURCE, f"DROP DATABASE IF EXISTS {LOCAL}", f"CREATE DATABASE {LOCAL}",
         f"CREATE TABLE {LOCAL}.t (id INT PRIMARY KEY, pad CHAR(200) NOT NULL) ENGINE=InnoDB",
         f"INSERT INTO {LOCAL}.t SELECT seq, 'x' FROM {LOCAL}.seq_1_to_60000", local=True)
    # The clone stops itself (SIGSTOP) just before its pre-flush; the source's pages are
    # dirtied then (a local table: the master never sees it) and the clone continues at
    # once, so the pre-flush finds them dirty whatever the page cleaner did before.
    # Whatever redo the update leaves since the checkpoint, the pre-flush runs: this
    # test is about what it does, not about when it pays.
    always = _variant(info, tmp_path, "[clone]\npreflush_min_checkpoint_age_mb = 0")
    proc, report = _clone_dirtying_first(info, always)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["state"] == "committed"

    # Downtime: from asking the old mysqld to stop to the new one answering, so it lies
    # within the stop..start steps and covers at least the swap between them.
    stop, swap, start = (_step(report, n) for n in ("stop_target", "swap_datadir",
                                                    "start_target"))
    downtime = report["target_downtime_ms"]
    assert (swap["ended"] - stop["ended"]) * 1000 - 1 <= downtime
    assert downtime <= (start["ended"] - stop["started"]) * 1000 + 1

    # Caught up: measured from the job's creation to the end of catch_up; verify's cost
    # comes after it and is reported apart.
    catch_up, verify = _step(report, "catch_up"), _step(report, "verify")
    caught_up = report["time_to_caught_up_ms"]
    assert caught_up <= (catch_up["ended"] - report["created"]) * 1000 + 1
    assert caught_up >= (catch_up["started"] - report["created"]) * 1000 - 1
    assert 0 < report["verify_ms"] <= verify["ms"] + 1
    assert report["verified"] == "checksum"

    # Source and target were checksummed at the same time: each side started before
    # the other one ended.
    spans = next(s for s in _steps_outputs(info, report["job"]) if "checksum_spans" in s)
    src, tgt = spans["checksum_spans"]["source"], spans["checksum_spans"]["target"]
    assert src[0] < tgt[1] and tgt[0] < src[1], spans

    # The pre-flush had dirty pages to flush, flushed some, and says how it stopped.
    assert report["dirty_pages_before"] > 64
    assert report["dirty_pages_after"] < report["dirty_pages_before"]
    assert report["preflush_outcome"] in ("done", "stalled", "timeout")
    assert report["preflush_reason"]

    # The snapshot was dropped in the background, and its undo entries were marked
    # done (run), not dropped unrun, only once the drop had finished.
    names = [s["name"] for s in report["steps"]]
    assert names.index("swap_datadir") < names.index("drop_snapshot") < \
        names.index("start_target") < names.index("catch_up") < \
        names.index("finish_drop") < names.index("commit")
    dropped = [u for u in report["undo"] if u["step"] in ("serve", "snapshot")]
    assert {u["action"] for u in dropped} >= {"snapshot.btrfs.destroy"}
    assert all(u["state"] == "done" for u in dropped), dropped
    assert report["snapshot_drop_ms"] > 0
    assert leftovers(info) == []

    # The new datadir was written back to disk before the commit let the old one go.
    commit = next(s for s in _steps_outputs(info, report["job"]) if "old_datadir_kept" in s)
    assert commit["datadir_flush_ms"] >= 0, commit

    text = _show_text(info, report["job"])
    assert "target downtime:" in text and "caught up after:" in text and "verify:" in text
    assert "pre-flush: dirty pages" in text
    assert "new datadir flushed to disk in" in text


def _clone_dirtying_first(info: SandboxInfo, config: Path) -> tuple[
        subprocess.CompletedProcess[str], dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "HOTCOPY_FAULT"}
    env["HOTCOPY_FAULT"] = "pause-before:preflush"
    child = subprocess.Popen([sys.executable, "-m", "hotcopy", "clone", "--config",
                              str(config), "--source", SOURCE, "--target", TARGET,
                              "--yes", "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert wait_for(lambda: stopped(child.pid) or child.poll() is not None,
                        timeout=120, interval=0.05), "the clone never reached the pre-flush"
        assert child.poll() is None, "the clone ended before its pre-flush"
        _sql(info, SOURCE, f"UPDATE {LOCAL}.t SET pad = REPEAT('y', 200)", local=True)
        os.kill(child.pid, signal.SIGCONT)
        out, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    return proc, json.loads(out) if out.strip() else {}


def _steps_outputs(info: SandboxInfo, job: str) -> list[dict[str, Any]]:
    from hotcopy.saga import SqliteJournal

    journal = SqliteJournal(runtime(info).config.journal_path())
    return [dict(record.outputs) for record in journal.steps(job)]


def test_killed_during_the_background_drop_the_snapshot_undo_is_still_owed(
        shard: tuple[SandboxInfo, Runtime]) -> None:
    info, rt = shard
    target = rt.server(TARGET)
    mark_local(target, "perf_marker_old_target")
    proc, _ = clone_json(info, SOURCE, TARGET, env={"HOTCOPY_FAULT": "kill-after:drop_snapshot"})
    assert proc.returncode == -9, proc.stderr[-3000:]
    jobs = json.loads(hotcopy("jobs", "--config", str(info.config_path), "--json").stdout)
    job = jobs[0]["job"]
    shown = json.loads(hotcopy("show", "--config", str(info.config_path), job,
                               "--json").stdout)
    # Whether or not the thread had destroyed it when the process died, the journal
    # still owes the snapshot's destruction: it is marked done only after the drop.
    owed = {u["action"] for u in shown["outstanding_undo"]}
    assert "snapshot.btrfs.destroy" in owed, shown["outstanding_undo"]
    back = hotcopy("rollback", "--config", str(info.config_path), job, "--json")
    assert back.returncode == 0, back.stderr[-3000:]
    assert json.loads(back.stdout)["state"] == "rolled-back"
    target.close()
    wait_replicating(target, rt.server(info.master))
    assert has_schema(target, "perf_marker_old_target"), "target must be on its old datadir"
    assert leftovers(info) == []
    _sql(info, TARGET, "DROP DATABASE IF EXISTS perf_marker_old_target", local=True)
