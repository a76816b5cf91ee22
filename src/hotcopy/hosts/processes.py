"""Stopping a process on a host in one round trip, zombies counted as gone.

A daemon that detached is re-parented to the host's init; where that init does not
reap quickly, the dead process lingers as a zombie and ``kill -0`` still succeeds, so
liveness is read from /proc state instead. One shell script per stop keeps it to a
single ssh round trip instead of one per poll.
"""

from __future__ import annotations

import logging

from hotcopy import remote
from hotcopy.hosts.base import Executor

log = logging.getLogger(__name__)



def process_alive(executor: Executor, pid: int) -> bool:
    state = executor.run(["awk", "{print $3}", f"/proc/{pid}/stat"], check=False)
    return state.ok and state.stdout.strip() not in ("", "Z")


def terminate_process(executor: Executor, pid: int, *, timeout_s: float = 10) -> None:
    """SIGTERM pid and its children, wait, SIGKILL what is left; a gone pid is fine."""
    polls = max(1, int(timeout_s / 0.05))
    executor.run(remote.argv("terminate.sh", str(pid), str(polls)),
                 timeout=timeout_s + 30)
