"""The pre-flush: fewer dirty pages on the source means a shorter recovery on the target.

The snapshot is a crash image: the target's InnoDB replays the redo log from the last
checkpoint, and the checkpoint only moves past pages that were written back. So
before replication is paused, the source's page cleaner is told to write back every
dirty page (``innodb_max_dirty_pages_pct = 0``, at ``innodb_io_capacity_max``), both
settings journaled and restored right after the snapshot. Whatever happens, the step
says what it did: dirty pages and checkpoint age before and after, and why it stopped
or why it was skipped (an operator reading "7 of 9,014 pages flushed" needs to know
whether it gave up, ran out of time, or was turned off).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hotcopy.mysql.flavor.base import get_global, set_global
from hotcopy.mysql.server import Server
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)

DONE_PAGES = 64
"""At most this many dirty pages: nothing worth flushing (a second of recovery is more)."""
LEFT_FRACTION = 0.1
"""Done once at most this share of the pages dirty at the start is left. What remains
then is what replication dirties while the cleaner runs: the benchmark's pre-flush took
1,462 pages to 115 and then waited out its 3 s limit, never reaching 64, to save the
target 0.3 s of recovery; chasing those pages costs the clone more than they save."""
STALL_S = 2.0
"""Stop when the dirty pages have not fallen by 5 % for this long: replication dirties
pages as fast as the cleaner writes them, and waiting longer only delays the clone."""


def skip_reason(before: int, age: int | None, min_age_mb: float) -> str | None:
    """Why no pre-flush is worth its time, or None to flush.

    The target's recovery replays the redo written since the last checkpoint, so with
    little of it recovery is quick whatever the dirty page count: in the benchmark
    (1,000-1,400 dirty pages, checkpoint age 0.6-4.2 MB) the new mysqld answered 0.1-0.2 s
    sooner after a pre-flush that cost the clone 0.3-1.0 s. Servers that do not report
    the checkpoint age (``age`` None) are judged by their dirty pages alone.
    """
    if before <= DONE_PAGES:
        return f"{before} dirty pages, at most {DONE_PAGES}: nothing worth flushing"
    if age is not None and age < min_age_mb * 1e6:
        return (f"checkpoint age {age / 1e6:.1f} MB, under clone.preflush_min_checkpoint_age_mb"
                f" = {min_age_mb:g}: the target replays that little redo sooner than a "
                "pre-flush would end")
    return None


def enough_pages(before: int) -> int:
    """The dirty pages at which the pre-flush has done its work."""
    return max(DONE_PAGES, int(before * LEFT_FRACTION))


def verdict(before: int, dirty: int, now: float, deadline: float,
            lowest_at: float) -> str | None:
    """Why the pre-flush stops now (done, timeout, stalled), or None to keep flushing.

    ``lowest_at`` is when the dirty pages last fell by 5 %; kept apart from the loop so
    the rule can be held to its properties without a server.
    """
    if dirty <= enough_pages(before):
        return "done"
    if now >= deadline:
        return "timeout"
    if now - lowest_at > STALL_S:
        return "stalled"
    return None


def _status_int(server: Server, name: str) -> int | None:
    value = server.status_variable(name)
    return None if value is None or str(value) == "" else int(value)


def _figures(server: Server) -> tuple[int, int | None]:
    return (_status_int(server, "Innodb_buffer_pool_pages_dirty") or 0,
            _status_int(server, "Innodb_checkpoint_age"))


def preflush(ctx: StepContext) -> dict[str, Any]:
    config = ctx.runtime.config.clone
    server = ctx.runtime.server(ctx.params["source"])
    before, age_before = _figures(server)
    if not config.preflush_dirty_pages:
        return _report(before, before, age_before, age_before, 0.0, "skipped",
                       "clone.preflush_dirty_pages = false")
    skip = skip_reason(before, age_before, config.preflush_min_checkpoint_age_mb)
    if skip:
        return _report(before, before, age_before, age_before, 0.0, "skipped", skip)
    # MariaDB lowers innodb_max_dirty_pages_pct_lwm along with the pct (to 0 here) and
    # does not raise it back with it: save it too. Its undo is pushed first, so it runs
    # last, after the pct is back (the lwm may not exceed the pct).
    lwm = server.scalar(get_global("innodb_max_dirty_pages_pct_lwm"))
    if lwm is not None:
        ctx.push("mysql.set_global", {"server": server.name,
                                      "variable": "innodb_max_dirty_pages_pct_lwm",
                                      "value": float(lwm)})
    old = server.scalar(get_global("innodb_max_dirty_pages_pct"))
    ctx.push("mysql.set_global", {"server": server.name, "variable": "innodb_max_dirty_pages_pct",
                                  "value": float(old)})
    # At the default innodb_io_capacity (200) the page cleaner takes seconds for a few
    # thousand pages; let it run at innodb_io_capacity_max for this short while.
    io_capacity = int(server.scalar(get_global("innodb_io_capacity")))
    io_capacity_max = int(server.scalar(get_global("innodb_io_capacity_max")))
    if io_capacity_max > io_capacity:
        ctx.push("mysql.set_global", {"server": server.name, "variable": "innodb_io_capacity",
                                      "value": io_capacity})
        server.execute(set_global("innodb_io_capacity", io_capacity_max))
    server.execute(set_global("innodb_max_dirty_pages_pct", 0))
    started = time.monotonic()
    deadline = started + config.preflush_timeout_s
    dirty, age = before, age_before
    lowest, lowest_at = dirty, started
    while (why := verdict(before, dirty, time.monotonic(), deadline, lowest_at)) is None:
        time.sleep(0.1)
        dirty, age = _figures(server)
        if dirty < lowest * 0.95:
            lowest, lowest_at = dirty, time.monotonic()
    enough = enough_pages(before)
    reason = {"done": f"at most {enough} dirty pages left"
                      + (f" ({LEFT_FRACTION:.0%} of {before}: the rest is what replication "
                         "dirties meanwhile)" if enough > DONE_PAGES else ""),
              "timeout": f"clone.preflush_timeout_s = {config.preflush_timeout_s:g} s reached",
              "stalled": f"no 5 % gain in {STALL_S:g} s: writes dirty pages as fast as they "
                         "are flushed"}[why]
    return _report(before, dirty, age_before, age, time.monotonic() - started, why, reason)


def _report(before: int, after: int, age_before: int | None, age_after: int | None,
            seconds: float, outcome: str, reason: str) -> dict[str, Any]:
    flushed = f"dirty pages {before} → {after}"
    if age_before is not None and age_after is not None:
        flushed += f", checkpoint age {age_before / 1e6:.1f} → {age_after / 1e6:.1f} MB"
    return {"dirty_pages_before": before, "dirty_pages_after": after,
            "checkpoint_age_before": age_before, "checkpoint_age_after": age_after,
            "preflush_s": round(seconds, 3), "preflush_outcome": outcome,
            "preflush_reason": reason,
            "_detail": f"{flushed} ({outcome}: {reason})" if outcome != "skipped"
                       else f"skipped: {reason} ({before} dirty pages)"}
