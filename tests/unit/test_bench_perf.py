"""The benchmark's issue-13 figures: read from a clone's report, medians, the table."""

from __future__ import annotations

from typing import Any

from bench.hotcopy_bench import aggregate, report
from bench.hotcopy_bench.pipelines import summarize_clone

GIB = 1024**3


def _clone_doc(downtime: float, caught_up: float, loaded: bool) -> dict[str, Any]:
    return {"state": "committed", "job": "j", "source_lock_ms": 10.0,
            "target_downtime_ms": downtime, "time_to_caught_up_ms": caught_up,
            "verify_ms": 5.0, "snapshot_drop_ms": 300.0, "buffer_pool_loaded": loaded,
            "dirty_pages_before": 900, "dirty_pages_after": 20,
            "steps": [{"name": "preflush", "ms": 100.0, "detail": "skipped: whatever"},
                      {"name": "catch_up", "ms": 50.0, "started": 9.0, "ended": 10.0}]}


def test_summarize_clone_keeps_the_clones_own_figures() -> None:
    figures = summarize_clone(_clone_doc(1800.0, 9000.0, True), 0.0, 12.0)
    assert figures["target_downtime_ms"] == 1800.0
    assert figures["time_to_caught_up_ms"] == 9000.0
    assert figures["verify_ms"] == 5.0 and figures["snapshot_drop_ms"] == 300.0
    assert figures["buffer_pool_loaded_n"] == 1
    # The report's own counts win over the step detail (which no longer has them
    # when the pre-flush was skipped).
    assert (figures["dirty_pages_before"], figures["dirty_pages_after"]) == (900, 20)


def test_summarize_clone_of_an_older_hotcopy_has_no_downtime() -> None:
    figures = summarize_clone({"state": "committed", "steps": []}, 0.0, 1.0)
    assert figures["target_downtime_ms"] is None and figures["buffer_pool_loaded_n"] is None


def _record(run: int, figures: dict[str, Any], pipeline: str = "hotcopy") -> dict[str, Any]:
    return {"size": GIB, "pipeline": pipeline, "run": run, "ok": True, "figures": figures,
            "impact": {}, "error": None, "unsupported": False}


def test_downtime_table_has_medians_per_pipeline() -> None:
    records = [_record(1, summarize_clone(_clone_doc(1000.0, 8000.0, True), 0.0, 10.0)),
               _record(2, summarize_clone(_clone_doc(3000.0, 9000.0, False), 0.0, 10.0)),
               _record(3, summarize_clone(_clone_doc(2000.0, 7000.0, True), 0.0, 10.0)),
               _record(1, {"e2e_s": 20.0, "target_downtime_ms": 15000.0, "steps_ms": {}},
                       "mariabackup")]
    table = report._downtime(aggregate.group({"records": records}))
    hot = next(line for line in table.splitlines() if "| hotcopy (pre-flush on) |" in line)
    assert "| 2,000 |" in hot and "| 8.0 |" in hot and hot.endswith("| 1.0 |")
    assert any("15,000" in line for line in table.splitlines() if "mariabackup" in line)
