"""From raw run records to medians per (size, pipeline), and the targets judged on them.

Pure functions over the results document, so the report can be re-rendered from a
results.json without running anything, and unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.hotcopy_bench import stats

#: The issue's targets.
LOCK_MS_MAX = 50.0
PAUSED_MS_MAX = 1000.0
FLOOR_FACTOR_MAX = 1.25
VERIFIED_FLOOR_FACTOR_MAX = 1.5
READ_P99_FACTOR_MAX = 1.5
DOWNTIME_MS_MAX = 2000.0
#: "Flat as data grows": the largest size's median is within +50% of the smallest's,
#: or within this absolute slack (so noise on a few milliseconds is not called growth).
FLAT_GROWTH_MAX = 0.5
FLAT_SLACK = {"source_lock_ms": 10.0, "source_replication_paused_ms": 100.0,
              "target_downtime_ms": 500.0}

CLONES = ("hotcopy", "hotcopy_nopreflush", "mariabackup")
#: The same clone as "hotcopy" with its journal in etcd (``--journal sqlite,etcd``).
ETCD_PIPELINE = "hotcopy_etcd"
#: The same clone paced by the latency throttle (transfer.max_source_latency_factor).
THROTTLED_PIPELINE = "hotcopy_throttled"
#: Delta re-seeds of a target made 1 % and 10 % stale (bench/hotcopy_bench/delta.py).
DELTA_PIPELINES = ("hotcopy_delta_1pct", "hotcopy_delta_10pct")
#: The same clone with the default verification (checksums of source and target), timed
#: to the end of its verify step ("verified_s").
VERIFIED_PIPELINE = "hotcopy_verified"


@dataclass
class Group:
    size: int
    pipeline: str
    ok: int
    failed: int
    figures: dict[str, float | None]
    impact: dict[str, float | None]
    steps_ms: dict[str, float | None]
    errors: list[str]

    def get(self, key: str) -> float | None:
        if key in self.figures:
            return self.figures[key]
        return self.impact.get(key)


def _numeric_medians(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    keys = {k for row in rows for k, v in row.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}
    return {k: stats.median(row.get(k) for row in rows) for k in sorted(keys)}


def group(doc: dict[str, Any]) -> dict[int, dict[str, Group]]:
    """size -> pipeline -> medians over the runs that succeeded."""
    buckets: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for record in doc.get("records", []):
        if record.get("unsupported"):
            continue  # reported once, from doc["unsupported_methods"]
        buckets.setdefault((int(record["size"]), record["pipeline"]), []).append(record)
    result: dict[int, dict[str, Group]] = {}
    for (size, pipeline), records in sorted(buckets.items()):
        good = [r for r in records if r["ok"]]
        steps = [r["figures"].get("steps_ms") or {} for r in good]
        step_names = list(dict.fromkeys(name for s in steps for name in s))
        result.setdefault(size, {})[pipeline] = Group(
            size=size, pipeline=pipeline, ok=len(good), failed=len(records) - len(good),
            figures=_numeric_medians([r["figures"] for r in good]),
            impact=_numeric_medians([r["impact"] for r in good]),
            steps_ms={name: stats.median(s.get(name) for s in steps) for name in step_names},
            errors=[str(r["error"]) for r in records if not r["ok"]])
    return result


@dataclass
class Verdict:
    target: str
    size: str
    measured: str
    goal: str
    met: bool | None  # None: could not be judged (missing data)

    @property
    def label(self) -> str:
        return {True: "met", False: "**missed**", None: "n/a"}[self.met]


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _flat(groups: dict[int, dict[str, Group]], key: str) -> Verdict:
    sizes = sorted(groups)
    name = f"{key} flat as data grows"
    goal = f"<= +{FLAT_GROWTH_MAX:.0%} (or +{FLAT_SLACK[key]:.0f} ms) smallest->largest"
    if len(sizes) < 2:
        return Verdict(name, "-", "one size only", goal, None)
    first = groups[sizes[0]].get("hotcopy")
    last = groups[sizes[-1]].get("hotcopy")
    low = first.get(key) if first else None
    high = last.get(key) if last else None
    if low is None or high is None:
        return Verdict(name, "-", "n/a", goal, None)
    met = high <= max(low * (1 + FLAT_GROWTH_MAX), low + FLAT_SLACK[key])
    label = f"{stats.size_label(sizes[0])}->{stats.size_label(sizes[-1])}"
    return Verdict(name, label, f"{low:.0f} -> {high:.0f} ms", goal, met)


def targets(groups: dict[int, dict[str, Group]]) -> list[Verdict]:
    verdicts: list[Verdict] = []
    for size in sorted(groups):
        by = groups[size]
        label = stats.size_label(size)
        hot = by.get("hotcopy")
        lock = hot.get("source_lock_ms") if hot else None
        verdicts.append(Verdict("source_lock_ms (median)", label, _fmt(lock, " ms", 1),
                                f"<= {LOCK_MS_MAX:.0f} ms",
                                None if lock is None else lock <= LOCK_MS_MAX))
        paused = hot.get("source_replication_paused_ms") if hot else None
        verdicts.append(Verdict("source_replication_paused_ms (median)", label,
                                _fmt(paused, " ms"), f"<= {PAUSED_MS_MAX:.0f} ms",
                                None if paused is None else paused <= PAUSED_MS_MAX))
        e2e = hot.get("e2e_s") if hot else None
        floor = by["floor"].get("e2e_s") if "floor" in by else None
        r = stats.ratio(e2e, floor)
        verdicts.append(Verdict("end-to-end vs raw copy floor", label,
                                f"{_fmt(e2e, ' s', 1)} / {_fmt(floor, ' s', 1)} = "
                                f"{_fmt(r, ' x', 2)}",
                                f"<= {FLOOR_FACTOR_MAX} x", None if r is None
                                else r <= FLOOR_FACTOR_MAX))
        mb = by["mariabackup"].get("e2e_s") if "mariabackup" in by else None
        r = stats.ratio(e2e, mb)
        verdicts.append(Verdict("end-to-end vs mariabackup", label,
                                f"{_fmt(e2e, ' s', 1)} / {_fmt(mb, ' s', 1)} = "
                                f"{_fmt(r, ' x', 2)}", "< 1 x",
                                None if r is None else r < 1))
        verdicts += _verified_targets(label, by, floor)
        down = hot.get("target_downtime_ms") if hot else None
        verdicts.append(Verdict("target downtime (median)", label, _fmt(down, " ms"),
                                f"<= {DOWNTIME_MS_MAX:.0f} ms",
                                None if down is None else down <= DOWNTIME_MS_MAX))
        during = hot.get("source_read_p99_ms") if hot else None
        base = by["baseline"].get("source_read_p99_ms") if "baseline" in by else None
        r = stats.ratio(during, base)
        verdicts.append(Verdict("source read p99 during clone vs without", label,
                                f"{_fmt(during, ' ms', 2)} / {_fmt(base, ' ms', 2)} = "
                                f"{_fmt(r, ' x', 2)}", f"<= {READ_P99_FACTOR_MAX} x",
                                None if r is None else r <= READ_P99_FACTOR_MAX))
        verdicts += _throttle_targets(label, by)
    verdicts.append(_flat(groups, "source_lock_ms"))
    verdicts.append(_flat(groups, "source_replication_paused_ms"))
    verdicts.append(_flat(groups, "target_downtime_ms"))
    verdicts += journal_targets(groups)
    return verdicts


def _verified_targets(label: str, by: dict[str, Group], floor: float | None) -> list[Verdict]:
    """The default config (checksum verification) to a verified replica, against the floor."""
    checked = by.get(VERIFIED_PIPELINE)
    if checked is None:
        return []
    verified = checked.get("verified_s")
    r = stats.ratio(verified, floor)
    return [Verdict("end-to-end with checksum verification vs raw copy floor", label,
                    f"{_fmt(verified, ' s', 1)} / {_fmt(floor, ' s', 1)} = {_fmt(r, ' x', 2)}",
                    f"<= {VERIFIED_FLOOR_FACTOR_MAX} x",
                    None if r is None else r <= VERIFIED_FLOOR_FACTOR_MAX)]


def _throttle_targets(label: str, by: dict[str, Group]) -> list[Verdict]:
    """With the throttle on: the source's read p99 against the no-clone baseline (what it
    cost is in the report's throttle section: a figure, not a goal)."""
    paced = by.get(THROTTLED_PIPELINE)
    if paced is None:
        return []
    during = paced.get("source_read_p99_ms")
    base = by["baseline"].get("source_read_p99_ms") if "baseline" in by else None
    r = stats.ratio(during, base)
    return [
        Verdict("source read p99 with the latency throttle vs without clone", label,
                f"{_fmt(during, ' ms', 2)} / {_fmt(base, ' ms', 2)} = {_fmt(r, ' x', 2)}",
                f"<= {READ_P99_FACTOR_MAX} x", None if r is None else r <= READ_P99_FACTOR_MAX),
    ]


@dataclass
class JournalRow:
    size: int
    journal: str
    ok: int
    failed: int
    e2e_s: float | None
    source_lock_ms: float | None
    source_replication_paused_ms: float | None
    e2e_vs_sqlite: float | None  # this journal's median end-to-end / SQLite's


def journal_comparison(groups: dict[int, dict[str, Group]]) -> list[JournalRow]:
    """Per size that ran the etcd pipeline: SQLite and etcd side by side (medians)."""
    rows: list[JournalRow] = []
    for size in sorted(groups):
        by = groups[size]
        if ETCD_PIPELINE not in by:
            continue
        sqlite = by.get("hotcopy")
        base = sqlite.get("e2e_s") if sqlite else None
        for journal, g in (("sqlite", sqlite), ("etcd", by[ETCD_PIPELINE])):
            if g is None:
                rows.append(JournalRow(size, journal, 0, 0, None, None, None, None))
                continue
            rows.append(JournalRow(size, journal, g.ok, g.failed, g.get("e2e_s"),
                                   g.get("source_lock_ms"),
                                   g.get("source_replication_paused_ms"),
                                   stats.ratio(g.get("e2e_s"), base)))
    return rows


def _as_today(key: str, sqlite: float | None, etcd: float | None) -> bool | None:
    """Inside the lock and the pause the journal is still written (each step's record
    and undo entry, one quorum write each with etcd), so etcd may lengthen them only
    within the noise SQLite runs show: the flatness rule's bound (+50% or the slack)."""
    if sqlite is None or etcd is None:
        return None
    return etcd <= max(sqlite * (1 + FLAT_GROWTH_MAX), sqlite + FLAT_SLACK[key])


def journal_targets(groups: dict[int, dict[str, Group]]) -> list[Verdict]:
    verdicts: list[Verdict] = []
    for size in sorted(groups):
        by = groups[size]
        if ETCD_PIPELINE not in by:
            continue
        sqlite, etcd = by.get("hotcopy"), by[ETCD_PIPELINE]
        for key in ("source_lock_ms", "source_replication_paused_ms"):
            low = sqlite.get(key) if sqlite else None
            high = etcd.get(key)
            verdicts.append(Verdict(
                f"{key} with the etcd journal as with SQLite", stats.size_label(size),
                f"{_fmt(high, ' ms', 1)} (SQLite {_fmt(low, ' ms', 1)})",
                f"<= +{FLAT_GROWTH_MAX:.0%} (or +{FLAT_SLACK[key]:.0f} ms) of SQLite's",
                _as_today(key, low, high)))
    return verdicts
