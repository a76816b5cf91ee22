"""The copy reaches the target's disk while it runs, not while the target is down.

A copy lands in the target's page cache, and the kernel starts writing it back only
past ``dirty_background_ratio`` (gigabytes on a large host). The benchmark at 4 GB
showed where that backlog went: the old mysqld's shutdown, a few fsyncs on the same
filesystem, took 1.1-3.9 s instead of 0.2 s, waiting for it (its InnoDB part ended in
under a second; the final "Shutdown complete" came 2 s later), and all of it was
target downtime. So while the copy runs, the staging directory's filesystem is written
back every ``transfer.writeback_interval_s`` (``sync -f``, on the target host), and once
more when the copy ends, before the old mysqld is asked to stop. On separate hosts the
target's disk is otherwise idle during the copy, so this costs nothing there.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor, files

log = logging.getLogger(__name__)

SYNC_TIMEOUT_S = 3600


class StagingWriteback:
    """``with StagingWriteback(...) as wb: copy()`` then ``wb.final()`` after a copy that
    succeeded. A failing background sync is logged and tried again at the next interval:
    it only decides when the bytes reach the disk, the final one decides whether."""

    def __init__(self, executor: Executor, path: str, interval_s: float) -> None:
        self.executor = executor
        self.path = path
        self.interval_s = interval_s
        self.syncs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StagingWriteback:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="staging-writeback",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(SYNC_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                files.flush_to_disk(self.executor, self.path, timeout=SYNC_TIMEOUT_S)
                self.syncs += 1
            except HotcopyError as exc:
                log.warning("writing the staging directory back on %s failed (%s); tried "
                            "again in %.0f s", self.executor.name, exc.message, self.interval_s)

    def final(self) -> float:
        """The last write-back, once the copy is complete: seconds it took."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(SYNC_TIMEOUT_S)
        started = time.monotonic()
        files.flush_to_disk(self.executor, self.path, timeout=SYNC_TIMEOUT_S)
        return time.monotonic() - started
