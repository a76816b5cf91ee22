"""Stopping a process on a host in one round trip, zombies counted as gone.

A daemon that detached is re-parented to the host's init; where that init does not
reap quickly, the dead process lingers as a zombie and ``kill -0`` still succeeds, so
liveness is read from /proc state instead. One shell script per stop keeps it to a
single ssh round trip instead of one per poll.
"""

from __future__ import annotations

import logging

from hotcopy.hosts.base import Executor

log = logging.getLogger(__name__)

_TERMINATE = r"""
pid=$1; polls=$2
alive() { s=$(awk '{print $3}' /proc/$pid/stat 2>/dev/null) && [ -n "$s" ] && [ "$s" != Z ]; }
alive || exit 0
pkill -TERM -P "$pid" 2>/dev/null
kill -TERM "$pid" 2>/dev/null
i=0
while [ $i -lt "$polls" ]; do alive || exit 0; sleep 0.05; i=$((i+1)); done
pkill -KILL -P "$pid" 2>/dev/null
kill -KILL "$pid" 2>/dev/null
exit 0
"""


def process_alive(executor: Executor, pid: int) -> bool:
    state = executor.run(["awk", "{print $3}", f"/proc/{pid}/stat"], check=False)
    return state.ok and state.stdout.strip() not in ("", "Z")


def terminate_process(executor: Executor, pid: int, *, timeout_s: float = 10) -> None:
    """SIGTERM pid and its children, wait, SIGKILL what is left; a gone pid is fine."""
    polls = max(1, int(timeout_s / 0.05))
    executor.run(["sh", "-c", _TERMINATE, "terminate", str(pid), str(polls)],
                 timeout=timeout_s + 30)
