"""Warm target: the source's buffer pool list travels with the snapshot.

A freshly cloned replica starts with an empty buffer pool: its first minutes of
reads (and of applying replication) go to disk. InnoDB can dump the list of pages
in its buffer pool (space id, page number: a few bytes a page, no data) and load it
back at start. Dumping it on the source just before the snapshot puts a current
list into the snapshot, and a target with ``innodb_buffer_pool_load_at_startup``
(the default) reads those pages in the background as soon as it starts.

The dump runs before the SQL thread stops and before the write lock: it never
lengthens the source's pause. It only rewrites the source's own ib_buffer_pool
file, which the server itself rewrites at every shutdown, so it needs no undo.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from hotcopy.errors import HotcopyError
from hotcopy.mysql.flavor.base import get_global, set_global
from hotcopy.mysql.server import Server
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)

DUMP_DONE = "Buffer pool(s) dump completed"
LOAD_DONE = "Buffer pool(s) load completed"
DEFAULT_FILENAME = "ib_buffer_pool"


def _on(value: Any) -> bool:
    return str(value).upper() in ("ON", "1", "TRUE")


def _shipped_name(server: Server, datadir: str) -> tuple[str | None, str]:
    """The dump file's path inside the datadir (what the snapshot carries), or why not."""
    name = str(server.variable("innodb_buffer_pool_filename") or DEFAULT_FILENAME)
    if not os.path.isabs(name):
        return name, ""
    rel = os.path.relpath(os.path.normpath(name), os.path.normpath(datadir))
    if rel.startswith(".."):
        return None, (f"innodb_buffer_pool_filename = {name} lies outside the datadir "
                      "and does not travel with the snapshot")
    return rel, ""


def _target_refuses(ctx: StepContext, shipped: str) -> str:
    """Why the target would not load the shipped list ('' when it will)."""
    target = ctx.params["target"]
    try:
        server = ctx.runtime.server(target)
        load = server.variable("innodb_buffer_pool_load_at_startup")
        name = str(server.variable("innodb_buffer_pool_filename") or DEFAULT_FILENAME)
    except HotcopyError as exc:
        log.info("%s: buffer pool settings unknown (%s); dumping anyway", target, exc)
        return ""
    if not _on(load):
        return f"{target} has innodb_buffer_pool_load_at_startup = OFF"
    datadir = ctx.runtime.config.server(target).datadir
    rel = os.path.relpath(name, datadir) if os.path.isabs(name) else name
    if os.path.normpath(rel) != os.path.normpath(shipped):
        return (f"{target} loads its buffer pool list from {name}, not from the shipped "
                f"{shipped}")
    return ""


def dump_buffer_pool(ctx: StepContext) -> dict[str, Any]:
    """Dump the source's buffer pool list now (bounded wait), so the snapshot has it."""
    config = ctx.runtime.config.clone
    if not config.warm_target:
        return _skipped("clone.warm_target = false: no buffer pool list is shipped")
    source = ctx.params["source"]
    server = ctx.runtime.server(source)
    shipped, why_not = _shipped_name(server, ctx.runtime.config.server(source).datadir)
    if shipped is None:
        return _skipped(why_not)
    refused = _target_refuses(ctx, shipped)
    if refused:
        return _skipped(refused)
    # innodb_buffer_pool_dump_pct (default 25) keeps only the hottest pages, and a
    # table just scanned sits in the LRU's old part: raise it for this one dump.
    pct = int(server.scalar(get_global("innodb_buffer_pool_dump_pct")))
    if pct < config.buffer_pool_dump_pct:
        ctx.push("mysql.set_global", {"server": server.name,
                                      "variable": "innodb_buffer_pool_dump_pct", "value": pct})
        server.execute(set_global("innodb_buffer_pool_dump_pct", config.buffer_pool_dump_pct))
    try:
        return _dump(ctx, server, shipped)
    finally:
        for entry in reversed(ctx.outstanding(steps={ctx.step})):
            ctx.tx.exec_remove(entry.seq)


def _dump(ctx: StepContext, server: Server, shipped: str) -> dict[str, Any]:
    config = ctx.runtime.config.clone
    before = str(server.status_variable("Innodb_buffer_pool_dump_status") or "")
    started = time.monotonic()
    server.execute(set_global("innodb_buffer_pool_dump_now", "ON"))
    deadline = started + config.buffer_pool_dump_timeout_s
    status = before
    while time.monotonic() < deadline:
        status = str(server.status_variable("Innodb_buffer_pool_dump_status") or "")
        if status.startswith(DUMP_DONE) and (status != before
                                             or time.monotonic() - started > 1.5):
            # (Unchanged only when the last dump completed in the same second as ours.)
            dump_ms = round((time.monotonic() - started) * 1000, 1)
            ctx.info(buffer_pool_dump="dumped")
            return {"buffer_pool_dump": "dumped", "buffer_pool_dump_ms": dump_ms,
                    "buffer_pool_file": shipped,
                    "_detail": f"buffer pool list dumped to {shipped} in {dump_ms:.0f} ms"}
        time.sleep(0.05)
    # A dump still running must not hold the clone up: the snapshot then carries the
    # previous list (or none), and the target simply starts colder.
    reason = (f"the dump did not finish in {config.buffer_pool_dump_timeout_s:g} s "
              f"(status: {status or 'none'})")
    ctx.reporter.warning(f"{server.name}: {reason}; the target may start cold")
    return _skipped(reason)


def _skipped(reason: str) -> dict[str, Any]:
    return {"buffer_pool_dump": "skipped", "buffer_pool_dump_reason": reason,
            "_detail": f"skipped: {reason}"}


def check_load(ctx: StepContext) -> dict[str, Any]:
    """Report whether the new target loaded the shipped list, waiting a bounded while
    (the load runs in the background; replication and clients are served meanwhile)."""
    if ctx.state.get("buffer_pool_dump") != "dumped":
        reason = ctx.state.get("buffer_pool_dump_reason") or "no dump was shipped"
        ctx.info(buffer_pool_loaded=False, buffer_pool_load_status=f"not shipped: {reason}")
        return {"buffer_pool_loaded": False, "_detail": f"not shipped: {reason}"}
    server = ctx.runtime.server(ctx.params["target"])
    deadline = time.monotonic() + ctx.runtime.config.clone.buffer_pool_load_wait_s
    while True:
        status = str(server.status_variable("Innodb_buffer_pool_load_status") or "")
        loaded = status.startswith(LOAD_DONE)
        if loaded or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    ctx.info(buffer_pool_loaded=loaded, buffer_pool_load_status=status)
    return {"buffer_pool_loaded": loaded, "buffer_pool_load_status": status,
            "_detail": status or "no load status"}
