"""The pipelines under comparison, each run once per call: hotcopy, and the raw copy floor.

Every pipeline starts from the same state (both replicas caught up, a cold page cache)
and returns a flat dict of figures; ``start``/``end`` bound the window in which the
shard's impact is measured. mariabackup has its own module (mariabackup.py).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.hotcopy_bench import parsers
from bench.hotcopy_bench.shard import SOURCE, TARGET, Shard, remove_tree

log = logging.getLogger(__name__)

CLONE_TIMEOUT_S = 3600
COPY_TIMEOUT_S = 3600
#: 256 x 512 B = 128 KiB records. With tar's default 10 KiB records both tars were
#: CPU-bound on this 2-CPU host (2-5x slower than 128 KiB on the same cold files) and
#: mariabackup's copy beat the "floor"; a floor must be the fastest plain copy.
TAR_BLOCKING = 256


class PipelineError(RuntimeError):
    pass


def hotcopy_clone(config: Path, transfer: str | None, logs: Path, tag: str) -> dict[str, Any]:
    """``hotcopy clone --json`` through the CLI, in a fresh process, as an operator runs it."""
    cmd = [sys.executable, "-m", "hotcopy", "clone", "--config", str(config), "--source", SOURCE,
           "--target", TARGET, "--yes", "--json"]
    if transfer:
        cmd += ["--transfer", transfer]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=CLONE_TIMEOUT_S)
    except BaseException:
        # SIGTERM makes hotcopy roll back everything it did; SIGKILL would leave a job.
        proc.terminate()
        proc.communicate(timeout=600)
        raise
    exited = time.time()
    (logs / f"{tag}.json").write_text(stdout)
    (logs / f"{tag}.stderr").write_text(stderr)
    try:
        doc = json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError:
        doc = {}
    if proc.returncode != 0 or doc.get("state") != "committed":
        reason = doc.get("error") or stderr.strip()[-400:] or f"exit {proc.returncode}"
        raise PipelineError(f"hotcopy clone exited {proc.returncode}: {reason}")
    return summarize_clone(doc, start, exited)


def summarize_clone(doc: dict[str, Any], start: float, exited: float) -> dict[str, Any]:
    """The figures of one clone from its ``--json`` report (pure: unit-tested)."""
    steps = {s["name"]: s for s in doc.get("steps", [])}
    caught_up = steps.get("catch_up", {}).get("ended") or exited
    verified = steps.get("verify", {}).get("ended")
    pull = steps.get("pull", {})
    pull_s = (pull.get("ms") or 0) / 1000
    literal = doc.get("literal_bytes") or doc.get("bytes_transferred") or 0
    serve_detail = str(steps.get("serve", {}).get("detail") or "")
    dirty = parsers.dirty_pages(str(steps.get("preflush", {}).get("detail") or ""))
    return {
        "start": start,
        "end": caught_up,
        "e2e_s": caught_up - start,
        "wall_s": exited - start,
        # to the end of verify: with checksums (hotcopy_verified) what the default costs
        "verified_s": verified - start if verified else None,
        "source_lock_ms": doc.get("source_lock_ms"),
        "source_replication_paused_ms": doc.get("source_replication_paused_ms"),
        "bytes_transferred": doc.get("bytes_transferred"),
        "literal_bytes": literal,
        "transfer_method": serve_detail.split(" ", 1)[0] or None,
        "transfer_s": pull_s,
        "transfer_mb_s": literal / pull_s / 1e6 if pull_s else None,
        "catchup_s": doc.get("catchup_s"),
        "dirty_pages_before": doc.get("dirty_pages_before", dirty[0] if dirty else None),
        "dirty_pages_after": doc.get("dirty_pages_after", dirty[1] if dirty else None),
        # issue 13: the clone's own figures (None from a hotcopy that predates them)
        "target_downtime_ms": doc.get("target_downtime_ms"),
        "time_to_caught_up_ms": doc.get("time_to_caught_up_ms"),
        "verify_ms": doc.get("verify_ms"),
        "snapshot_drop_ms": doc.get("snapshot_drop_ms"),
        "buffer_pool_loaded": doc.get("buffer_pool_loaded"),
        "buffer_pool_loaded_n": (None if doc.get("buffer_pool_loaded") is None
                                 else int(bool(doc.get("buffer_pool_loaded")))),
        # the latency throttle (hotcopy_throttled): what it did and what it cost
        "pacing_cost_s": doc.get("pacing_cost_s"),
        "pacing_decreases": (doc.get("pacing") or {}).get("decreases"),
        "pacing_peak_mb_s": ((doc.get("pacing") or {}).get("peak_bytes_s") or 0) / 1e6 or None,
        "steps_ms": {name: step.get("ms") for name, step in steps.items()},
        "copy_window": ([pull["started"], pull["ended"]]
                        if pull.get("started") and pull.get("ended") else None),
        "job": doc.get("job"),
    }


def raw_copy(shard: Shard, logs: Path) -> dict[str, Any]:
    """``tar -c | tar -x`` of exactly the files hotcopy ships, source to target filesystem.

    Read from the live source datadir (the snapshot hotcopy reads shares its blocks),
    written next to the target's datadir, then removed outside the timed part.
    """
    files, total = shard.ship_files()
    listing = logs / "floor-files.txt"
    listing.write_bytes(b"".join(name.encode() + b"\0" for name in files))
    destination = shard.datadir(TARGET).parent / "bench-floor"
    remove_tree(destination)
    destination.mkdir()
    start = time.time()
    try:
        reader = subprocess.Popen(
            ["tar", "-C", str(shard.datadir(SOURCE)), f"--blocking-factor={TAR_BLOCKING}",
             "--null", "-T", str(listing), "-cf", "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert reader.stdout is not None
        writer = subprocess.run(["tar", "-C", str(destination), f"--blocking-factor={TAR_BLOCKING}",
                                 "-xf", "-"], stdin=reader.stdout,
                                capture_output=True, timeout=COPY_TIMEOUT_S, check=False)
        reader.stdout.close()
        reader_err = reader.stderr.read() if reader.stderr else b""
        reader.wait(60)
        end = time.time()  # the floor proper: the copy is in the page cache
        # Then on disk too, timed apart: hotcopy writes its copy back while it runs
        # (transfer.writeback_interval_s), a cost the page-cache floor does not carry.
        synced = subprocess.run(["sync", "-f", str(destination)], capture_output=True,
                                timeout=COPY_TIMEOUT_S, check=False)
        sync_s = time.time() - end if synced.returncode == 0 else None
    finally:
        remove_tree(destination)
    # tar warns (exit 1) when a live file changed while read; that is expected here.
    if reader.returncode not in (0, 1) or writer.returncode != 0:
        raise PipelineError(f"tar failed: {reader_err.decode(errors='replace')[-300:]} "
                            f"{writer.stderr.decode(errors='replace')[-300:]}")
    seconds = end - start
    return {"start": start, "end": end, "e2e_s": seconds, "bytes": total, "files": len(files),
            "mb_s": total / seconds / 1e6 if seconds else None, "copy_window": [start, end],
            "sync_s": sync_s, "on_disk_s": seconds + sync_s if sync_s is not None else None}


def baseline(seconds: float) -> dict[str, Any]:
    """No clone at all: the same load, the same instruments, for comparison."""
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time()}
