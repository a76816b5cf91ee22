"""Per-step figures of issue 13's mechanisms, as ratios within one run (one sandbox).

    sudo .venv/bin/python -m bench.clone_steps                 # own sandbox, 1 run each
    sudo .venv/bin/python -m bench.clone_steps --rows 200000 --runs 3 --drop-caches

For each run, clones replica1 onto replica2 three times: cold (``warm_target = false``)
and warm (the default), both with ``verify = "catchup"`` (checksums read every table
on the target and refill its buffer pool), then warm with checksum verification (the
default config); it reads the target's hot table right after each clone. Reported per
clone, from its own ``--json`` report:

- the target's downtime, the time to a caught-up target, verify's cost;
- the snapshot drop: how long it took, and how much of it the target's start had to
  wait for (the rest is what came off the critical path);
- verification: the source's and the target's checksum times and the concurrent wall
  time (the serial time would be their sum);
- the pre-flush: dirty pages before and after, and why it stopped;
- warm vs cold: whether the buffer pool list loaded, and the target's point-read
  latency (p50/p99 over 2,000 primary-key reads of the hot table) just after; with
  ``--drop-caches`` the OS page cache is dropped first (else the just-copied files
  are in memory and a cold buffer pool barely shows).

These are figures from one shared machine: compare them with each other, not across
machines. Results go to stdout and bench/results/clone_steps.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hotcopy.config import load as load_config
from hotcopy.loadgen import seed
from hotcopy.mysql import replication
from hotcopy.mysql.connection import connect
from hotcopy.runtime import Runtime
from hotcopy.sandbox import SandboxInfo, down, up

log = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "clone_steps.json"
HOT = "bench_hot"
READS = 2000


def _sql(info: SandboxInfo, name: str, *statements: str) -> None:
    conn = connect(info.address(name), str(info.admin_option_file), read_timeout=600)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def _read_latency(info: SandboxInfo, name: str, rows: int) -> dict[str, float]:
    conn = connect(info.address(name), str(info.admin_option_file), read_timeout=60)
    times: list[float] = []
    try:
        rng = random.Random(13)  # noqa: S311 - which rows to read, not a secret
        for _ in range(READS):
            key = rng.randint(1, rows)
            started = time.perf_counter()
            conn.one(f"SELECT pad FROM {HOT}.hot WHERE id = %s", (key,))
            times.append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99) - 1]}


def _clone(info: SandboxInfo, config: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "hotcopy", "clone", "--config", str(config),
                           "--source", "replica1", "--target", "replica2", "--yes", "--json"],
                          capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"clone failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def _outputs(report: dict[str, Any], info: SandboxInfo) -> dict[str, Any]:
    from hotcopy.saga import SqliteJournal

    journal = SqliteJournal(load_config(info.config_path).journal_path())
    merged: dict[str, Any] = {}
    for record in journal.steps(report["job"]):
        merged.update(record.outputs)
    return merged


def _figures(report: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    steps = {s["name"]: s["ms"] for s in report["steps"]}
    spans = outputs.get("checksum_spans") or {}
    src, tgt = spans.get("source"), spans.get("target")
    figures: dict[str, Any] = {
        key: report.get(key) for key in (
            "target_downtime_ms", "time_to_caught_up_ms", "verify_ms", "snapshot_drop_ms",
            "buffer_pool_loaded", "dirty_pages_before", "dirty_pages_after",
            "preflush_outcome", "preflush_reason", "source_lock_ms",
            "source_replication_paused_ms", "verify_source_paused_ms")}
    figures["snapshot_drop_waited_ms"] = outputs.get("snapshot_drop_waited_ms")
    figures["steps_ms"] = steps
    if src and tgt and None not in src + tgt:
        figures["checksum_source_ms"] = (src[1] - src[0]) * 1000
        figures["checksum_target_ms"] = (tgt[1] - tgt[0]) * 1000
        figures["checksum_wall_ms"] = (max(src[1], tgt[1]) - min(src[0], tgt[0])) * 1000
    return figures


def run(info: SandboxInfo, rows: int, runs: int, workdir: Path,
        drop_caches: bool) -> dict[str, Any]:
    rt = Runtime(load_config(info.config_path))
    seed(info.address(info.master), rt.config.mysql.option_file, rows)
    _sql(info, info.master, f"DROP DATABASE IF EXISTS {HOT}", f"CREATE DATABASE {HOT}",
         f"CREATE TABLE {HOT}.hot (id INT PRIMARY KEY, pad CHAR(200) NOT NULL)",
         f"INSERT INTO {HOT}.hot SELECT seq, REPEAT('x', 200) FROM {HOT}.seq_1_to_{rows}")
    for name in info.replicas:
        replication.wait_caught_up(rt.server(name), rt.server(info.master), timeout_s=600)
    configs = {}
    # Checksum verification reads every table on the target and so refills its buffer
    # pool: warm vs cold is measured with verify = "catchup", verification apart.
    for mode, extra in (("cold", '[clone]\nwarm_target = false\nverify = "catchup"\n'),
                        ("warm", '[clone]\nverify = "catchup"\n'), ("checksum", "")):
        configs[mode] = workdir / f"{mode}.toml"
        configs[mode].write_text(info.config_path.read_text() + "\n" + extra)
    results: list[dict[str, Any]] = []
    for n in range(1, runs + 1):
        for mode in ("cold", "warm", "checksum"):
            _sql(info, "replica1", f"SELECT COUNT(*), SUM(LENGTH(pad)) FROM {HOT}.hot")
            report = _clone(info, configs[mode])
            figures = _figures(report, _outputs(report, info))
            if drop_caches:
                # The copy just wrote the target's files through the page cache: without
                # this, a "cold" buffer pool reads from memory and warm vs cold is moot.
                subprocess.run(["sync"], check=True, timeout=600)
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            figures["target_read"] = _read_latency(info, "replica2", rows)
            figures["target_read_after_drop_caches"] = drop_caches
            figures.update(run=n, mode=mode, job=report["job"])
            results.append(figures)
            print(json.dumps({k: v for k, v in figures.items() if k != "steps_ms"},
                             default=str), flush=True)
    rt.close()
    return {"rows": rows, "runs": runs, "drop_caches": drop_caches, "results": results,
            "finished": time.time()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000,
                        help="rows of the seed tables and of the hot table")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the OS page cache before the target's reads (root)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    parent = Path(tempfile.mkdtemp(prefix="hotcopy-clone-steps-"))
    parent.chmod(0o755)
    try:
        info = up(parent / "sandbox")
        document = run(info, options.rows, options.runs, parent, options.drop_caches)
    finally:
        try:
            down(parent / "sandbox")
        finally:
            shutil.rmtree(parent, ignore_errors=True)
    RESULTS.write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
