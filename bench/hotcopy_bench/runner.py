"""One harness run: build the shard, and for each data size measure every pipeline N times.

Pipelines are interleaved run by run (baseline, hotcopy, hotcopy without pre-flush,
mariabackup, raw copy, other transfer methods; then again), so a neighbour's burst of
CPU on this shared machine spreads over all of them instead of hitting one. Before
each measurement both replicas are caught up and the page cache is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.hotcopy_bench import delta, machine, pipelines, stats
from bench.hotcopy_bench.mariabackup import mariabackup_clone
from bench.hotcopy_bench.monitor import Monitors
from bench.hotcopy_bench.shard import Shard, drop_caches, image_size_for
from hotcopy.sandbox.etcd import EtcdCluster
from hotcopy.transfer import base as transfer_base

log = logging.getLogger(__name__)

WARMUP_S = 10
ETCD_MEMBERS = 3
SETTLE_TIMEOUT_S = 900


@dataclass
class Options:
    sizes: list[int]
    runs: int
    method_runs: int
    method_sizes: list[int]  # extra transfer methods are measured at these sizes only
    transfers: list[str] | None  # None: every method present in src/hotcopy/transfer/
    write_rate: int
    read_rate: float
    baseline_s: float
    workdir: Path
    quick: bool
    keep: bool
    skip: set[str] = field(default_factory=set)
    #: Journals the hotcopy pipeline runs with; "etcd" adds the interleaved pipeline
    #: "hotcopy_etcd" (same clone, journal in a 3-member etcd on this host).
    journals: list[str] = field(default_factory=lambda: ["sqlite"])
    #: transfer.max_source_latency_factor of the pipeline "hotcopy_throttled".
    latency_factor: float = 1.5


@dataclass
class Record:
    size: int
    pipeline: str
    run: int
    ok: bool
    figures: dict[str, Any]
    impact: dict[str, Any]
    error: str | None = None
    unsupported: bool = False  # a transfer method these hosts cannot use: not a failure


class Harness:
    def __init__(self, options: Options, repo: Path) -> None:
        self.options = options
        self.repo = repo
        self.logs = options.workdir / "logs"
        self.shard = Shard(options.workdir / "shard", self.logs)
        self.records: list[Record] = []
        self.sizes_info: dict[int, dict[str, Any]] = {}
        self.unsupported: dict[str, str] = {}
        self.started = time.time()
        self.doc: dict[str, Any] = {}
        self.configs: dict[bool, Path] = {}
        self.etcd: EtcdCluster | None = None
        self.etcd_config: Path | None = None
        self.throttled_config: Path | None = None
        self.delta_config: Path | None = None
        self.verified_config: Path | None = None

    # -- the run -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.doc = {"machine": machine.describe(self.options.workdir),
                    "code": machine.git_state(self.repo),
                    "options": {**asdict(self.options), "workdir": str(self.options.workdir),
                                "skip": sorted(self.options.skip)},
                    "started": self.started}
        try:
            self.shard.up(image_size_for(max(self.options.sizes)))
            self.configs = {
                True: self.shard.write_config(self.options.workdir / "preflush.toml",
                                              preflush=True),
                False: self.shard.write_config(self.options.workdir / "no-preflush.toml",
                                               preflush=False)}
            self.throttled_config = self.shard.write_config(
                self.options.workdir / "throttled.toml", preflush=True,
                latency_factor=self.options.latency_factor)
            self.delta_config = self.shard.write_config(
                self.options.workdir / "delta.toml", preflush=True, delta=True)
            self.verified_config = self.shard.write_config(
                self.options.workdir / "verified.toml", preflush=True, verify="checksum")
            if "etcd" in self.options.journals:
                self._etcd_up()
            for size in self.options.sizes:
                self._size_phase(size)
        finally:
            if self.etcd is not None:
                self.etcd.stop()  # its data is under workdir, kept with the logs
            if not self.options.keep:
                self.shard.down()
        return self._document()

    def _etcd_up(self) -> None:
        """A 3-member etcd on loopback, as the tests run it: every journal write of the
        etcd pipeline is a quorum write among three processes on this host."""
        self.etcd = EtcdCluster(self.options.workdir / "etcd", ETCD_MEMBERS).start()
        self.etcd_config = self.shard.write_config(
            self.options.workdir / "etcd.toml", preflush=True,
            etcd_endpoints=self.etcd.endpoints)
        self.doc["etcd"] = {"members": ETCD_MEMBERS, "endpoints": self.etcd.endpoints}

    def _document(self) -> dict[str, Any]:
        self.doc.update({
            "finished": time.time(),
            "duration_s": time.time() - self.started,
            "sizes": {str(k): v for k, v in self.sizes_info.items()},
            "unsupported_methods": self.unsupported,
            "records": [asdict(r) for r in self.records],
        })
        return self.doc

    def _size_phase(self, size: int) -> None:
        label = stats.size_label(size)
        loaded = time.monotonic()
        self.shard.load(size)
        files, ship = self.shard.ship_files()
        self.sizes_info[size] = {"label": label, "ship_bytes": ship, "ship_files": len(files),
                                 "load_s": time.monotonic() - loaded,
                                 "tables": len(self.shard.dataset.tables)}
        _say(f"{label}: {ship / 1e9:.2f} GB in {len(files)} files to ship "
             f"(loaded in {self.sizes_info[size]['load_s']:.0f}s)")
        logs = self.logs / label
        logs.mkdir(exist_ok=True)
        monitors = Monitors(self.shard, logs, write_rate=self.options.write_rate,
                            read_rate=self.options.read_rate)
        monitors.start()
        try:
            time.sleep(WARMUP_S)
            for run in range(1, self.options.runs + 1):
                for name, action in self._plan(size, run, logs):
                    self._measure(size, name, run, action, monitors)
        finally:
            monitors.stop()

    def _plan(self, size: int, run: int,
              logs: Path) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
        """A generator: the extra methods are chosen once "hotcopy" has shown which one
        ``auto`` picks, so the default method is not measured twice."""
        opts = self.options
        tag = f"run{run}"
        plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("baseline", lambda: pipelines.baseline(opts.baseline_s)),
            ("hotcopy", lambda: pipelines.hotcopy_clone(self.configs[True], None, logs,
                                                        f"hotcopy-{tag}")),
            ("hotcopy_etcd", lambda: pipelines.hotcopy_clone(self._etcd_config(), None, logs,
                                                             f"hotcopy-etcd-{tag}")),
            ("hotcopy_nopreflush", lambda: pipelines.hotcopy_clone(
                self.configs[False], None, logs, f"hotcopy-nopreflush-{tag}")),
            ("hotcopy_verified", lambda: pipelines.hotcopy_clone(
                self._verified_config(), None, logs, f"hotcopy-verified-{tag}")),
            ("hotcopy_throttled", lambda: pipelines.hotcopy_clone(
                self._throttled_config(), None, logs, f"hotcopy-throttled-{tag}")),
            ("mariabackup", lambda: mariabackup_clone(self.shard, logs, f"mariabackup-{tag}")),
            ("floor", lambda: pipelines.raw_copy(self.shard, logs)),
        ]
        # Right after the full clone: the target is a physical copy of the source.
        for name, fraction in reversed(delta.FRACTIONS.items()):
            plan.insert(2, (name, self._delta_action(fraction, logs, f"{name}-{tag}")))
        if "etcd" not in opts.journals:
            plan = [(name, action) for name, action in plan if name != "hotcopy_etcd"]
        if "hotcopy_delta" in opts.skip:
            plan = [(name, action) for name, action in plan if name not in delta.FRACTIONS]
        yield from ((name, action) for name, action in plan if name not in opts.skip)
        if run > opts.method_runs or "method" in opts.skip:
            return
        if size not in opts.method_sizes:
            return
        for method in self._extra_methods():
            yield f"method:{method}", self._method_action(method, logs, tag)

    def _delta_action(self, fraction: float, logs: Path,
                      tag: str) -> Callable[[], dict[str, Any]]:
        def action() -> dict[str, Any]:
            if self.delta_config is None:
                raise pipelines.PipelineError("no config for the delta clone")
            last = self.records[-1] if self.records else None
            after_full = bool(last and last.ok and (last.pipeline == "hotcopy"
                                                    or last.pipeline in delta.FRACTIONS))
            return delta.stale_then_delta(self.shard, self.configs[True], self.delta_config,
                                          fraction, logs, tag, after_full_clone=after_full)
        return action

    def _throttled_config(self) -> Path:
        if self.throttled_config is None:
            raise pipelines.PipelineError("no config for the throttled clone")
        return self.throttled_config

    def _verified_config(self) -> Path:
        if self.verified_config is None:
            raise pipelines.PipelineError("no config for the verified clone")
        return self.verified_config

    def _etcd_config(self) -> Path:
        if self.etcd_config is None:
            raise pipelines.PipelineError("the etcd journal was not started")
        return self.etcd_config

    def _method_action(self, method: str, logs: Path,
                       tag: str) -> Callable[[], dict[str, Any]]:
        return lambda: pipelines.hotcopy_clone(self.configs[True], method, logs,
                                               f"{method}-{tag}")

    def _extra_methods(self) -> list[str]:
        """Transfer methods other than the one ``auto`` picks (measured as "hotcopy")."""
        present = transfer_base.load_all()
        wanted = self.options.transfers if self.options.transfers is not None else present
        default = next((r.figures.get("transfer_method") for r in self.records
                        if r.pipeline == "hotcopy" and r.ok), None)
        return [m for m in wanted
                if m in present and m != default and m not in self.unsupported]

    def _measure(self, size: int, name: str, run: int, action: Callable[[], dict[str, Any]],
                 monitors: Monitors) -> None:
        label = f"{stats.size_label(size)} run {run}/{self.options.runs} {name}"
        self.shard.wait_replicas(timeout_s=SETTLE_TIMEOUT_S)
        monitors.check()
        drop_caches()
        record = Record(size, name, run, ok=False, figures={}, impact={})
        try:
            record.figures = action()
            record.ok = True
        except (pipelines.PipelineError, Exception) as exc:
            record.error = str(exc)
            log.debug("%s failed", label, exc_info=True)
            if name.startswith("method:") and "cannot be used" in str(exc):
                record.unsupported = True
                self.unsupported[name.split(":", 1)[1]] = str(exc)
                _say(f"{label}: not measured: {exc}")
            else:
                _say(f"{label}: FAILED: {exc}")
            self._repair()
        if record.ok:
            record.impact = monitors.impact(record.figures["start"], record.figures["end"])
            record.impact.update(monitors.copy_split(
                record.figures["start"], record.figures["end"],
                record.figures.get("copy_window")))
            record.impact["loadavg_1m"] = os.getloadavg()[0]  # how busy the neighbours were
            _say(f"{label}: {_summary(record)}")
        self.records.append(record)
        (self.options.workdir / "results-partial.json").write_text(
            json.dumps(self._document(), indent=1, default=str))

    def _repair(self) -> None:
        """Leave the shard healthy for the next run: re-seed the target the known way."""
        try:
            self.shard.wait_replicas(timeout_s=60)
            return
        except Exception:
            log.info("target is not replicating after the failure; re-seeding it with hotcopy")
        pipelines.hotcopy_clone(self.configs[True], None, self.logs, f"repair-{time.time():.0f}")


def _summary(record: Record) -> str:
    f, i = record.figures, record.impact
    parts = []
    if "e2e_s" in f:
        parts.append(f"e2e {f['e2e_s']:.1f}s")
    for key, unit in (("source_lock_ms", "lock"), ("block_commit_ms", "block_commit"),
                      ("source_replication_paused_ms", "paused"),
                      ("target_downtime_ms", "target down")):
        if f.get(key) is not None:
            parts.append(f"{unit} {f[key]:.0f}ms")
    if f.get("transfer_mb_s"):
        parts.append(f"{f['transfer_method']} {f['transfer_mb_s']:.0f} MB/s")
    if f.get("mb_s"):
        parts.append(f"{f['mb_s']:.0f} MB/s")
    parts.append(f"sql stopped {i.get('source_sql_stopped_ms', 0):.0f}ms")
    p99 = i.get("source_read_p99_ms")
    parts.append(f"read p99 {p99:.1f}ms" if p99 is not None else "read p99 n/a")
    tps = i.get("master_tps")
    parts.append(f"master {tps:.0f} tps" if tps is not None else "master tps n/a")
    return ", ".join(parts)


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
