"""The copy reaches the target's disk while it runs, not while the target is down.

A copy lands in the target's page cache, and the kernel starts writing it back only
past ``dirty_background_ratio`` (gigabytes on a large host). The benchmark at 4 GB
showed where that backlog went: the old mysqld's shutdown, a few fsyncs on the same
filesystem, took 1.1-3.9 s instead of 0.2 s, waiting for it (its InnoDB part ended in
under a second; the final "Shutdown complete" came 2 s later), and all of it was
target downtime. So while the copy runs, every ``transfer.writeback_interval_s`` the
target host is asked to start writing back the staging files changed since the last
pass (``remote/start_writeback.sh``: posix_fadvise DONTNEED, which starts the writeback
and does not wait for it), and once the copy ends the staging filesystem is synced
(``sync -f``, timed) before the old mysqld is asked to stop.

Why not a ``sync -f`` every interval, as at first: measured here (4 GiB, rsync between
two btrfs filesystems on one disk, copy + final sync, 3 runs each), that took
18.2-22.1 s, the hint 15.1-16.0 s, and no write-back at all 22.0-25.8 s. A sync waits
for the whole filesystem (on btrfs, a transaction commit) and the copy's writes stall
behind it; the hint only starts the writes, and the copy's pages leave the cache once
written, so the copy is never throttled for dirty memory either.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from hotcopy import remote
from hotcopy.errors import HotcopyError
from hotcopy.hosts import Executor, files

log = logging.getLogger(__name__)

SYNC_TIMEOUT_S = 3600
PASS_TIMEOUT_S = 600
SINCE_MARGIN_S = 1.0
"""A pass looks at files changed since one second before the previous pass began: a
change in the same clock tick as that start is never missed (an extra look is cheap)."""


class StagingWriteback:
    """``with StagingWriteback(...) as wb: copy()`` then ``wb.final()`` after a copy that
    succeeded. A failing background pass is logged and tried again at the next interval:
    it only decides when the bytes reach the disk, the final sync decides whether."""

    def __init__(self, executor: Executor, path: str, interval_s: float) -> None:
        self.executor = executor
        self.path = path
        self.interval_s = interval_s
        self.passes = 0
        self._since = ""
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
            self._thread.join(PASS_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.start_pass()
            except HotcopyError as exc:
                log.warning("starting the write-back of the staging directory on %s failed "
                            "(%s); tried again in %.0f s", self.executor.name, exc.message,
                            self.interval_s)

    def start_pass(self) -> None:
        """One pass of ``start_writeback.sh``: the files changed since the last one."""
        out = self.executor.run(remote.argv("start_writeback.sh", self.path, self._since),
                                timeout=PASS_TIMEOUT_S).stdout.split()
        try:
            self._since = f"{float(out[0]) - SINCE_MARGIN_S:.3f}"
        except (IndexError, ValueError):
            self._since = ""  # the next pass looks at every file
        self.passes += 1

    def final(self) -> float:
        """The last write-back, once the copy is complete: seconds it took."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PASS_TIMEOUT_S)
        started = time.monotonic()
        files.flush_to_disk(self.executor, self.path, timeout=SYNC_TIMEOUT_S)
        return time.monotonic() - started
