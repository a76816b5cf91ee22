"""The benchmark harness's aggregation, target verdicts and rendering (no servers)."""

from __future__ import annotations

from typing import Any

import pytest
from bench.hotcopy_bench import aggregate, plot, report
from bench.hotcopy_bench.pipelines import summarize_clone

GIB = 1024**3


def _record(size: int, pipeline: str, run: int, figures: dict[str, Any],
            impact: dict[str, Any] | None = None, ok: bool = True,
            error: str | None = None, unsupported: bool = False) -> dict[str, Any]:
    return {"size": size, "pipeline": pipeline, "run": run, "ok": ok, "figures": figures,
            "impact": impact or {}, "error": error, "unsupported": unsupported}


def _clone(e2e: float, lock: float, paused: float, pull_ms: float = 1000.0,
           downtime_ms: float = 900.0, verified: float | None = None) -> dict[str, Any]:
    return {"start": 0.0, "end": e2e, "e2e_s": e2e, "source_lock_ms": lock,
            "source_replication_paused_ms": paused, "literal_bytes": 10**9,
            "transfer_mb_s": 100.0, "steps_ms": {"pull": pull_ms, "catch_up": 500.0},
            "target_downtime_ms": downtime_ms, "verified_s": verified}


def _doc(lock_small: float, lock_large: float, e2e: float, floor: float, mb: float,
         p99_during: float, p99_base: float, downtime_ms: float = 900.0,
         verified: float | None = None) -> dict[str, Any]:
    records = []
    for size, lock in ((GIB, lock_small), (4 * GIB, lock_large)):
        for run, jitter in enumerate((0.9, 1.0, 1.1), start=1):
            records += [
                _record(size, "baseline", run, {"start": 0, "end": 20},
                        {"source_read_p99_ms": p99_base * jitter, "master_tps": 40.0}),
                _record(size, "hotcopy", run, _clone(e2e * jitter, lock * jitter, 300.0,
                                                     downtime_ms=downtime_ms * jitter),
                        {"source_read_p99_ms": p99_during * jitter, "master_tps": 39.0}),
                _record(size, "hotcopy_verified", run,
                        _clone(e2e * jitter, lock, 300.0, verified=(verified or e2e) * jitter)),
                _record(size, "mariabackup", run, {"e2e_s": mb * jitter,
                                                   "block_commit_ms": 250.0,
                                                   "steps_ms": {"backup": 4000.0}}),
                _record(size, "floor", run, {"e2e_s": floor * jitter, "bytes": 10**9,
                                             "on_disk_s": floor * 1.5 * jitter}),
            ]
    records.append(_record(GIB, "hotcopy", 4, {}, ok=False, error="boom"))
    records.append(_record(GIB, "method:rsync_ssh", 1, {}, ok=False, error="cannot be used",
                           unsupported=True))
    return {"records": records,
            "sizes": {str(GIB): {"label": "1G", "ship_bytes": 1.1e9, "ship_files": 200},
                      str(4 * GIB): {"label": "4G", "ship_bytes": 4.2e9, "ship_files": 230}},
            "machine": {"nproc": 2, "mariadb": "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1"},
            "options": {"runs": 3, "method_runs": 3, "write_rate": 40, "read_rate": 200.0,
                        "baseline_s": 20},
            "unsupported_methods": {"rsync_ssh": "needs sshd"}, "finished": 0}


def _verdicts(doc: dict[str, Any]) -> dict[tuple[str, str], aggregate.Verdict]:
    return {(v.target, v.size): v for v in aggregate.targets(aggregate.group(doc))}


def test_group_takes_medians_and_counts_failures() -> None:
    groups = aggregate.group(_doc(30, 30, 20, 18, 40, 10, 8))
    hot = groups[GIB]["hotcopy"]
    assert (hot.ok, hot.failed, hot.errors) == (3, 1, ["boom"])
    assert hot.get("e2e_s") == pytest.approx(20.0)
    assert hot.get("source_read_p99_ms") == pytest.approx(10.0)
    assert hot.steps_ms == {"pull": 1000.0, "catch_up": 500.0}
    assert "method:rsync_ssh" not in groups[GIB]  # unsupported: reported separately


def test_targets_met() -> None:
    verdicts = _verdicts(_doc(30, 32, 20, 18, 40, 10, 8))
    assert all(v.met for v in verdicts.values()), [v for v in verdicts.values() if not v.met]
    assert verdicts[("source_lock_ms flat as data grows", "1G->4G")].measured == "30 -> 32 ms"


def test_downtime_and_verified_clone_are_judged() -> None:
    met = _verdicts(_doc(30, 32, 20, 18, 40, 10, 8, downtime_ms=1500, verified=25))
    assert met[("target downtime (median)", "4G")].met is True
    assert met[("end-to-end with checksum verification vs raw copy floor", "1G")].measured == \
        "25.0 s / 18.0 s = 1.39 x"
    missed = _verdicts(_doc(30, 32, 20, 18, 40, 10, 8, downtime_ms=2500, verified=30))
    assert missed[("target downtime (median)", "1G")].met is False
    assert missed[("end-to-end with checksum verification vs raw copy floor", "4G")].met is False
    grows = _verdicts(_doc(30, 32, 20, 18, 40, 10, 8, downtime_ms=0.0))
    assert grows[("target_downtime_ms flat as data grows", "1G->4G")].met is True


def test_targets_missed() -> None:
    verdicts = _verdicts(_doc(60, 200, 30, 18, 25, 20, 8))
    assert verdicts[("source_lock_ms (median)", "1G")].met is False
    assert verdicts[("source_lock_ms flat as data grows", "1G->4G")].met is False
    assert verdicts[("end-to-end vs raw copy floor", "4G")].met is False
    assert verdicts[("end-to-end vs mariabackup", "4G")].met is False
    assert verdicts[("source read p99 during clone vs without", "1G")].met is False
    assert verdicts[("source_replication_paused_ms (median)", "1G")].met is True


def test_flat_allows_small_absolute_growth() -> None:
    verdicts = _verdicts(_doc(4, 12, 20, 18, 40, 10, 8))  # tripled, but only +8 ms
    assert verdicts[("source_lock_ms flat as data grows", "1G->4G")].met is True


def test_targets_without_data_are_not_judged() -> None:
    doc = {"records": [_record(GIB, "hotcopy", 1, _clone(10, 20, 300))]}
    verdicts = _verdicts(doc)
    assert verdicts[("end-to-end vs raw copy floor", "1G")].met is None
    assert verdicts[("source_lock_ms flat as data grows", "-")].met is None
    assert verdicts[("source_lock_ms (median)", "1G")].met is True


def test_md_table_escapes_pipes() -> None:
    text = report.md_table(["a", "b"], [["x|y", 1], ["z", None]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |", "| z | None |"]


def test_render_has_every_section_and_the_verdicts() -> None:
    text = report.render(_doc(60, 200, 30, 18, 25, 20, 8))
    for heading in ("## Machine", "## Targets", "## 1G: end-to-end and source impact",
                    "## 4G: end-to-end and source impact", "## hotcopy step by step",
                    "## mariabackup step by step", "## Transfer methods",
                    "## Where the time goes", "## Failed runs"):
        assert heading in text
    assert "**missed**" in text
    assert "`rsync_ssh` was not measured: needs sshd" in text
    assert "- 1G hotcopy (pre-flush on): boom" in text
    assert "largest hotcopy steps are pull" in text
    # The floor once more with its copy on disk (sync -f): 27 s = 1.5 x the 18 s floor.
    on_disk = next(line for line in text.splitlines() if "then sync -f (on disk)" in line)
    assert "| 27.0 | 1.50 |" in on_disk, on_disk


def test_summarize_clone() -> None:
    doc = {"state": "committed", "source_lock_ms": 12.5, "source_replication_paused_ms": 250.0,
           "bytes_transferred": 2_000_000_000, "literal_bytes": 2_000_000_000, "catchup_s": 3.0,
           "steps": [
               {"name": "preflush", "started": 100.5, "ended": 101.0, "ms": 500.0,
                "detail": "dirty pages 900 → 12"},
               {"name": "serve", "started": 102.0, "ended": 102.1, "ms": 100.0,
                "detail": "stream on 127.0.0.1:28749"},
               {"name": "pull", "started": 102.1, "ended": 112.1, "ms": 10000.0, "detail": ""},
               {"name": "catch_up", "started": 115.0, "ended": 118.0, "ms": 3000.0,
                "detail": ""},
               {"name": "commit", "started": 118.0, "ended": 119.0, "ms": 1000.0,
                "detail": ""}]}
    figures = summarize_clone(doc, start=100.0, exited=119.5)
    assert figures["e2e_s"] == pytest.approx(18.0)
    assert figures["wall_s"] == pytest.approx(19.5)
    assert figures["transfer_method"] == "stream"
    assert figures["transfer_mb_s"] == pytest.approx(200.0)
    assert (figures["dirty_pages_before"], figures["dirty_pages_after"]) == (900, 12)
    assert figures["steps_ms"]["pull"] == 10000.0
    assert figures["copy_window"] == [102.1, 112.1]


def test_plot_series_one_line_per_pipeline_with_range() -> None:
    lines = plot.series(_doc(30, 30, 20, 18, 40, 10, 8))
    assert set(lines) == {"hotcopy", "hotcopy_verified", "mariabackup", "floor"}
    # The verified clone's line is timed to the end of its verify step.
    assert [p[1] for p in lines["hotcopy_verified"]] == pytest.approx([20.0, 20.0])
    first = lines["hotcopy"][0]
    assert first[0] == pytest.approx(1.1)  # GB shipped
    assert first[1:] == pytest.approx((20.0, 18.0, 22.0))  # median, min, max
    assert [p[0] for p in lines["floor"]] == pytest.approx([1.1, 4.2])


def test_cli_defaults_and_method_sizes() -> None:
    from bench.hotcopy_bench import cli

    quick = cli.options_from(cli.parse_args(["--quick"]))
    assert (quick.sizes, quick.runs, quick.method_sizes) == ([256 * 1024**2], 2, [256 * 1024**2])
    full = cli.options_from(cli.parse_args(["--method-sizes", "all", "--skip", "floor"]))
    assert (full.sizes, full.runs, full.method_runs) == ([GIB, 4 * GIB], 5, 5)
    assert full.method_sizes == [GIB, 4 * GIB]
    assert full.skip == {"floor"}
    assert cli.method_sizes("4G", [GIB, 4 * GIB]) == [4 * GIB]
    with pytest.raises(SystemExit, match="not among"):
        cli.method_sizes("2G", [GIB, 4 * GIB])
    with pytest.raises(SystemExit, match="unknown pipeline"):
        cli.options_from(cli.parse_args(["--skip", "nonsense"]))


def test_read_log_windows(tmp_path: Any) -> None:
    """The reader's log, cut into the copy window and the rest of a run's window."""
    from bench.hotcopy_bench.monitor import ReadLoad

    load = ReadLoad(shard=None, rate=100, logs=tmp_path)  # type: ignore[arg-type]
    lines = [f"{t:.4f} {ms:.3f} {ms + 1:.3f} {ok}" for t, ms, ok in (
        (10.0, 1.0, 1), (11.0, 50.0, 1), (12.0, 60.0, 1), (12.5, 0.0, 0), (13.0, 2.0, 1))]
    load.path.write_text("\n".join(lines) + "\n" + "14.0 3.0")  # last line still being written
    service, response, failed = load.between(10.5, 12.6)
    assert (service, response, failed) == ([50.0, 60.0], [51.0, 61.0], 1)
    assert load.between(0, 100)[0] == [1.0, 50.0, 60.0, 2.0]


def test_the_throttled_clone_is_judged_on_the_read_p99_and_its_cost_reported() -> None:
    doc = _doc(30, 30, 20, 18, 40, 10, 8)
    doc["options"]["latency_factor"] = 1.5
    for run in (1, 2, 3):
        paced = {**_clone(30.0, 14.0, 150.0), "pacing_decreases": 4, "pacing_cost_s": 9.5}
        doc["records"].append(_record(GIB, aggregate.THROTTLED_PIPELINE, run, paced,
                                      {"source_read_p99_ms": 11.0, "master_tps": 40.0}))
    verdicts = _verdicts(doc)
    p99 = verdicts[("source read p99 with the latency throttle vs without clone", "1G")]
    assert p99.met is True and "11.00 ms / 8.00 ms = 1.38 x" in p99.measured
    assert ("source read p99 with the latency throttle vs without clone", "4G") not in verdicts
    text = report.render(doc)
    assert "## Latency throttle on and off" in text
    assert "| 1G | hotcopy, latency throttle on | 3 | 30.0 | 1.50 |" in text
    assert "max_source_latency_factor = 1.5" in text


def test_summarize_clone_carries_what_the_throttle_did() -> None:
    doc = {"state": "committed", "steps": [], "pacing_cost_s": 2.5,
           "pacing": {"decreases": 3, "peak_bytes_s": 40e6}}
    figures = summarize_clone(doc, 0.0, 10.0)
    assert (figures["pacing_cost_s"], figures["pacing_decreases"],
            figures["pacing_peak_mb_s"]) == (2.5, 3, 40.0)


def test_delta_reseeds_are_reported_against_the_full_clone() -> None:
    doc = _doc(30, 30, 20, 18, 40, 10, 8)
    for run in (1, 2, 3):
        for pipeline, sent in (("hotcopy_delta_1pct", 2e7), ("hotcopy_delta_10pct", 1.5e8)):
            figures = {**_clone(10.0, 14.0, 150.0), "bytes_transferred": sent,
                       "rows_changed": 5000}
            doc["records"].append(_record(GIB, pipeline, run, figures))
        doc["records"][-1]["figures"]["e2e_s"] = 12.0
    for record in doc["records"]:
        if record["pipeline"] == "hotcopy" and record["ok"]:
            record["figures"]["bytes_transferred"] = 1e9
    text = report.render(doc)
    assert "## Delta re-seed of a stale replica" in text
    assert "| 1G | hotcopy delta re-seed, target 1 % stale | 3 | 10.0 | 0.50 | 20.0 | 0.020 |" \
        in text
    assert "| 1G | hotcopy delta re-seed, target 10 % stale | 3 | 12.0 | 0.60 | 150.0 | 0.150 |" \
        in text
