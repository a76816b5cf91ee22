"""Review finding 11: the pre-flush gives innodb_max_dirty_pages_pct_lwm back too.

MariaDB lowers innodb_max_dirty_pages_pct_lwm to the new pct when the pct is set to 0,
and leaves it there when the pct is raised again. A clone SIGKILLed right after the
pre-flush, then rolled back, must leave both variables as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hotcopy import config as config_module
from hotcopy.runtime import Runtime
from hotcopy.saga import SqliteJournal
from hotcopy.sandbox import SandboxInfo
from hotcopy.workflows.report import job_report

from .helpers import clone_json, hotcopy, runtime, wait_replicating

SOURCE, TARGET = "replica1", "replica2"
LWM = 50.0


def variables(rt: Runtime) -> tuple[float, float]:
    row = rt.server(SOURCE).one(("SELECT @@GLOBAL.innodb_max_dirty_pages_pct AS pct, "
                                 "@@GLOBAL.innodb_max_dirty_pages_pct_lwm AS lwm", ())) or {}
    return float(row["pct"]), float(row["lwm"])


@pytest.fixture
def rt(sandbox: SandboxInfo) -> Iterator[Runtime]:
    runtime_ = runtime(sandbox)
    source = runtime_.server(SOURCE)
    before = variables(runtime_)
    source.execute(("SET GLOBAL innodb_max_dirty_pages_pct_lwm = %s", (LWM,)))
    master = runtime_.server(sandbox.master)
    master.execute(("CREATE DATABASE IF NOT EXISTS review_preflush", ()))
    master.execute(("CREATE TABLE IF NOT EXISTS review_preflush.t "
                    "(id INT PRIMARY KEY, pad CHAR(200) NOT NULL)", ()))
    # Enough fresh rows that the source has dirty pages for the pre-flush to work on.
    master.execute(("INSERT INTO review_preflush.t SELECT seq, REPEAT('x', 200) "
                    "FROM review_preflush.seq_1_to_30000", ()))
    wait_replicating(source, master)
    yield runtime_
    source.execute(("SET GLOBAL innodb_max_dirty_pages_pct = %s", (before[0],)))
    source.execute(("SET GLOBAL innodb_max_dirty_pages_pct_lwm = %s", (before[1],)))
    master.execute(("DROP DATABASE IF EXISTS review_preflush", ()))
    runtime_.close()


def test_rollback_after_the_preflush_restores_the_lwm(sandbox: SandboxInfo, rt: Runtime,
                                                     tmp_path: Path) -> None:
    pct_before, lwm_before = variables(rt)
    assert lwm_before == LWM and pct_before > LWM
    # The pre-flush must run whatever the checkpoint age: it is what this test is about.
    always = tmp_path / "hotcopy.toml"
    always.write_text(sandbox.config_path.read_text()
                      + "\n[clone]\npreflush_min_checkpoint_age_mb = 0\n")
    proc, _ = clone_json(sandbox, SOURCE, TARGET, env={"HOTCOPY_FAULT": "kill-after:preflush"},
                         config=always)
    assert proc.returncode == -9, proc.stderr[-2000:]
    journal = SqliteJournal(config_module.load(sandbox.config_path).journal_path())
    try:
        job_id = journal.list_jobs(limit=1)[0].id
        step = next(s for s in job_report(journal, job_id)["steps"] if s["name"] == "preflush")
    finally:
        journal.close()
    assert "dirty pages" in step["detail"] and "nothing to do" not in step["detail"], step
    rt.server(SOURCE).close()
    assert variables(rt) == (0.0, 0.0)  # what the killed pre-flush left behind
    done = hotcopy("rollback", "--config", str(sandbox.config_path), job_id)
    assert done.returncode == 0, done.stderr
    rt.server(SOURCE).close()
    # Before the fix: (pct_before, 0.0): the lwm stayed at 0.
    assert variables(rt) == (pct_before, lwm_before)
