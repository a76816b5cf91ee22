"""The lock ladder: the lightest lock that makes a snapshot consistent, given up quickly.

A lock request that waits behind a long query makes every writer queue behind it, so
each rung runs with a short lock_wait_timeout; on a timeout everything taken is
released, we wait a little and try again, a bounded number of times. The time writes
could have been stalled is therefore bounded by that timeout, whatever happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hotcopy.errors import HotcopyError, MySQLError
from hotcopy.mysql.connection import (
    ER_LOCK_WAIT_TIMEOUT,
    ER_QUERY_INTERRUPTED,
    Connection,
    error_code,
)
from hotcopy.mysql.flavor import Flavor
from hotcopy.mysql.flavor.base import set_session_lock_wait_timeout

log = logging.getLogger(__name__)


class LockNotAcquired(HotcopyError):
    def __init__(self, message: str, *, hint: str, waits_ms: list[float]) -> None:
        super().__init__(message, hint=hint)
        self.waits_ms = waits_ms


@dataclass
class HeldLock:
    """A lock held by one session; ``write_block_started`` is when writes could stall.

    ``waits_ms`` is how long each attempt waited on the ladder, the last one included:
    while a rung waits, the rungs already taken can hold some writers back, so this is
    the bound on what the source's writers felt.
    """

    conn: Connection
    flavor: Flavor
    write_block_started: float | None
    attempts: int
    waits_ms: list[float] = field(default_factory=list)

    def release(self) -> float:
        """Release and return the milliseconds writes were (or could have been) blocked."""
        for sql, args in self.flavor.unlock():
            self.conn.execute(sql, args)
        ended = time.monotonic()
        if self.write_block_started is None:
            return 0.0
        return (ended - self.write_block_started) * 1000


def _release_quietly(conn: Connection, flavor: Flavor) -> None:
    for sql, args in flavor.unlock():
        try:
            conn.execute(sql, args)
        except MySQLError:
            log.debug("unlock after a failed attempt failed", exc_info=True)


def acquire(
    conn: Connection,
    flavor: Flavor,
    *,
    lock_wait_timeout_s: int,
    attempts: int,
    retry_delay_s: float,
    on_retry: Callable[[int, str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> HeldLock:
    sql, args = set_session_lock_wait_timeout(lock_wait_timeout_s)
    conn.execute(sql, args)
    last_stage = ""
    waits_ms: list[float] = []
    for attempt in range(1, attempts + 1):
        write_block_started: float | None = None
        started = time.monotonic()
        try:
            for stage in flavor.lock_ladder():
                last_stage = stage.sql
                if stage.blocks_writes and write_block_started is None:
                    write_block_started = time.monotonic()
                conn.execute(stage.sql)
            waits_ms.append((time.monotonic() - started) * 1000)
            return HeldLock(conn, flavor, write_block_started, attempt, waits_ms)
        except MySQLError as exc:
            waits_ms.append((time.monotonic() - started) * 1000)
            if error_code(exc) not in (ER_LOCK_WAIT_TIMEOUT, ER_QUERY_INTERRUPTED):
                _release_quietly(conn, flavor)
                raise
            _release_quietly(conn, flavor)
            log.warning("%s: `%s` waited more than %ss (attempt %d of %d)", conn.address.name,
                        last_stage, lock_wait_timeout_s, attempt, attempts)
            if on_retry is not None:
                on_retry(attempt, last_stage)
            if attempt < attempts:
                sleep(retry_delay_s * attempt)
    waited = ", ".join(f"{ms / 1000:.1f}s" for ms in waits_ms)
    raise LockNotAcquired(
        f"could not take `{last_stage}` on {conn.address.name}: {attempts} attempts each gave "
        f"up after lock_wait_timeout={lock_wait_timeout_s}s (waited {waited}; each wait was "
        "the longest the source's writers could have been held back)",
        hint="a long-running query, LOCK TABLES or DDL holds a conflicting lock on the "
             "source; see SHOW PROCESSLIST there, or raise clone.lock_wait_timeout_s / "
             "lock_attempts",
        waits_ms=waits_ms)
