"""results.md: the targets, the side-by-side tables, and where the time goes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench.hotcopy_bench import stats
from bench.hotcopy_bench.aggregate import (
    CLONES,
    DELTA_PIPELINES,
    ETCD_PIPELINE,
    THROTTLED_PIPELINE,
    VERIFIED_PIPELINE,
    Group,
    Verdict,
    group,
    journal_comparison,
    targets,
)

PIPELINE_NAMES = {
    "hotcopy": "hotcopy (pre-flush on)",
    "hotcopy_nopreflush": "hotcopy (pre-flush off)",
    ETCD_PIPELINE: "hotcopy (pre-flush on), etcd journal",
    THROTTLED_PIPELINE: "hotcopy, latency throttle on",
    VERIFIED_PIPELINE: "hotcopy, checksum verification (the default)",
    "hotcopy_delta_1pct": "hotcopy delta re-seed, target 1 % stale",
    "hotcopy_delta_10pct": "hotcopy delta re-seed, target 10 % stale",
    "mariabackup": "mariabackup stream + prepare + move-back",
    "floor": "raw copy floor (tar | tar, cold cache)",
    "baseline": "no clone (baseline)",
}


def pipeline_name(pipeline: str) -> str:
    if pipeline.startswith("method:"):
        return f"hotcopy --transfer {pipeline.split(':', 1)[1]}"
    return PIPELINE_NAMES.get(pipeline, pipeline)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are str()-ed and pipes escaped."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def num(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:,.{digits}f}"


def _machine(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    rows = [("CPU", f"{m.get('nproc')} x {m.get('cpu')}"),
            ("memory", f"{(m.get('memory_bytes') or 0) / 1024**3:.1f} GiB"),
            ("disk", m.get("disk")), ("kernel", m.get("kernel")), ("OS", m.get("os")),
            ("MariaDB", m.get("mariadb")), ("mariabackup", m.get("mariabackup")),
            ("sysbench", m.get("sysbench")), ("rsync", m.get("rsync")),
            ("load average at start", " ".join(str(x) for x in m.get("loadavg_at_start", [])))]
    return md_table(["", ""], rows)


def _labels(sizes: object) -> str:
    if not isinstance(sizes, list) or not sizes:
        return "n/a"
    return ", ".join(stats.size_label(int(s)) for s in sizes)


def _setup(doc: dict[str, Any]) -> str:
    o = doc.get("options", {})
    code = doc.get("code", {})
    sizes = doc.get("sizes", {})
    shipped = ", ".join(f"{v['label']}: {v['ship_bytes'] / 1e9:.2f} GB in {v['ship_files']} files"
                        for v in sizes.values())
    return (
        f"Code: commit {code.get('commit')}"
        f"{' plus uncommitted changes in src/' if code.get('src_dirty') else ''}. "
        f"Runs per pipeline and size: {o.get('runs')} (other transfer methods: "
        f"{o.get('method_runs')}, at {_labels(o.get('method_sizes'))}); every figure is "
        "the median over those runs. "
        f"Harness duration: {doc.get('duration_s', 0) / 60:.1f} min.\n\n"
        "Shard: a hotcopy sandbox (master, replica1 = source, replica2 = target; each "
        "datadir a btrfs subvolume on its own loop-mounted image, all on one host). "
        f"Data shipped per size: {shipped}. "
        f"During every run: `sysbench oltp_write_only --rate={o.get('write_rate')}` on the "
        f"master, and {o.get('read_rate'):.0f} point selects/s against the source (one "
        "client, latency per query). Before each run both replicas are caught up and the "
        "page cache is dropped (`echo 3 > /proc/sys/vm/drop_caches`). hotcopy runs with "
        "`clone.verify = \"catchup\"`: like mariabackup's, its end-to-end time stops when "
        "the target has caught up with the master. The baseline is the same load for "
        f"{o.get('baseline_s')} s with no clone."
    )


def _summary(size: int, by: dict[str, Group]) -> str:
    floor = by["floor"].get("e2e_s") if "floor" in by else None
    rows = []
    order = [*CLONES, VERIFIED_PIPELINE, ETCD_PIPELINE, THROTTLED_PIPELINE, *DELTA_PIPELINES,
             *sorted(p for p in by if p.startswith("method:")), "floor"]
    for pipeline in order:
        g = by.get(pipeline)
        if g is None:
            continue
        block = g.get("source_lock_ms") if pipeline != "mariabackup" else g.get("block_commit_ms")
        shipped = g.get("literal_bytes") or g.get("bytes")
        rate = g.get("transfer_mb_s") or g.get("mb_s")
        stopped = None if pipeline == "floor" else g.get("source_sql_stopped_ms")
        rows.append([pipeline_name(pipeline), f"{g.ok}" + (f" ({g.failed} failed)"
                                                           if g.failed else ""),
                     num(g.get("e2e_s")), num(stats.ratio(g.get("e2e_s"), floor), 2),
                     num(g.get("verified_s")) if pipeline == VERIFIED_PIPELINE else "-",
                     num(block) if pipeline != "floor" else "-",
                     num(g.get("source_replication_paused_ms"), 0),
                     num(stopped, 0),
                     num(shipped, 2, 1e-9), num(rate, 0)])
        on_disk = g.get("on_disk_s") if pipeline == "floor" else None
        if on_disk is not None:
            rows.append([f"{pipeline_name(pipeline)}, then sync -f (on disk)", f"{g.ok}",
                         num(on_disk), num(stats.ratio(on_disk, floor), 2), "-", "-", "n/a",
                         "n/a", num(shipped, 2, 1e-9), num(shipped / on_disk / 1e6 if shipped
                                                           else None, 0)])
    return md_table(["pipeline", "runs", "end-to-end s", "x floor", "verified s",
                     "source write block ms",
                     "SQL thread paused ms (self-reported)", "SQL thread stopped ms (polled)",
                     "GB shipped", "copy MB/s"], rows)


def _impact(by: dict[str, Group]) -> str:
    base = by.get("baseline")
    base_p99 = base.get("source_read_p99_ms") if base else None
    base_tps = base.get("master_tps") if base else None
    rows = []
    for pipeline in ["baseline", *CLONES, THROTTLED_PIPELINE, "floor"]:
        g = by.get(pipeline)
        if g is None:
            continue
        rows.append([pipeline_name(pipeline), num(g.get("master_tps")),
                     num(stats.ratio(g.get("master_tps"), base_tps), 2),
                     num(g.get("write_lat_p99_ms_max")),
                     f"{num(g.get('source_lag_trx_max'), 0)} / {num(g.get('source_lag_s_max'), 0)}",
                     f"{num(g.get('source_read_p50_ms'), 2)} / "
                     f"{num(g.get('source_read_p99_ms'), 2)}",
                     num(stats.ratio(g.get("source_read_p99_ms"), base_p99), 2),
                     f"{num(g.get('source_read_p99_copy_ms'), 1)} / "
                     f"{num(g.get('source_read_p99_rest_ms'), 1)}",
                     num(g.get("loadavg_1m"), 1)])
    return md_table(["during", "master tps (sysbench, median of 1 s)", "x baseline",
                     "master write p99 ms (worst 1 s)",
                     "source lag max (trx / s)", "source read p50 / p99 ms", "p99 x baseline",
                     "read p99 ms while copying / rest", "machine load avg"], rows)


def _steps(groups: dict[int, dict[str, Group]]) -> str:
    columns = [(size, p) for size in sorted(groups) for p in ("hotcopy", "hotcopy_nopreflush")
               if p in groups[size]]
    names = list(dict.fromkeys(n for s, p in columns for n in groups[s][p].steps_ms))
    rows = [[name, *(num(groups[s][p].steps_ms.get(name), 0) for s, p in columns)]
            for name in names]
    headers = ["step (median ms)", *(f"{stats.size_label(s)} "
                                     f"{'pre-flush' if p == 'hotcopy' else 'no pre-flush'}"
                                     for s, p in columns)]
    return md_table(headers, rows)


def _preflush(groups: dict[int, dict[str, Group]]) -> str:
    rows = []
    for size in sorted(groups):
        on, off = groups[size].get("hotcopy"), groups[size].get("hotcopy_nopreflush")
        if on is None or off is None:
            continue
        rows.append([stats.size_label(size), num(on.steps_ms.get("preflush"), 0),
                     f"{num(on.get('dirty_pages_before'), 0)} -> "
                     f"{num(on.get('dirty_pages_after'), 0)}",
                     num(on.steps_ms.get("start_target"), 0),
                     num(off.steps_ms.get("start_target"), 0),
                     num(on.get("e2e_s")), num(off.get("e2e_s"))])
    return md_table(["size", "pre-flush step ms", "dirty pages before -> after",
                     "target start ms (pre-flush on)", "target start ms (off)",
                     "end-to-end s (on)", "end-to-end s (off)"], rows)


def _downtime(groups: dict[int, dict[str, Group]]) -> str:
    """Issue 13: the target's downtime, time to a caught-up target, verify apart."""
    rows = []
    for size in sorted(groups):
        for pipeline, g in groups[size].items():
            if g.get("target_downtime_ms") is None:
                continue
            rows.append([stats.size_label(size), pipeline_name(pipeline),
                         num(g.get("target_downtime_ms"), 0),
                         num(g.get("time_to_caught_up_ms"), 1, 1e-3),
                         num(g.get("verify_ms"), 0), num(g.get("snapshot_drop_ms"), 0),
                         num(g.get("buffer_pool_loaded_n"), 1)])
    return md_table(["size", "pipeline", "target downtime ms (median)",
                     "job to caught up s", "verify ms", "snapshot drop ms (off the path)",
                     "buffer pool list loaded (1 = yes, median of runs)"], rows)


def _mariabackup(groups: dict[int, dict[str, Group]]) -> str:
    steps = ["backup", "prepare", "stop_target", "move_back", "start_target", "change_master",
             "catch_up"]
    rows = []
    for size in sorted(groups):
        g = groups[size].get("mariabackup")
        if g is None:
            continue
        rows.append([stats.size_label(size), *(num(g.steps_ms.get(s), 0, 1) for s in steps),
                     num(g.get("block_commit_ms"), 0), num(g.get("block_commit_log_s"), 0),
                     num(g.get("sql_thread_stopped_log_ms"), 0),
                     num(g.get("source_sql_stopped_ms"), 0)])
    return md_table(["size", "backup + stream ms", "prepare ms", "stop target ms",
                     "move-back ms", "start ms", "CHANGE MASTER ms", "catch-up ms",
                     "BLOCK_COMMIT ms (line arrival)", "BLOCK_COMMIT s (log stamps)",
                     "SQL thread stopped ms (log)", "SQL thread stopped ms (polled)"], rows)


def _methods(groups: dict[int, dict[str, Group]], unsupported: dict[str, str]) -> str:
    rows = []
    for size in sorted(groups):
        for pipeline, g in groups[size].items():
            if pipeline != "hotcopy" and not pipeline.startswith("method:"):
                continue
            method = g.pipeline.split(":", 1)[1] if ":" in pipeline else "auto"
            rows.append([stats.size_label(size), method, g.ok, num(g.get("transfer_mb_s"), 0),
                         num(g.steps_ms.get("pull"), 0), num(g.get("e2e_s"))])
    text = md_table(["size", "--transfer", "runs", "MB/s (pull)", "pull ms", "end-to-end s"],
                    rows)
    for method, reason in sorted(unsupported.items()):
        text += f"\n\n`{method}` was not measured: {reason}"
    return text


def _journals(doc: dict[str, Any], groups: dict[int, dict[str, Group]]) -> str:
    """``--journal sqlite,etcd``: the same clone with each journal, runs interleaved."""
    etcd = doc.get("etcd") or {}
    rows = [[stats.size_label(r.size), r.journal,
             f"{r.ok}" + (f" ({r.failed} failed)" if r.failed else ""), num(r.e2e_s),
             num(r.e2e_vs_sqlite, 3), num(r.source_lock_ms, 1),
             num(r.source_replication_paused_ms, 0)]
            for r in journal_comparison(groups)]
    return (f"etcd: {etcd.get('members', '?')} members on this host (loopback, data on "
            "the work directory's filesystem); every journal write is a quorum write. "
            "SQLite: the sandbox's journal file. Same clone (pre-flush on, verify = "
            "catchup), runs interleaved with the other pipelines.\n\n"
            + md_table(["size", "journal", "runs", "end-to-end s (median)",
                        "x SQLite", "source_lock_ms", "source_replication_paused_ms"], rows))


def _delta(groups: dict[int, dict[str, Group]]) -> str:
    """Delta re-seeds of a stale target beside the full clone of the same round."""
    rows = []
    for size in sorted(groups):
        by = groups[size]
        full = by.get("hotcopy")
        for pipeline in ("hotcopy", *DELTA_PIPELINES):
            g = by.get(pipeline)
            if g is None:
                continue
            sent = g.get("bytes_transferred")
            rows.append([stats.size_label(size), pipeline_name(pipeline), g.ok,
                         num(g.get("e2e_s")),
                         num(stats.ratio(g.get("e2e_s"), full.get("e2e_s") if full else None),
                             2),
                         num(sent, 1, 1e-6),
                         num(stats.ratio(sent, full.get("bytes_transferred") if full else None),
                             3),
                         num(g.get("transfer_s"), 1), num(g.get("rows_changed"), 0)])
    return ("Each delta run follows the round's full clone (the target is a physical copy "
            "of the source), stops the target's replication and rewrites a contiguous "
            "share of every table's rows on the master; `clone.delta = \"on\"`. Bytes sent "
            "are rsync's (data and checksums over the wire).\n\n"
            + md_table(["size", "pipeline", "runs", "end-to-end s", "x full", "MB sent",
                        "sent x full", "copy s", "rows rewritten"], rows))


def _throttle(doc: dict[str, Any], groups: dict[int, dict[str, Group]]) -> str:
    """The clone with transfer.max_source_latency_factor beside the default one."""
    factor = (doc.get("options") or {}).get("latency_factor")
    rows = []
    for size in sorted(groups):
        by = groups[size]
        base = by.get("baseline")
        base_p99 = base.get("source_read_p99_ms") if base else None
        hot = by.get("hotcopy")
        for pipeline in ("hotcopy", THROTTLED_PIPELINE):
            g = by.get(pipeline)
            if g is None:
                continue
            rows.append([stats.size_label(size), pipeline_name(pipeline), g.ok,
                         num(g.get("e2e_s")),
                         num(stats.ratio(g.get("e2e_s"), hot.get("e2e_s") if hot else None), 2),
                         num(g.get("transfer_mb_s"), 0),
                         f"{num(g.get('source_read_p99_copy_ms'), 1)} / "
                         f"{num(g.get('source_read_p99_rest_ms'), 1)}",
                         num(stats.ratio(g.get("source_read_p99_ms"), base_p99), 2),
                         num(g.get("pacing_decreases"), 0), num(g.get("pacing_cost_s"), 1)])
    return (f"`transfer.max_source_latency_factor = {factor}`: the copy (stream, the only "
            "method that can change its rate while it runs) is paced by AIMD on the "
            "source's probe latency. Cost as hotcopy reports it: the copy's time against "
            "the same bytes at its fastest rate.\n\n"
            + md_table(["size", "pipeline", "runs", "end-to-end s", "x default", "copy MB/s",
                        "source read p99 ms while copying / rest", "p99 x baseline",
                        "slow-downs", "cost reported s"], rows))


def _where_time_goes(groups: dict[int, dict[str, Group]], verdicts: list[Verdict]) -> str:
    notes: list[str] = []
    missed = {v.target for v in verdicts if v.met is False}
    for size in sorted(groups):
        hot = groups[size].get("hotcopy")
        if hot is None:
            continue
        label = stats.size_label(size)
        if any(t.startswith("end-to-end") for t in missed):
            total = sum(v or 0 for v in hot.steps_ms.values())
            top = sorted(hot.steps_ms.items(), key=lambda kv: -(kv[1] or 0))[:5]
            share = ", ".join(f"{name} {(ms or 0) / 1000:.1f} s ({(ms or 0) / total:.0%})"
                              for name, ms in top) if total else "n/a"
            notes.append(f"- {label} end-to-end: the largest hotcopy steps are {share}.")
        if "source_lock_ms (median)" in missed:
            held = ["lock_source", "record_position", "snapshot", "release_source"]
            notes.append(f"- {label} write lock: it spans " + ", ".join(
                f"{s} {num(hot.steps_ms.get(s), 0)} ms" for s in held) + " (step medians).")
        if "source read p99 during clone vs without" in missed:
            base = groups[size].get("baseline")
            notes.append(
                f"- {label} source reads: p99 {num(hot.get('source_read_p99_copy_ms'))} ms "
                f"while the pull reads the snapshot, "
                f"{num(hot.get('source_read_p99_rest_ms'))} ms during the rest of the clone, "
                f"{num(base.get('source_read_p99_ms') if base else None)} ms without a clone.")
        if "source_replication_paused_ms (median)" in missed:
            paused = ["stop_sql_thread", "lock_source", "record_position", "snapshot",
                      "release_source"]
            notes.append(f"- {label} replication pause: " + ", ".join(
                f"{s} {num(hot.steps_ms.get(s), 0)} ms" for s in paused) + ".")
    return "\n".join(notes) if notes else "Every target that could be judged was met."


def render(doc: dict[str, Any]) -> str:
    groups = group(doc)
    verdicts = targets(groups)
    parts = [
        "# hotcopy benchmark results",
        f"Generated by `scripts/bench` on "
        f"{time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(doc.get('finished', 0)))}; "
        "raw figures for every run in results.json, plot in time_vs_size.png.",
        "## Machine", _machine(doc),
        "## Setup", _setup(doc),
        "## Targets", md_table(["target", "size", "measured (median)", "goal", "verdict"],
                               [[v.target, v.size, v.measured, v.goal, v.label]
                                for v in verdicts]),
    ]
    for size in sorted(groups):
        label = stats.size_label(size)
        parts += [f"## {label}: end-to-end and source impact", _summary(size, groups[size]),
                  f"### {label}: the shard while each pipeline runs", _impact(groups[size])]
    if journal_comparison(groups):
        parts += ["## Journal: etcd against SQLite", _journals(doc, groups)]
    if any(p in by for by in groups.values() for p in DELTA_PIPELINES):
        parts += ["## Delta re-seed of a stale replica", _delta(groups)]
    if any(THROTTLED_PIPELINE in by for by in groups.values()):
        parts += ["## Latency throttle on and off", _throttle(doc, groups)]
    parts += ["## hotcopy step by step", _steps(groups),
              "## Target start (InnoDB crash recovery) with and without the pre-flush",
              _preflush(groups),
              "## Target downtime, time to caught up, verification apart", _downtime(groups),
              "## mariabackup step by step", _mariabackup(groups),
              "## Transfer methods", _methods(groups, doc.get("unsupported_methods", {})),
              "## Where the time goes", _where_time_goes(groups, verdicts)]
    failures = [f"- {stats.size_label(g.size)} {pipeline_name(g.pipeline)}: {e}"
                for by in groups.values() for g in by.values() for e in g.errors]
    if failures:
        parts += ["## Failed runs", "\n".join(failures)]
    return "\n\n".join(parts) + "\n"
