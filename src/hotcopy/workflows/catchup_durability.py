"""The new target catches up with relaxed durability: its datadir is still disposable.

Catch-up was the largest step after the copy in the benchmark (5.2 s at 4 GB): the
target replays every master commit since the snapshot, and with
``innodb_flush_log_at_trx_commit = 1`` (and ``sync_binlog``) each one waits for an
fsync, about 150-185 commits a second on that disk. Until the job commits, the new
datadir is worth nothing on its own: any failure, a crash of the target host included,
is rolled back by moving the old datadir back. So from ``change_master`` until the
target has caught up it commits without waiting for the disk (2 and 0), and then gets
its own settings back before verification, the crash-safety audit and the commit
(which also writes the whole datadir back to disk first).

Each relaxed setting's undo is journaled before it is changed and run (exec_remove)
at the end of ``catch_up``; a rollback runs it too, and finds nothing to restore on a
mysqld that is no longer running: a restart reads the server's own configuration.
"""

from __future__ import annotations

import logging
from typing import Any

from hotcopy.mysql.flavor.base import get_global, set_global
from hotcopy.mysql.server import Server
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)

UNDO_ACTION = "mysql.set_global_if_running"

#: Each setting with the value it has while the new target catches up.
RELAXED: dict[str, int] = {"innodb_flush_log_at_trx_commit": 2, "sync_binlog": 0}


def _stricter(variable: str, value: int) -> bool:
    if variable == "innodb_flush_log_at_trx_commit":
        return value in (1, 3)  # both wait for the redo log's fsync at every commit
    return value != 0  # sync_binlog = N: an fsync every N commit groups


def relax(ctx: StepContext, server: Server) -> dict[str, Any]:
    """Before replication starts on the new target: commit without waiting for fsync."""
    if not ctx.runtime.config.clone.fast_catchup:
        return {"catchup_durability": "unchanged (clone.fast_catchup = false)"}
    relaxed: dict[str, int] = {}
    for variable, value in RELAXED.items():
        current = server.scalar(get_global(variable))
        if current is None or str(current) == "" or not _stricter(variable, int(current)):
            continue
        ctx.push(UNDO_ACTION, {"server": server.name, "variable": variable,
                               "value": int(current)})
        server.execute(set_global(variable, value))
        relaxed[variable] = int(current)
    if not relaxed:
        return {"catchup_durability": "unchanged (already relaxed)"}
    return {"catchup_relaxed": relaxed,
            "catchup_durability": "relaxed until caught up: " + ", ".join(
                f"{name} {old} -> {RELAXED[name]}" for name, old in relaxed.items())}


def restore(ctx: StepContext) -> dict[str, Any]:
    """Once caught up: the target's own durability settings, before anything is judged."""
    entries = list(reversed(ctx.outstanding(action=UNDO_ACTION)))
    for entry in entries:
        ctx.tx.exec_remove(entry.seq)
    if not entries:
        return {}
    return {"catchup_durability_restored": [entry.params["variable"] for entry in entries]}
