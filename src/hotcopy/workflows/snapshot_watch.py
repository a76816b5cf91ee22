"""Whether what the pull reads from the source's snapshot can still be trusted.

A copy-on-write snapshot of a fixed size (LVM) breaks when its origin changes more than
it holds. From then on a read fails (EIO) or, in a reader such as GNU tar, comes back as
padding. A second read of that snapshot is no better than the first, so the pull stops
at the first sign, whatever form it takes: the fill watch on a progress report, a stream
that failed (before its retry), or a copy that looked complete. It never retries and
never commits. Backends with no fixed size (btrfs, ZFS) have nothing to watch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor
from hotcopy.runtime import Runtime
from hotcopy.snapshot.base import SnapshotPlan, load_backend

log = logging.getLogger(__name__)

OVERFLOW_HINT = ("raise lvm_snapshot_percent / lvm_snapshot_max_gib, or clone when the "
                 "source writes less")


class SnapshotUnusable(HotcopyError):
    """The source's snapshot overflowed or vanished: stop, never retry, never commit."""


class SnapshotWatch:
    def __init__(self, runtime: Runtime, source: str, plan: SnapshotPlan) -> None:
        backend = load_backend(plan.backend, runtime.config.server(source))
        self._fill_watch: Callable[[Executor, SnapshotPlan], str | None] | None = \
            getattr(backend, "check_health", None)
        self._invalid: Callable[[Executor, SnapshotPlan], str | None] | None = \
            getattr(backend, "invalid_reason", None)
        self._executor = runtime.executor(source)
        self._plan = plan
        self.source = source
        #: The first reason found; once set, every later question gets the same answer.
        self.reason: str | None = None

    def filling(self) -> str | None:
        """On a progress report: the backend's fill watch (rate-limited by the backend),
        which speaks before the snapshot overflows."""
        if self.reason is None and self._fill_watch is not None:
            self.reason = self._fill_watch(self._executor, self._plan)
        return self.reason

    def broken(self) -> str | None:
        """After a failure or a copy that looked complete: is the snapshot gone or invalid
        now? Asked each time, not rate-limited: an answer is needed before acting on it."""
        if self.reason is None and self._invalid is not None:
            self.reason = self._invalid(self._executor, self._plan)
        return self.reason

    def error(self, what: str) -> SnapshotUnusable:
        """``what`` became of the copy (``{source}`` names the source), and the snapshot's
        reason for it."""
        return SnapshotUnusable(f"{what.format(source=self.source)}: {self.reason}",
                                hint=OVERFLOW_HINT)

    def guard_retry(self, before_retry: Callable[[int], None]) -> Callable[[int], None]:
        """``before_retry`` that first makes sure a retry would not read a broken snapshot."""
        def guarded(attempt: int) -> None:
            if self.broken() or self.filling():
                log.warning("not retrying the transfer: %s", self.reason)
                raise self.error("not retrying the copy from {source}")
            before_retry(attempt)
        return guarded
