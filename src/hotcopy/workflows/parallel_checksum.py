"""Checksum the target while the source is checksummed: they are different hosts.

Checksumming one after the other made verification take the sum of both. Here the
target's checksums run on a thread of their own (their own bounded session, see
``table_checksums``) while the caller checksums the source on its own thread, so the
caller can restart the source's replication the moment the source's part is done
(all journal writes stay on the caller's thread). The two meet at a barrier before
either sends a query: they overlap by construction, not by luck of scheduling.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any

from hotcopy.mysql.checksum import ChecksumTimeout, table_checksums
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)

BARRIER_TIMEOUT_S = 60.0
JOIN_SLACK_S = 5.0


class BackgroundChecksums:
    """``with BackgroundChecksums(target, tables, deadline) as other: ...; other.result()``"""

    def __init__(self, server: Server, tables: list[tuple[str, str]], deadline: float) -> None:
        self.server = server
        self.tables = tables
        self.deadline = deadline
        self.started: float | None = None
        self.ended: float | None = None
        self._sums: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
        self._thread = threading.Thread(target=self._work, name=f"checksum-{server.name}",
                                        daemon=True)

    def _work(self) -> None:
        try:
            self._barrier.wait()
            self.started = time.time()
            self._sums = table_checksums(self.server, self.tables, deadline=self.deadline)
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc
        finally:
            self.ended = time.time()

    def __enter__(self) -> BackgroundChecksums:
        self._thread.start()
        self._barrier.wait()  # from here on both sides are running
        return self

    def _join(self) -> None:
        self._thread.join(max(0.0, self.deadline - time.monotonic()) + JOIN_SLACK_S)

    def result(self) -> dict[str, Any]:
        """The other server's checksums, once they are done (bounded by the deadline)."""
        self._join()
        if self._error is not None:
            raise self._error
        if self._sums is None:
            raise ChecksumTimeout(f"{self.server.name}: the checksums did not finish in time")
        return self._sums

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # On the caller's error too: the session's own timeouts end the thread by the
        # deadline, and nothing may still query the target when a rollback starts.
        self._join()
        if self._thread.is_alive():
            log.warning("%s: checksum thread still running past its deadline", self.server.name)

    def span(self) -> list[float | None]:
        return [self.started, self.ended]
