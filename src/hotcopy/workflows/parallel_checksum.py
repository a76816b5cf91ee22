"""Checksum the source and the target at the same time.

They are different hosts, each reading its own disk: checksumming one after the
other (as verification first did) made the source's second replication pause, and
verification itself, the sum of both instead of the longer of the two. Each side
runs on its own thread with its own server session; the journal is not touched here.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from hotcopy.errors import HotcopyError
from hotcopy.mysql.checksum import table_checksums
from hotcopy.mysql.server import Server

log = logging.getLogger(__name__)


@dataclass
class Side:
    """One server's checksums, when its work started and ended (wall clock), or its error."""

    sums: dict[str, Any] | None = None
    started: float | None = None
    ended: float | None = None
    error: BaseException | None = None

    def span(self) -> list[float | None]:
        return [self.started, self.ended]


def checksum_both(source: Server, target: Server, tables: list[tuple[str, str]],
                  timeout_s: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, Side]]:
    """Checksums of ``tables`` on both servers, computed concurrently.

    Both threads meet at a barrier before either sends a query, so the two are
    running at once by construction, not by luck of scheduling.
    """
    sides = {"source": Side(), "target": Side()}
    barrier = threading.Barrier(2, timeout=timeout_s)

    def work(name: str, server: Server) -> None:
        side = sides[name]
        try:
            barrier.wait()
            side.started = time.time()
            side.sums = table_checksums(server, tables)
        except BaseException as exc:  # re-raised by the caller's thread
            side.error = exc
            barrier.abort()
        finally:
            side.ended = time.time()

    threads = [threading.Thread(target=work, args=(name, server), name=f"checksum-{name}",
                                daemon=True)
               for name, server in (("source", source), ("target", target))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    for name, side in sides.items():
        if side.error is not None and not isinstance(side.error, threading.BrokenBarrierError):
            raise side.error
        if side.sums is None:
            raise HotcopyError(f"the {name}'s checksums did not finish in {timeout_s:.0f} s",
                               hint="raise clone.catchup_timeout_s, or clone.verify = \"catchup\"")
    assert sides["source"].sums is not None and sides["target"].sums is not None
    return sides["source"].sums, sides["target"].sums, sides
